"""backend.serving.unpublished: an LRU of built networks, each built once however many ask at once."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from backend.serving.store import LoadedModel
from backend.serving.unpublished import UnpublishedModels, unpublished_version


def _build(log: list[str], key: str, delay: float = 0.0):  # noqa: ANN202
    def build() -> LoadedModel:
        log.append(key)
        time.sleep(delay)
        return LoadedModel(torch.nn.Identity(), "", {"key": key})

    return build


def test_least_recently_used_goes_first() -> None:
    lru, built = UnpublishedModels(2), []
    for key in ("a", "b", "a", "c", "a", "b"):
        assert lru.get(key, _build(built, key)).metadata == {"key": key}
    assert built == ["a", "b", "c", "b"] and len(lru) == 2  # "b" was the least recent when "c" came


def test_built_once_under_concurrency() -> None:
    lru, built = UnpublishedModels(1), []
    out: list[LoadedModel] = []
    threads = [threading.Thread(target=lambda: out.append(lru.get("a", _build(built, "a", 0.2)))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["a"] and len({id(m.model) for m in out}) == 1


def test_names_never_look_like_stored_versions() -> None:
    assert unpublished_version("7", "0123456789abcdef") == "mtal-7-unpublished-0123456789ab"
    with pytest.raises(ValueError):
        UnpublishedModels(0)
