"""The pretrain round without a queue (backend/loop/pretrain_round.py): what is pretrained on, when a pretrain
is due, and the resume rules: the budget counts over resumes, and a checkpoint of another version is not
resumed. The job around it (queue, Label Studio, pool, /status) is tested in test_pretrain_job.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.loop.pretrain_round import CHECKPOINT, SIDECAR, pretrain_due, pretrain_version, skip_reason
from backend.serving.model import MTALModel
from backend.serving.store import ModelStore
from backend.settings import Settings
from mtal_models.training import load_checkpoint
from mtal_models.training.pretrain import PretrainConfig, pretrain, trunk_of
from tests.support.fault_rig import CONFIG

P = "3"


def _config(steps: int, budget_s: float = 0) -> PretrainConfig:
    return PretrainConfig(steps=steps, budget_s=budget_s, batch_size=4, view_size=(32, 32), grid=3, proj_dim=16,
                          pred_dim=8, warmup=1, min_images=4, save_every=1)


@pytest.fixture
def project(tmp_path: Path) -> tuple[ModelStore, Settings, list[np.ndarray]]:
    settings = Settings(model_dir=tmp_path, net_config="tiny", image_size=64, device="cpu")
    store = ModelStore(tmp_path)
    MTALModel(P, CONFIG, settings, store).setup()
    rng = np.random.default_rng(0)
    return store, settings, [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)]


def test_skip_reason() -> None:
    assert skip_reason({"initial": True, "start": {"weights": "random"}}) is None
    assert "already pretrained" in skip_reason({"initial": True, "pretrained": True, "start": {"weights": "random"}})
    assert "trained on labels" in skip_reason({"initial": False, "start": {"weights": "random"}})
    imagenet = skip_reason({"initial": True, "start": {"weights": "ResNet18_Weights.IMAGENET1K_V1"}})
    assert "IMAGENET1K_V1" in imagenet and "erode" in imagenet
    assert "initial checkpoint x.pt" in skip_reason({"initial": True, "source": "initial checkpoint x.pt"})


def test_due_only_before_any_trained_or_pretrained_version(project: tuple) -> None:
    store, settings, images = project
    assert not pretrain_due(store, "999")  # no version yet
    assert pretrain_due(store, P)
    pretrain_version(store, P, settings, images, config=_config(1))
    assert not pretrain_due(store, P)


def test_a_spent_budget_publishes_the_checkpoint_without_more_steps(project: tuple) -> None:
    store, settings, images = project
    current = store.current(P)
    model = load_checkpoint(store.checkpoint_path(P, current)).model
    ckpt = store.project_dir(P) / CHECKPOINT
    pretrain(model, images, _config(2), checkpoint=ckpt)  # a killed run's state at step 2 ...
    (store.project_dir(P) / SIDECAR).write_text(json.dumps({"version": current, "seconds": 100.0}))  # ... 100 s in
    version, summary = pretrain_version(store, P, settings, images, config=_config(50, budget_s=60))
    assert summary["steps"] == 2 and summary["resumed_from"] == 2 and summary["seconds_total"] >= 100
    published = load_checkpoint(store.checkpoint_path(P, version)).model
    want = trunk_of(model).state(model)
    assert all(torch.equal(v, trunk_of(published).state(published)[k]) for k, v in want.items())
    assert store.metadata(P, version)["pretrained"] and not ckpt.exists()


def test_the_budget_left_is_what_a_resume_gets(project: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    store, settings, images = project
    current = store.current(P)
    model = load_checkpoint(store.checkpoint_path(P, current)).model
    pretrain(model, images, _config(1), checkpoint=store.project_dir(P) / CHECKPOINT)
    (store.project_dir(P) / SIDECAR).write_text(json.dumps({"version": current, "seconds": 45.0}))
    seen: list[PretrainConfig] = []
    import backend.loop.pretrain_round as pr

    real = pr.pretrain
    monkeypatch.setattr(pr, "pretrain", lambda m, i, c, **k: seen.append(c) or real(m, i, c, **k))
    pretrain_version(store, P, settings, images, config=_config(2, budget_s=60))
    assert seen[0].budget_s == pytest.approx(15.0)


def test_a_checkpoint_of_another_version_is_not_resumed(project: tuple) -> None:
    store, settings, images = project
    model = load_checkpoint(store.checkpoint_path(P)).model
    pretrain(model, images, _config(2), checkpoint=store.project_dir(P) / CHECKPOINT)
    (store.project_dir(P) / SIDECAR).write_text(json.dumps({"version": "mtal-3-v9-00000000", "seconds": 1.0}))
    _, summary = pretrain_version(store, P, settings, images, config=_config(3))
    assert summary["resumed_from"] == 0 and summary["steps"] == 3


def test_a_run_that_lost_its_lease_stops_and_publishes_nothing(project: tuple) -> None:
    """should_stop (the lease's lost event) ends the run before its next step; the guard then refuses the
    publication; the checkpoint stays for the run that took over."""
    from backend.loop.coordinator import LeaseLost

    store, settings, images = project
    steps: list[int] = []

    def guard() -> None:
        raise LeaseLost("taken over")

    with pytest.raises(LeaseLost):
        pretrain_version(store, P, settings, images, config=_config(10), progress=lambda s, _: steps.append(s),
                         should_stop=lambda: len(steps) >= 2, guard=guard)
    assert steps == [1, 2] and len(store.list_versions(P)) == 1
    assert (store.project_dir(P) / CHECKPOINT).is_file()
    assert json.loads((store.project_dir(P) / SIDECAR).read_text())["step"] == 2
