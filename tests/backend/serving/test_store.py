"""Model store: versions, atomic current pointer, crash safety, reload on change."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
import torch

from backend.serving.store import ModelStore, StoreError


class CountingLoader:
    """Loader that records calls and returns a module tagged with the checkpoint's bytes."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path, device: str) -> torch.nn.Module:
        self.calls.append(path)
        module = torch.nn.Identity()
        module.payload = path.read_bytes()  # type: ignore[attr-defined]
        return module


def _ckpt(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"src-{len(list(tmp_path.iterdir()))}.pt"
    path.write_bytes(content)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", loader=CountingLoader())


def test_publish_list_current(store: ModelStore, tmp_path: Path) -> None:
    assert store.current("7") is None and store.list_versions("7") == []
    v1 = store.publish("7", _ckpt(tmp_path, b"one"), {"modalities": [], "metrics": {"miou": 0.1}})
    v2 = store.publish("7", _ckpt(tmp_path, b"two"), {"modalities": [], "metrics": {"miou": 0.2}})
    assert re.fullmatch(r"mtal-7-v1-[0-9a-f]{8}", v1) and re.fullmatch(r"mtal-7-v2-[0-9a-f]{8}", v2)
    assert v1[-8:] != v2[-8:]  # hash of the content
    assert store.current("7") == v2
    meta = store.metadata("7")
    assert meta["parent"] == v1 and meta["number"] == 2 and meta["metrics"] == {"miou": 0.2}
    listed = store.list_versions("7")
    assert [m["version"] for m in listed] == [v1, v2] and [m["current"] for m in listed] == [False, True]
    assert store.projects() == ["7"]
    store.set_current("7", v1)
    assert store.current("7") == v1
    with pytest.raises(StoreError, match="unknown version"):
        store.set_current("7", "mtal-7-v9-00000000")


def test_bad_project_ids_and_metadata(store: ModelStore, tmp_path: Path) -> None:
    for bad in ("../x", "", "a/b", "x" * 65, "ü"):
        with pytest.raises(StoreError, match="project id"):
            store.project_dir(bad)
    with pytest.raises(StoreError, match="JSON"):
        store.publish("1", _ckpt(tmp_path, b"x"), {"bad": object()})
    with pytest.raises(StoreError, match="does not exist"):
        store.publish("1", tmp_path / "nope.pt", {})
    with pytest.raises(StoreError, match="no model version"):
        store.load_model("1")


def test_crash_between_write_and_rename_keeps_current_valid(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = store.publish("3", _ckpt(tmp_path, b"one"), {"k": 1})
    real_replace = os.replace

    def crashing_replace(src: str, dst: str | Path) -> None:
        if Path(dst).name == "CURRENT":
            raise OSError("simulated crash before rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        store.publish("3", _ckpt(tmp_path, b"two"), {"k": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert store.current("3") == v1
    assert store.metadata("3")["k"] == 1
    assert store.load_model("3").model.payload == b"one"
    pdir = store.project_dir("3")
    assert not [p for p in pdir.iterdir() if p.name.startswith(".CURRENT")]  # temp cleaned up
    # a writer killed mid-way leaves a stray temp file: readers ignore it, the next publish works
    (pdir / ".CURRENT.abc.tmp").write_text("mtal-3-v2-deadbe")
    (pdir / "versions" / ".ckpt.x.tmp").write_bytes(b"half")
    assert store.current("3") == v1
    v3 = store.publish("3", _ckpt(tmp_path, b"three"), {"k": 3})
    assert store.current("3") == v3 and v3.startswith("mtal-3-v3-")


def test_load_model_cached_and_reloaded_on_new_version(store: ModelStore, tmp_path: Path) -> None:
    loader = store._loader
    store.publish("5", _ckpt(tmp_path, b"one"), {})
    a = store.load_model("5")
    b = store.load_model("5")
    assert a.model is b.model and len(loader.calls) == 1  # type: ignore[attr-defined]
    # another process (a training worker) publishes through its own store object
    other = ModelStore(store.root, loader=CountingLoader())
    v2 = other.publish("5", _ckpt(tmp_path, b"two"), {})
    c = store.load_model("5")
    assert c.version == v2 and c.model.payload == b"two" and len(loader.calls) == 2  # type: ignore[attr-defined]


def test_concurrent_publishers_get_distinct_versions(store: ModelStore, tmp_path: Path) -> None:
    sources = [_ckpt(tmp_path, f"c{i}".encode()) for i in range(6)]
    out: list[str] = []
    threads = [threading.Thread(target=lambda s=s: out.append(store.publish("9", s, {}))) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(v.split("-v")[1].split("-")[0]) for v in out) == [1, 2, 3, 4, 5, 6]
    assert len(store.list_versions("9")) == 6


def test_move_ranking_project_info(store: ModelStore, tmp_path: Path) -> None:
    src = store.tmp_dir("2") / "fresh.pt"
    src.write_bytes(b"moved")
    v = store.publish("2", src, {}, move=True)
    assert not src.exists() and store.checkpoint_path("2", v).read_bytes() == b"moved"
    assert store.ranking("2") == {}
    store.save_ranking("2", {"model_version": v, "tasks": {"1": {"score": 0.5}}})
    assert store.ranking("2")["tasks"]["1"]["score"] == 0.5
    store.save_ranking("2", {"model_version": v, "tasks": {}})
    assert store.ranking("2")["tasks"] == {}
    store.save_project_info("2", {"label_config": "<View/>"})
    assert store.project_info("2") == {"label_config": "<View/>"}
    (store.project_dir("2") / "project.json").write_text("{broken")
    assert store.project_info("2") == {}
