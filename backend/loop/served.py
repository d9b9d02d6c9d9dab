"""Who gives a task its prediction of a version: /predict or a background push, never both.

Two paths store predictions of the current version for tasks that have none: /predict (Label Studio stores
what it answers: *Retrieve Predictions*, the on-the-fly prediction of a task it opens) and the background
jobs that push through the API (the new-task scoring of :mod:`backend.loop.rank_new`, the rest of a large
/predict: :mod:`backend.loop.predict_rest`). Label Studio picks the tasks of a Retrieve Predictions by "no
prediction of the current version" *before* it calls /predict and stores the answer *after*: a task imported
just before (its scoring job running) got one prediction from each path (issue #31; noted in the e2e suite).

:class:`ServedTasks` marks, per project, version and task, which path served it, on the queue's Redis for
:data:`MARK_TTL_S`: a path claims a task only when the *other* path has not marked it (one Lua call for
the whole batch, atomic), then marks it itself. A path never blocks itself: a push that failed and is
tried again, or a second Retrieve Predictions after the user deleted the predictions, serves the task again;
a push that fails releases its marks.
The mark outlives any /predict in flight (Label Studio waits 100 s) and a scoring job's run by far.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["MARK_TTL_S", "PREDICT", "PUSH", "ServedTasks"]

log = logging.getLogger(__name__)
MARK_TTL_S = 3600
PREDICT, PUSH = "predict", "push"

# KEYS: one mark per task; ARGV[1]: this path's name, ARGV[2]: TTL. Returns 1/0 per task: claimed or not.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[1] then
    out[i] = 0
  else
    redis.call('SET', key, ARGV[1], 'EX', tonumber(ARGV[2]))
    out[i] = 1
  end
end
return out
"""
# KEYS: marks; ARGV[1]: this path's name. Deletes the marks this path holds.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""
_BATCH = 1000  # keys per Lua call


class ServedTasks:
    """Claims on a Redis connection (the queue's: :attr:`backend.loop.queue.QueueHandle.connection`)."""

    def __init__(self, connection: Any, ttl_s: int = MARK_TTL_S) -> None:
        self.redis = connection
        self.ttl_s = int(ttl_s)
        self._script = connection.register_script(_CLAIM)
        self._release = connection.register_script(_RELEASE)

    @staticmethod
    def key(project: str, version: str, task: Any) -> str:
        return f"mtal:project:{project}:served:{version}:{task}"

    def claim(self, project: str, version: str, tasks: Iterable[Any], by: str) -> set[str]:
        """The ids (as strings) of ``tasks`` that path ``by`` (:data:`PREDICT` or :data:`PUSH`) may serve with
        a prediction of ``version``: those the other path has not marked. They are marked for ``by`` now."""
        if by not in (PREDICT, PUSH):
            raise ValueError(f"by: expected {PREDICT!r} or {PUSH!r}, got {by!r}")
        ids = [str(t) for t in tasks]
        claimed: set[str] = set()
        for start in range(0, len(ids), _BATCH):
            part = ids[start:start + _BATCH]
            flags = self._script(keys=[self.key(project, version, t) for t in part], args=[by, self.ttl_s])
            claimed.update(t for t, ok in zip(part, flags, strict=True) if int(ok))
        if len(claimed) < len(ids):
            log.info("project %s: %d of %d tasks already have a prediction of %s from the other path (%s skips them)",
                     project, len(ids) - len(claimed), len(ids), version, by)
        return claimed

    def release(self, project: str, version: str, tasks: Iterable[Any], by: str) -> None:
        """Drop ``by``'s marks of ``tasks`` (it did not serve them after all: its push failed)."""
        ids = [str(t) for t in tasks]
        for start in range(0, len(ids), _BATCH):
            self._release(keys=[self.key(project, version, t) for t in ids[start:start + _BATCH]], args=[by])
