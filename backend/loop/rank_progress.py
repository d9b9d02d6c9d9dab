"""Progress of a project's ranking in Redis, for ``/status`` ``"ranking"`` (issue #24).

Keys per project: ``mtal:project:<id>:ranking`` holds the id of the latest ranking (``run``), and
``mtal:project:<id>:ranking:<run>`` (a hash, 7 days TTL) that ranking's fields: ``version``, ``started``,
``chunks_total``, ``tasks_total``, ``state`` (``scoring``, ``merging``, ``done``, ``failed``), ``error``, and
per chunk ``done:<i>`` (set once its results are stored), ``scored:<i>`` and ``failed:<i>`` (tasks scored
so far, tasks whose image failed). Per-chunk fields are *set*, never incremented, so a chunk that is run
again (its worker died: RQ retries it) overwrites its own counts instead of adding to them; a stale chunk
of a superseded ranking writes to its own run's hash and never to the current one.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["RankProgress"]

_TTL_S = 7 * 24 * 3600


class RankProgress:
    """The ranking progress of ``project`` on the Redis connection ``redis``."""

    def __init__(self, redis: Any, project: int | str) -> None:
        self.redis = redis
        self.key = f"mtal:project:{project}:ranking"

    def _run_key(self, run: str) -> str:
        return f"{self.key}:{run}"

    def start(self, run: str, version: str, chunks: int, tasks: int) -> None:
        """A ranking ``run`` of ``version`` starts: ``chunks`` chunks, ``tasks`` tasks to score in all."""
        key = self._run_key(run)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"version": version, "started": f"{time.time():.3f}", "chunks_total": chunks,
                                "tasks_total": tasks, "state": "scoring", "error": ""})
        pipe.expire(key, _TTL_S)
        pipe.set(self.key, run, ex=_TTL_S)
        pipe.execute()

    def chunk(self, run: str, index: int, scored: int, failed: int = 0, done: bool = False) -> None:
        """Chunk ``index`` of ``run`` has scored ``scored`` tasks (``failed``: tasks whose image failed);
        ``done``: its results are stored."""
        fields: dict[str, Any] = {f"scored:{index}": scored, f"failed:{index}": failed}
        if done:
            fields[f"done:{index}"] = f"{time.time():.3f}"
        self.redis.hset(self._run_key(run), mapping=fields)

    def state(self, run: str, state: str, error: str = "") -> None:
        """``run`` is now ``state`` (``merging``, ``done``, ``failed``, with ``error``)."""
        self.redis.hset(self._run_key(run), mapping={"state": state, "error": error[:2000],
                                                     "ended" if state in ("done", "failed") else "updated":
                                                     f"{time.time():.3f}"})

    def done_chunks(self, run: str) -> set[int]:
        """Indices of the chunks of ``run`` whose results are stored."""
        return {int(k.decode().split(":", 1)[1]) for k in self.redis.hkeys(self._run_key(run))
                if k.startswith(b"done:")}

    def current_run(self) -> str | None:
        run = self.redis.get(self.key)
        return run.decode() if run else None

    def status(self) -> dict[str, Any] | None:
        """The latest ranking: {run, version, state, error, chunks_done, chunks_total, tasks_scored,
        tasks_failed, tasks_total, elapsed_s, eta_s (None until a task is scored, 0 once done)}; None before
        the first ranking."""
        run = self.current_run()
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._run_key(run)).items()} if run else {}
        if not raw:
            return None
        scored = sum(int(v) for k, v in raw.items() if k.startswith("scored:"))
        failed = sum(int(v) for k, v in raw.items() if k.startswith("failed:"))
        total = int(raw.get("tasks_total") or 0)
        started = float(raw.get("started") or time.time())
        elapsed = float(raw.get("ended") or time.time()) - started
        state = raw.get("state", "")
        left = max(0, total - scored - failed)
        if state in ("done", "failed"):
            eta = 0.0 if state == "done" else None
        else:
            eta = elapsed / (scored + failed) * left if scored + failed else None
        return {"run": run, "version": raw.get("version"), "state": state, "error": raw.get("error") or None,
                "chunks_done": sum(1 for k in raw if k.startswith("done:")),
                "chunks_total": int(raw.get("chunks_total") or 0), "tasks_scored": scored, "tasks_failed": failed,
                "tasks_total": total, "elapsed_s": round(elapsed, 1),
                "eta_s": None if eta is None else round(eta, 1)}
