"""Per-project training coordination in Redis: label counts, the run state machine, coalescing.

State per project (a Redis hash ``mtal:project:<id>``)::

    idle --request--> queued --begin--> training --trained--> ranking --finish--> idle
                                                                        \\-> queued (follow-up)
    idle --request_pretrain--> queued --begin_pretrain--> pretraining --trained--> ranking --finish--> ...

- A request while ``queued`` does nothing (the queued run reads every annotation from Label Studio
  when it starts, so it will see the new labels).
- A request while ``training``/``ranking`` sets ``follow_up``; however many arrive, finishing the run
  enqueues exactly one follow-up run.
- Label counts per modality (``mtal:project:<id>:counts``) accumulate from webhooks; reaching the
  threshold requests a run. Counts are moved aside when a run begins and merged back if it fails, so
  a failed run does not swallow them.
- A run holds a lease (``lease`` = expiry time): set when it begins, renewed by the job's heartbeat
  thread (:meth:`Coordinator.hold`) and by every progress report. A run whose lease expired while its job
  is not waiting in the queue is dead (kill -9, OOM killer, container restart, Redis lost during
  ``progress``): the next trigger (webhook, START_TRAINING) or a worker starting takes it over - the
  counts go back, the state becomes ``queued`` and a new train run is enqueued. ``/status`` shows
  ``lease_expired`` meanwhile.
- Ownership: the job that owns the run is the one whose id is the state's ``job_id`` (set with every
  enqueue, before the job can start). The jobs pass their id as ``owner`` to every write
  (:meth:`Coordinator.progress`, ``heartbeat``, ``trained``, ``finish``, ``fail``) and check it before
  they publish a version or push predictions (:meth:`Coordinator.check_owner`): a run that was taken
  over but is still alive (a stalled worker) raises :class:`LeaseLost` instead of overwriting the
  state of the run that replaced it.
- Cold start (issue 25): a *pretrain* run (``kind`` = "pretrain", job ``pretrain_job``) learns from the
  unlabelled pool before the first label and ranks with the result. It is requested only while idle and
  never as a follow-up; it moves no label counts. Labels reaching the threshold (or START_TRAINING) while
  it waits or runs set ``follow_up`` as for any run, so exactly one train run follows it and starts from
  what it published (or from the current version when it failed). A dead pretrain is taken over as a
  pretrain (resuming from its checkpoint), its follow-up kept.
Every transition is one Lua script, so concurrent webhooks and workers never interleave inside one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from backend.logs import redact
from backend.loop.coordinator_scripts import (
    BEGIN,
    ENQUEUE,
    FINISH,
    FOLLOW_UP,
    FOLLOW_UP_STALE,
    OWNED_SET,
    PRETRAIN_BEGIN,
    PRETRAIN_REQUEST,
    QUEUED,
    RECORD,
    REQUEST,
    TAKE_OVER,
)
from backend.loop.queue import QUEUE_NAME, QueueHandle
from backend.loop.rank_progress import RankProgress

__all__ = ["Coordinator", "LeaseLost"]

log = logging.getLogger(__name__)
_RECOVER_AFTER_S = 30.0
LEASE_S = 60.0  # a run whose heartbeat stopped this long ago is dead
_RUNNING = ("training", "ranking", "pretraining")


class LeaseLost(RuntimeError):
    """This job no longer owns its project's run (its lease expired and another run took over)."""


class Coordinator:
    """Runs the state machine above and enqueues the job functions (given by import path)."""

    def __init__(
        self,
        handle: QueueHandle,
        train_job: str = "backend.loop.jobs.train_job",
        rank_job: str = "backend.loop.jobs.rank_job",
        job_timeout: int = 6 * 3600,
        lease_s: float = LEASE_S,
        pretrain_job: str = "backend.loop.jobs.pretrain_job",
    ) -> None:
        self.lease_s = float(lease_s)
        self.handle = handle
        self.redis = handle.connection
        self.train_job = train_job
        self.rank_job = rank_job
        self.pretrain_job = pretrain_job
        self.job_timeout = job_timeout
        self._request = self.redis.register_script(REQUEST)
        self._record = self.redis.register_script(RECORD)
        self._begin = self.redis.register_script(BEGIN)
        self._finish = self.redis.register_script(FINISH)
        self._take_over = self.redis.register_script(TAKE_OVER)
        self._owned_set = self.redis.register_script(OWNED_SET)
        self._pretrain_request = self.redis.register_script(PRETRAIN_REQUEST)
        self._pretrain_begin = self.redis.register_script(PRETRAIN_BEGIN)

    @classmethod
    def on_connection(cls, connection: Any, **kwargs: Any) -> Coordinator:
        """A coordinator over an existing Redis connection (e.g. ``rq.get_current_job().connection``
        inside a job), on MTAL's queue; ``kwargs`` as for the constructor."""
        return cls(QueueHandle(connection, Queue(QUEUE_NAME, connection=connection), embedded=False), **kwargs)

    # ---- keys ------------------------------------------------------------------------------------
    @staticmethod
    def _keys(project: int | str) -> list[str]:
        base = f"mtal:project:{project}"
        return [base, f"{base}:counts", f"{base}:counts:inflight"]

    # ---- triggers (called from the webhook: must take milliseconds) -------------------------------
    def record_labels(self, project: int | str, modalities: Iterable[str], threshold: int) -> bool:
        """Count one new label per modality; request a run when the count since the last run reaches
        ``threshold``. Returns True if a run was enqueued now (including a lost queued run re-enqueued)."""
        names = [str(m) for m in modalities]
        if not names:
            return False
        job_id = _new_job_id()
        outcome = self._record(keys=self._keys(project), args=[time.time(), job_id, max(1, int(threshold)), *names])
        if outcome == ENQUEUE:
            self._enqueue(self.train_job, project, job_id)
            return True
        if outcome in (FOLLOW_UP, FOLLOW_UP_STALE):  # the lease checked in the script: a live run costs no more
            return outcome == FOLLOW_UP_STALE and self.recover_dead_run(project)
        return outcome == QUEUED and self._recover_lost_job(project)

    def request_training(self, project: int | str) -> str:
        """Request a run now (START_TRAINING). Returns "enqueued", "queued" (one is already waiting) or
        "follow_up" (a run is in progress; exactly one more will follow it)."""
        outcome = self._ask(self._request, self.train_job, project)
        if outcome == ENQUEUE:
            return "enqueued"
        if outcome in (FOLLOW_UP, FOLLOW_UP_STALE):
            return "enqueued" if outcome == FOLLOW_UP_STALE and self.recover_dead_run(project) else "follow_up"
        return "enqueued" if self._recover_lost_job(project) else "queued"

    def request_pretrain(self, project: int | str) -> str:
        """Request a pretrain run (cold start) if the project is idle. Returns "enqueued", "queued" (a run is
        already waiting) or "busy" (a run is in progress; nothing is recorded). A dead run is taken over."""
        outcome = self._ask(self._pretrain_request, self.pretrain_job, project)
        if outcome == ENQUEUE:
            return "enqueued"
        if outcome == QUEUED:
            return "enqueued" if self._recover_lost_job(project) else "queued"
        return "enqueued" if self.recover_dead_run(project) else "busy"

    def _ask(self, script: Any, func: str, project: int | str) -> int:
        """Run a request script (KEYS: the state hash; ARGV: now, a new job id); on ENQUEUE enqueue ``func``
        under that id. Returns the script's outcome."""
        job_id = _new_job_id()
        outcome = script(keys=self._keys(project)[:1], args=[time.time(), job_id])
        if outcome == ENQUEUE:
            self._enqueue(func, project, job_id)
        return outcome

    # ---- run lifecycle (called from the jobs; ``owner``: the calling job's id, None = unchecked) ----------
    def begin(self, project: int | str, owner: str | None = None) -> None:
        """A train job starts: counts move aside, state -> training. Raises LeaseLost when ``owner`` is
        not the job the state waits for (another run replaced it)."""
        if not self._begin(keys=self._keys(project), args=[time.time(), self._lease(), owner or ""]):
            raise LeaseLost(f"project {project}: job {owner} does not own the run; not starting")

    def begin_pretrain(self, project: int | str, owner: str | None = None) -> None:
        """A pretrain job starts: state -> pretraining (label counts and follow_up untouched). LeaseLost as
        for :meth:`begin`."""
        if not self._pretrain_begin(keys=self._keys(project)[:1], args=[time.time(), self._lease(), owner or ""]):
            raise LeaseLost(f"project {project}: job {owner} does not own the run; not starting")

    def progress(self, project: int | str, owner: str | None = None, **fields: Any) -> None:
        """Record progress fields (epoch, step, loss, ...) for /status; renews the run's lease."""
        self._set(project, owner, {**{k: _text(v) for k, v in fields.items()}, "lease": self._lease()})

    def heartbeat(self, project: int | str, owner: str | None = None) -> None:
        """Renew the running run's lease (LeaseLost when ``owner`` lost it)."""
        self._set(project, owner, {"lease": self._lease()})

    def check_owner(self, project: int | str, owner: str | None) -> None:
        """Raise LeaseLost unless ``owner`` (None: anyone) still owns the run; jobs call it right before
        they publish a version or push to Label Studio."""
        self._set(project, owner, {})

    def run_owner(self, project: int | str) -> tuple[str | None, str | None]:
        """(state, id of the job that owns the run) of ``project``, read only (a rank chunk job asks whether its
        ranking is still the project's: :mod:`backend.loop.rank_fanout`)."""
        state, job_id = self.redis.hmget(self._keys(project)[0], ["state", "job_id"])
        return (state.decode() if state else None), (job_id.decode() if job_id else None)

    def _set(self, project: int | str, owner: str | None, mapping: dict[str, Any]) -> None:
        args = [owner or "", *(str(x) for kv in mapping.items() for x in kv)]
        if not self._owned_set(keys=self._keys(project)[:1], args=args):
            raise LeaseLost(f"project {project}: job {owner} no longer owns the run (its lease was taken over)")

    @contextmanager
    def hold(self, project: int | str, owner: str | None = None) -> Iterator[threading.Event]:
        """Renew the lease every ``lease_s / 4`` seconds from a daemon thread while the block runs (a run
        preparing data reports no progress for minutes); a failed renewal is logged, not raised. Yields an
        event that is set once the run was found taken over (the thread then stops renewing)."""
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_s / 4):
                try:
                    self.heartbeat(project, owner)
                except LeaseLost:
                    lost.set()
                    return
                except Exception as e:  # Redis away: the lease runs out, and recovery takes over
                    log.warning("project %s: lease renewal failed: %s", project, redact(str(e)))

        thread = threading.Thread(target=beat, name=f"mtal-lease-{project}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()

    def recover_dead_run(self, project: int | str) -> bool:
        """If ``project`` is training/ranking with an expired lease and its job is not waiting in the queue,
        take the run over (see the module docstring) and enqueue a new one. Returns True if it did."""
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._keys(project)[0]).items()}
        if raw.get("state") not in _RUNNING:
            return False
        lease = raw.get("lease") or ""
        expires = _num(lease) if lease else (_num(raw.get("updated")) or 0.0) + self.lease_s
        if expires is None or time.time() < expires or self._job_waiting(raw.get("job_id")):
            return False
        job_id = _new_job_id()
        if not self._take_over(keys=self._keys(project), args=[time.time(), job_id, lease]):
            return False  # someone else took it over, or the run came back to life
        log.warning("project %s: %s run lost its lease (job %s); restarting", project, raw["state"], raw.get("job_id"))
        self._enqueue(self.pretrain_job if raw["state"] == "pretraining" else self.train_job, project, job_id)
        return True

    def recover_all(self) -> list[str]:
        """:meth:`recover_dead_run` for every project in Redis (a worker calls it when it starts)."""
        recovered = []
        for key in self.redis.scan_iter(match="mtal:project:*", count=500):
            name = key.decode()
            project = name.removeprefix("mtal:project:")
            if ":" not in project and self.recover_dead_run(project):
                recovered.append(project)
        return recovered

    def _lease(self) -> str:
        return f"{time.time() + self.lease_s:.3f}"

    def trained(self, project: int | str, version: str, metrics: dict[str, Any], owner: str | None = None) -> None:
        """Training produced ``version``: record it and enqueue ranking (state -> ranking; the rank job
        owns the run from here). A version that failed the quality gate (``metrics["quality_gate"]``) is
        recorded as the ``candidate``, and ``version`` stays the last one that became current."""
        job_id = _new_job_id()
        gate = metrics.get("quality_gate") or {}
        fields = {"state": "ranking", "metrics": json.dumps(metrics), "error": "", "lease": self._lease(),
                  "job_id": job_id, "candidate": ""}
        if gate.get("passed", True):
            fields["version"] = version
        else:
            fields["candidate"] = json.dumps({"version": version, "reason": gate.get("reason")})
        self._set(project, owner, fields)
        self._enqueue(self.rank_job, project, job_id)

    def finish(self, project: int | str, owner: str | None = None) -> bool:
        """The run (train + rank) ended well. Returns True if a follow-up run was enqueued."""
        return self._end(project, failed=False, owner=owner)

    def fail(self, project: int | str, error: str, owner: str | None = None) -> bool:
        """The run failed: record the error, give the counts back. Returns True on a follow-up. A job that
        no longer owns the run (``owner``) records nothing: LeaseLost."""
        error = redact(error)
        log.error("project %s: run failed: %s", project, error)
        self._set(project, owner, {"error": error[:2000], "failed_at": time.time()})
        return self._end(project, failed=True, owner=owner)

    # ---- reading ----------------------------------------------------------------------------------
    def status(self, project: int | str) -> dict[str, Any]:
        """State, progress, last version + metrics, last error, label counts since the last run."""
        state_key, counts_key, _ = self._keys(project)
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(state_key).items()}
        counts = {k.decode(): int(v) for k, v in self.redis.hgetall(counts_key).items()}
        return {
            "project": str(project),
            "state": raw.get("state", "idle"),
            "follow_up": raw.get("follow_up") == "1",
            "epoch": _num(raw.get("epoch")),
            "step": _num(raw.get("step")),
            "loss": _num(raw.get("loss")),
            "version": raw.get("version") or None,
            "candidate": json.loads(raw["candidate"]) if raw.get("candidate") else None,
            "metrics": json.loads(raw["metrics"]) if raw.get("metrics") else {},
            "error": raw.get("error") or None,
            "job_id": raw.get("job_id") or None,
            "labels_since_last_run": counts,
            "updated": _num(raw.get("updated")),
            "pretrain": _json_or_none(raw.get("pretrain")),
            "ranking": RankProgress(self.redis, project).status(),  # the latest ranking's chunks, tasks, time left
            "lease_expired": raw.get("state") in _RUNNING
            and (_num(raw.get("lease")) or 0.0) < time.time() and not self._job_waiting(raw.get("job_id")),
        }

    # ---- internals --------------------------------------------------------------------------------
    def _field(self, project: int | str, name: str) -> str | None:
        value = self.redis.hget(self._keys(project)[0], name)
        return value.decode() if value is not None else None

    def _end(self, project: int | str, failed: bool, owner: str | None = None) -> bool:
        job_id = _new_job_id()
        args = [time.time(), "1" if failed else "0", job_id, owner or ""]
        outcome = self._finish(keys=self._keys(project), args=args)
        if outcome == -1:
            raise LeaseLost(f"project {project}: job {owner} no longer owns the run; not ending it")
        if outcome == 1:
            self._enqueue(self.train_job, project, job_id)
            return True
        return False

    def _enqueue(self, func: str, project: int | str, job_id: str) -> None:
        self.handle.queue.enqueue(
            func, project, job_id=job_id, job_timeout=self.job_timeout, result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
        )
        self.redis.hset(self._keys(project)[0], "job_id", job_id)
        log.info("project %s: enqueued %s as job %s", project, func.rsplit(".", 1)[-1], job_id)

    def _job_waiting(self, job_id: str | None) -> bool:
        """The job is queued/deferred/scheduled in RQ (a started job with an expired lease is dead)."""
        try:
            status = Job.fetch(job_id, connection=self.redis).get_status() if job_id else None
        except NoSuchJobError:
            status = None
        return status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)

    def _recover_lost_job(self, project: int | str) -> bool:
        """If the state has said queued for a while but its job is gone or failed (a crash between
        the state change and the enqueue, or a lost queue), enqueue again. Returns True if it did."""
        if time.time() - float(self._field(project, "updated") or 0) < _RECOVER_AFTER_S:
            return False  # the requester is still between its state change and its enqueue
        job_id = self._field(project, "job_id")
        try:
            status = Job.fetch(job_id, connection=self.redis).get_status() if job_id else None
        except NoSuchJobError:
            status = None
        if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return False
        log.warning("project %s: queued run had no live job (%s); enqueuing again", project, status)
        job_id = _new_job_id()
        self.redis.hset(self._keys(project)[0], mapping={"job_id": job_id, "updated": time.time()})
        self._enqueue(self.pretrain_job if self._field(project, "kind") == "pretrain" else self.train_job, project,
                      job_id)
        return True


def _new_job_id() -> str:
    return f"mtal-{uuid.uuid4().hex}"


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _json_or_none(value: str | None) -> Any:
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
