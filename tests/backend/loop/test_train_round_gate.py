"""The quality gate: a new version whose validation loss is far worse than its parent's on the same
validation tasks stays a candidate (stored, listed, not current) and /status shows it."""

from __future__ import annotations

import math
from pathlib import Path

import fakeredis
import pytest
from rq import Queue

from backend.loop.coordinator import Coordinator
from backend.loop.queue import QUEUE_NAME, QueueHandle
from backend.loop.train_round import quality_gate, train_version
from backend.serving.model import MTALModel
from backend.serving.store import ModelStore
from backend.settings import Settings
from tests.support.scene_project import scene_model


@pytest.mark.parametrize(("loss", "parent", "passed"), [
    (1.0, 1.0, True), (1.99, 1.0, True), (2.01, 1.0, False), (math.nan, 1.0, False), (None, 1.0, False),
    (5.0, math.nan, True), (0.5, 3.0, True),
])
def test_gate_decision(loss: float | None, parent: float, passed: bool) -> None:
    gate = quality_gate({"multi_task_loss": loss}, {"multi_task_loss": parent}, 0.5)
    assert gate["passed"] is passed and gate["threshold"] == 0.5 and gate["reason"]


def _project(tmp_path: Path, gate: float) -> tuple[ModelStore, MTALModel, Settings, list, list]:
    store, model, settings, samples = scene_model(tmp_path, boxes=False, quality_gate=gate)
    return store, model, settings, samples[:4], samples[4:]


@pytest.mark.parametrize("gate", [0.5, 0.0])
def test_diverged_version_stays_a_candidate(tmp_path: Path, gate: float) -> None:
    store, model, settings, train, val = _project(tmp_path, gate)
    good, metrics = train_version(store, "7", model.schema, settings, train, val)
    assert store.current("7") == good and metrics.get("quality_gate", {"passed": True})["passed"]
    # a learning rate of 1e6 wrecks the weights: the validation loss explodes (or becomes NaN)
    bad, metrics = train_version(store, "7", model.schema, settings.with_(train_lr=1e6), train, val)
    listed = {m["version"]: m for m in store.list_versions("7")}
    assert bad in listed
    if gate:
        assert metrics["quality_gate"]["passed"] is False, metrics["quality_gate"]
        assert store.current("7") == good and listed[bad]["candidate"] is True and not listed[bad]["current"]
        assert listed[bad]["parent"] == good
    else:  # 0 = off: the new version becomes current whatever its figures
        assert "quality_gate" not in metrics and store.current("7") == bad


def test_status_shows_the_candidate() -> None:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    coord = Coordinator(QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False))
    coord.request_training("3")
    coord.begin("3")
    coord.trained("3", "mtal-3-v2-aaaaaaaa", {"quality_gate": {"passed": True}})
    coord.finish("3")
    coord.request_training("3")
    coord.begin("3")
    coord.trained("3", "mtal-3-v3-bbbbbbbb", {"quality_gate": {"passed": False, "reason": "validation loss 9"}})
    st = coord.status("3")
    assert st["version"] == "mtal-3-v2-aaaaaaaa"
    assert st["candidate"] == {"version": "mtal-3-v3-bbbbbbbb", "reason": "validation loss 9"}
