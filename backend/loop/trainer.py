"""The active-learning loop behind ``/webhook``: events -> label counts -> queued train/rank runs.

:class:`QueueTrainer` implements :class:`backend.serving.model.Trainer` on the RQ queue (Redis, or the
embedded fakeredis queue when ``REDIS_URL`` is unset). It answers in milliseconds; the work happens
in :mod:`backend.loop.jobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis

from backend.loop.coordinator import Coordinator
from backend.loop.events import handle_webhook
from backend.loop.queue import WEB_TIMEOUT_S, QueueHandle, QueueUnavailable, open_queue
from backend.serving.store import ModelStore
from backend.settings import Settings

__all__ = ["QueueTrainer", "QueueUnavailable"]
T = TypeVar("T")


def _queue_call(fn: Callable[[], T]) -> T:
    """``fn()``, with Redis errors (down, hung, refused) raised as :class:`QueueUnavailable`."""
    try:
        return fn()
    except redis.RedisError as e:
        raise QueueUnavailable("the training queue (Redis) is unavailable (see the server log)") from e


class QueueTrainer:
    """Routes webhook events to the coordinator; per-project threshold from /setup's extra_params
    (``{"train_threshold": N}``) or ``MTAL_TRAIN_THRESHOLD`` (0 = train only on "Start Training")."""

    def __init__(self, settings: Settings, store: ModelStore, handle: QueueHandle | None = None) -> None:
        from backend.loop import jobs

        self.settings = settings
        self.store = store
        if handle is None and not settings.redis_url:
            jobs.configure(settings)  # jobs of the embedded queue run in this process, with these settings
        self.handle = handle or open_queue(settings.redis_url, nice=settings.worker_nice, timeout=WEB_TIMEOUT_S)
        self.coordinator = Coordinator(self.handle, lease_s=settings.lease_s)

    def threshold(self, project_id: str) -> int:
        """Labels (per modality, summed) since the last run that trigger the next one; 0 = never."""
        value = self.store.project_info(project_id).get("train_threshold")
        return int(value) if isinstance(value, int) and value >= 0 else self.settings.train_threshold

    def submit(self, project_id: str, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
        threshold = self.threshold(project_id)
        # threshold 0: annotations are counted for /status but never trigger a run by themselves
        result = _queue_call(
            lambda: handle_webhook(dict(data), self.coordinator, lambda p: threshold or 2**31, project_id=project_id)
        )
        return result.to_dict()

    def state(self) -> dict[str, Any]:
        return _queue_call(self.handle.describe)

    def status(self, project_id: str) -> dict[str, Any]:
        return {**_queue_call(lambda: self.coordinator.status(project_id)), "threshold": self.threshold(project_id)}
