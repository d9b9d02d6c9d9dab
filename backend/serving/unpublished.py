"""Initial networks held in memory for /predict calls that /setup has not published for.

A /predict for a project that has no version yet, or with a labeling config whose modalities its
untrained current version does not predict, is answered from the initial network that /setup would
publish for that config (the same seed and weights, so the same predictions), without storing
anything and without touching the project's ``CURRENT``: only /setup publishes or switches versions.

The networks are keyed by what builds them (the config's hash and the settings that choose the
network), not by project, and at most ``capacity`` are kept (least recently used out), so neither
the number of project ids a caller makes up nor the configs it sends grows the memory or the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from backend.serving.store import LoadedModel

__all__ = ["UnpublishedModels", "unpublished_version"]


def unpublished_version(project_id: str, config_hash: str) -> str:
    """The model_version of predictions from an unpublished initial network (never a stored name:
    those are ``mtal-<project>-v<N>-<hash>``)."""
    return f"mtal-{project_id}-unpublished-{config_hash[:12]}"


class UnpublishedModels:
    """An LRU of at most ``capacity`` built networks (see the module docstring); thread-safe, and a
    network is built once even when several requests ask for it at the same time."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._models: OrderedDict[Hashable, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._models)

    def get(self, key: Hashable, build: Callable[[], LoadedModel]) -> LoadedModel:
        """The network kept under ``key``, else ``build()`` (kept, the least recently used one dropped)."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            loaded = build()
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
                self._building.pop(key, None)
            return loaded
