"""/predict for any number of tasks: every task gets its prediction stored, none twice.

Label Studio 1.23's *Retrieve Predictions* (``MLBackend.predict_tasks``) asks /setup for the current version,
keeps the selected tasks that have no prediction of it, sends them all in one /predict with a 100 s timeout,
and stores the answer by position: ``results`` must have one item per task (any other count stores nothing,
or, for one result, falls back to a request per task), each a prediction or a list of them; an empty list
stores nothing for that task. An error or a timeout stores nothing at all (it used to be a 413 over
``MTAL_MAX_PREDICT_TASKS``, and Label Studio still told the user "Retrieved 1500 predictions").

:class:`BatchPredictor` answers such a request in three parts:

- a task that already holds a prediction of the version (its ``predictions`` in the request): ``[]``, the
  stored one stands;
- the others in slices of :data:`SLICE` tasks, through :meth:`MTALModel.predict` as before (the ranking's
  stored score for a ranked task), while ``MTAL_MAX_PREDICT_TASKS`` tasks and ``MTAL_PREDICT_DEADLINE_S``
  (from the request's start; a slice is started only when the slowest one so far still fits) allow;
- the tasks left over: ``[]`` here, and handed to a background job that predicts them the same way and
  pushes them through Label Studio's API (:mod:`backend.loop.predict_rest`; the queue's Redis, or the
  embedded queue), with a log line saying how many.

Each task answered with a prediction is claimed for /predict (:mod:`backend.loop.served`): a task whose
prediction of the version a background job pushed meanwhile (an imported task's scoring) is answered ``[]``.
A request with a ``context`` (a smart tool's click) is not one of these: :mod:`backend.web.interactive`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.logs import redact
from backend.loop.predict_rest import hand_over
from backend.loop.served import PREDICT, ServedTasks
from backend.settings import Settings

__all__ = ["SLICE", "BatchAnswer", "BatchPredictor", "summarize"]

log = logging.getLogger(__name__)
SLICE = 64  # tasks per model.predict call of a large request


@dataclass(frozen=True)
class BatchAnswer:
    """``results``: one item per task (a prediction dict, or ``[]``: nothing to store); ``version``: the
    version the predictions came from (None when none was computed); ``predicted`` / ``failed``: tasks answered
    with a prediction / with an empty one (their image could not be fetched); ``handed_over``: tasks left to
    the background job."""

    results: list[Any]
    version: str | None
    predicted: int
    failed: int
    handed_over: int


class BatchPredictor:
    """``queue``: the RQ queue of the background job (None: no hand-over, the rest is logged as lost);
    ``connection``: the queue's Redis for the claims (None: no claims)."""

    def __init__(self, settings: Settings, queue: Any = None, connection: Any = None) -> None:
        self.settings = settings
        self.queue = queue
        self.served = ServedTasks(connection) if connection is not None else None

    def answer(self, model: Any, project: str, tasks: Sequence[Mapping[str, Any]]) -> BatchAnswer:
        """The answer to a /predict of ``tasks`` (without ``params.context``) for ``model`` (an
        :class:`MTALModel` of ``project``)."""
        t0 = time.monotonic()
        current = model.model_version
        results: list[Any] = [[] for _ in tasks]
        todo = [i for i, t in enumerate(tasks) if not _holds(t, current)]
        done, slowest = 0, 0.0
        while done < len(todo):
            part = todo[done:done + min(SLICE, self.settings.max_predict_tasks - done)]
            if not part or (done and time.monotonic() - t0 + slowest > self.settings.predict_deadline_s):
                break
            started = time.monotonic()
            for i, r in zip(part, model.predict([tasks[i] for i in part]), strict=True):
                results[i] = r
            slowest = max(slowest, time.monotonic() - started)
            done += len(part)
        self._claim(project, tasks, results)
        rest = [tasks[i] for i in todo[done:]]
        if rest:
            self._hand_over(model, project, rest, len(tasks), time.monotonic() - t0)
        return summarize(results, len(rest))

    def _claim(self, project: str, tasks: Sequence[Mapping[str, Any]], results: list[Any]) -> None:
        """Answer ``[]`` for the tasks a background push served meanwhile (claims of :mod:`backend.loop.served`)."""
        answered = [i for i, r in enumerate(results) if isinstance(r, dict) and _task_id(tasks[i]) is not None]
        if self.served is None or not answered:
            return
        by_version: dict[str, list[int]] = {}  # one version, unless CURRENT switched between two slices
        for i in answered:
            by_version.setdefault(results[i]["model_version"], []).append(i)
        for version, part in by_version.items():
            try:
                mine = self.served.claim(project, version, [_task_id(tasks[i]) for i in part], PREDICT)
            except Exception as e:  # Redis away: answer anyway (a duplicate beats a missing prediction)
                log.warning("/predict: project %s: could not check for predictions pushed meanwhile: %s", project,
                            redact(str(e)))
                return
            for i in part:
                if str(_task_id(tasks[i])) not in mine:
                    results[i] = []

    def _hand_over(self, model: Any, project: str, rest: list[Mapping[str, Any]], total: int, took: float) -> None:
        with_id = [t for t in rest if _task_id(t) is not None]
        where = (f"{len(rest)} of {total} tasks not computed within the request ({took:.1f} s; "
                 f"MTAL_PREDICT_DEADLINE_S={self.settings.predict_deadline_s:g}, "
                 f"MTAL_MAX_PREDICT_TASKS={self.settings.max_predict_tasks})")
        if self.queue is None or not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            log.error("/predict: project %s: %s get no prediction: pushing them needs the queue, LABEL_STUDIO_URL "
                      "and LABEL_STUDIO_API_KEY", project, where)
            return
        try:
            job = hand_over(self.queue, model.store, project, model.label_config, with_id)
        except Exception as e:
            log.error("/predict: project %s: %s get no prediction: the background job could not be queued: %s",
                      project, where, redact(str(e)))
            return
        log.info("/predict: project %s: %s: predicted and pushed to Label Studio in the background (job %s)",
                 project, where, job)


def _task_id(task: Mapping[str, Any]) -> int | None:
    tid = task.get("id")
    return tid if isinstance(tid, int) and not isinstance(tid, bool) else None


def _holds(task: Mapping[str, Any], version: str | None) -> bool:
    """The task as Label Studio sent it already holds a prediction of ``version``."""
    preds = task.get("predictions")
    return version is not None and isinstance(preds, list) and any(
        isinstance(p, Mapping) and p.get("model_version") == version for p in preds)


def summarize(results: list[Any], handed_over: int = 0) -> BatchAnswer:
    """A :class:`BatchAnswer` of ``results`` (also for the interactive path's, which has no rest)."""
    made = [r for r in results if isinstance(r, dict)]
    failed = sum(1 for r in made if not r.get("result") and "score" not in r)
    version = made[0].get("model_version") if made else None
    return BatchAnswer(results, version, len(made) - failed, failed, handed_over)
