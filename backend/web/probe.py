"""A cached, bounded-time health probe: ``/health`` must answer Label Studio within its 1 s timeout even
when the training queue (Redis) is down or hung.

:class:`CachedProbe` calls ``fn`` from a background thread at most once per ``max_age`` seconds and
keeps the answer; :meth:`CachedProbe.get` returns the kept answer while it is fresh, else starts one
refresh (never two at once) and waits for it at most ``wait`` seconds. A refresh that raises gives
``{"available": False, "error": <what failed>}``; one still running after ``wait`` seconds gives
``{"available": False, "error": "no answer within <wait> s"}`` (it goes on in the background and its
answer is kept for the next call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.logs import redact

__all__ = ["CachedProbe"]

log = logging.getLogger(__name__)


class CachedProbe:
    """See the module docstring. ``what`` names the probed service in error texts and the log."""

    def __init__(self, fn: Callable[[], dict[str, Any]], what: str, max_age: float = 2.0, wait: float = 0.3) -> None:
        self.fn = fn
        self.what = what
        self.max_age = float(max_age)
        self.wait = float(wait)
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = -float("inf")
        self._running: threading.Event | None = None

    def get(self) -> dict[str, Any]:
        """The probed state, at most ``max_age`` s old, within about ``wait`` s."""
        with self._lock:
            if self._value is not None and time.monotonic() - self._at < self.max_age:
                return self._value
            if self._running is None:
                self._running = threading.Event()
                threading.Thread(target=self._refresh, args=(self._running,), name="mtal-probe", daemon=True).start()
            done = self._running
        if done.wait(self.wait):
            with self._lock:
                if self._value is not None:
                    return self._value
        return {"available": False, "error": f"{self.what}: no answer within {self.wait:g} s"}

    def _refresh(self, done: threading.Event) -> None:
        try:
            value = self.fn()
        except Exception as e:  # the probed service being down is an answer, not an error of ours
            log.warning("health probe: %s unavailable: %s", self.what, redact(str(e.__cause__ or e)))
            value = {"available": False, "error": f"{self.what} unavailable (see the server log)"}
        with self._lock:
            self._value, self._at, self._running = value, time.monotonic(), None
        done.set()
