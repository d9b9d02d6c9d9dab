"""Tasks waiting for their first score: imported after the last ranking (``TASKS_CREATED``) or found
without one when a ranking ends. Kept in Redis per project and scored by one small job at a time
(:func:`backend.loop.jobs.score_new_job`, :mod:`backend.loop.rank_new`), never by a full re-rank.

Keys per project: ``mtal:project:<id>:new_tasks`` (hash task id -> ``{"id", "data"}`` JSON) and
``mtal:project:<id>:new_tasks:job`` (the id of the queued or running job, with a TTL so that a killed job
does not block the next one forever). The webhook adds tasks and enqueues the job only when none is
queued or running (coalescing: an import of 1,000 tasks in ten requests of 100 is one or two jobs); the
job takes everything pending at once and, when it ends, enqueues itself again if more arrived meanwhile.
This is not part of the run state machine (:mod:`backend.loop.coordinator`): it holds no lease and never
writes the run's state.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from backend.logs import redact
from backend.loop.coordinator import Coordinator

__all__ = ["MAX_PENDING", "MAX_TASK_JSON", "NewTasks", "RankingStarted", "queue_unscored"]

log = logging.getLogger(__name__)
MAX_PENDING = 100_000  # tasks waiting per project; beyond that the next ranking scores them
MAX_TASK_JSON = 64 * 1024  # characters of one task's {"id", "data"}; larger tasks wait for the next ranking
_JOB_TTL_S = 1800  # a queued/running job older than this is presumed lost


class NewTasks:
    """The pending new tasks of every project, on the coordinator's Redis and queue."""

    def __init__(self, coordinator: Coordinator, job: str = "backend.loop.jobs.score_new_job",
                 job_timeout: int = 3600) -> None:
        self.redis = coordinator.redis
        self.queue = coordinator.handle.queue
        self.job = job
        self.job_timeout = job_timeout

    @staticmethod
    def _keys(project: int | str) -> tuple[str, str]:
        base = f"mtal:project:{project}:new_tasks"
        return base, f"{base}:job"

    def add(self, project: int | str, tasks: Iterable[Mapping[str, Any]]) -> str:
        """Remember ``tasks`` (Label Studio task dicts; ``id`` and ``data`` are kept) and make sure a job
        will score them. Returns "enqueued" (a job was enqueued now), "queued" (one is queued or running
        and will see them) or "ignored" (nothing to keep)."""
        pending, _ = self._keys(project)
        entries = {}
        for task in tasks:
            text = json.dumps({"id": task["id"], "data": task.get("data") or {}}, ensure_ascii=False)
            if len(text) > MAX_TASK_JSON:
                log.warning("project %s: new task %s has %d characters of data; left to the next ranking",
                            project, task["id"], len(text))
                continue
            entries[str(task["id"])] = text
        if not entries:
            return "ignored"
        if int(self.redis.hlen(pending)) + len(entries) > MAX_PENDING:
            log.warning("project %s: %d new tasks already wait for a score; %d more left to the next ranking",
                        project, MAX_PENDING, len(entries))
            return "ignored"
        self.redis.hset(pending, mapping=entries)
        return "enqueued" if self._enqueue(project) else "queued"

    def take(self, project: int | str) -> list[dict[str, Any]]:
        """Every pending task of ``project``, removed from the pending set (one transaction)."""
        pending, _ = self._keys(project)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(pending)
        pipe.delete(pending)
        raw, _ = pipe.execute()
        return [json.loads(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]

    def put_back(self, project: int | str, tasks: Iterable[Mapping[str, Any]]) -> None:
        """Return tasks a job could not score (Label Studio unreachable) to the pending set, without a job:
        the next import or ranking enqueues one."""
        entries = {str(t["id"]): json.dumps({"id": t["id"], "data": t.get("data") or {}}) for t in tasks}
        if entries:
            self.redis.hset(self._keys(project)[0], mapping=entries)

    def pending(self, project: int | str) -> int:
        """How many tasks wait."""
        return int(self.redis.hlen(self._keys(project)[0]))

    def done(self, project: int | str, requeue: bool = True) -> bool:
        """The job of ``project`` ended: clear its marker and, with ``requeue``, enqueue the next one when
        tasks arrived meanwhile. Returns True if it enqueued."""
        self.redis.delete(self._keys(project)[1])
        return requeue and self.pending(project) > 0 and self._enqueue(project)

    def _enqueue(self, project: int | str) -> bool:
        job_id = f"mtal-new-{uuid.uuid4().hex}"
        if not self.redis.set(self._keys(project)[1], job_id, nx=True, ex=_JOB_TTL_S):
            return False
        # at the front: a few tasks' scores must not wait behind a queued training run
        self.queue.enqueue(self.job, str(project), job_id=job_id, job_timeout=self.job_timeout, at_front=True,
                           result_ttl=3600, failure_ttl=7 * 24 * 3600)
        log.info("project %s: enqueued scoring of new tasks as job %s", project, job_id)
        return True


class RankingStarted(RuntimeError):
    """A full ranking started while new tasks were being scored: it covers them."""


def queue_unscored(store: Any, ls: Any, coordinator: Coordinator, project: str,
                   left_out: set[str] = frozenset()) -> None:
    """After a ranking: hand the unlabelled tasks the stored ranking lacks (imported while it ran) to
    score_new_job, except those ``left_out`` on purpose (MTAL_RANK_MAX_TASKS); best effort: the ranking is
    done either way."""
    try:
        held = store.ranking(project).get("tasks") or {}
        missing = [t for t in ls.iter_tasks(int(project), only_unlabelled=True)
                   if str(t["id"]) not in held and str(t["id"]) not in left_out]
        if missing:
            log.info("project %s: %d unlabelled tasks have no score after the ranking", project, len(missing))
            NewTasks(coordinator).add(project, missing)
    except Exception as e:  # noqa: BLE001 - housekeeping after a finished run
        log.warning("project %s: could not look for tasks without a score: %s", project, redact(str(e)))
