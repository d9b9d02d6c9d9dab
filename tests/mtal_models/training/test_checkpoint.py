"""Checkpoint round trip, weights_only loading, resuming and error handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtal_models.training import (
    CheckpointError,
    TrainConfig,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from tests.mtal_models.training.helpers import MODALITIES, TinyNet, build_tiny, make_samples

CFG = TrainConfig(epochs=4, batch_size=2, lr=1e-2, device="cpu", seed=3)


def _net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(MODALITIES)


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = _net()
    fit(model, make_samples(2), TrainConfig(epochs=1, device="cpu"))
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, epoch=7, extra={"note": "x", "t": torch.ones(2)})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    ck = load_checkpoint(path, builder=build_tiny)
    images = torch.rand(2, 3, 16, 16)
    model.eval()
    for name, value in model(images).final.items():
        assert torch.equal(value, ck.model(images).final[name]), name
    assert ck.network == "tiny_test" and ck.epoch == 7 and ck.net_config == model.config
    assert ck.modalities == MODALITIES and list(ck.modalities) == list(MODALITIES)
    assert ck.extra["note"] == "x" and torch.equal(ck.extra["t"], torch.ones(2))


def test_file_loads_with_weights_only(tmp_path: Path) -> None:
    model = _net()
    result = fit(model, make_samples(2), TrainConfig(epochs=1, device="cpu"))
    path = result.save(tmp_path / "m.pt", model)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and raw["network"] == "tiny_test" and raw["epoch"] == 1
    assert raw["optimizer_state"]["param_groups"] and raw["scheduler_state"]["last_epoch"] == 1


def test_resume_restores_optimizer_scheduler_epoch_and_matches_straight_run(tmp_path: Path) -> None:
    samples = make_samples(4, seed=5)
    straight = _net()
    full = fit(straight, samples, CFG)
    first = _net()
    half = fit(first, samples, CFG, until_epoch=2)
    assert half.epoch == 2 and half.scheduler.last_epoch == 4
    path = half.save(tmp_path / "half.pt", first)
    ck = load_checkpoint(path, builder=build_tiny)
    assert ck.epoch == 2 and ck.scheduler_state["last_epoch"] == 4
    assert ck.optimizer_state["state"]  # Adam moments were saved
    resumed = ck.model
    rest = fit(resumed, samples, CFG, start=ck)
    assert rest.epochs_run == 2 and rest.epoch == 4 and rest.scheduler.last_epoch == 8
    assert rest.optimizer.param_groups[0]["lr"] == pytest.approx(full.optimizer.param_groups[0]["lr"])
    assert rest.history == pytest.approx(full.history[2:])
    for k, v in straight.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(foreign)
    assert issubclass(CheckpointError, ValueError)


def test_unregistered_network_is_refused(tmp_path: Path) -> None:
    class Anonymous(TinyNet):
        name = ""

    with pytest.raises(ValueError, match="registry"):
        save_checkpoint(tmp_path / "x.pt", Anonymous(MODALITIES))
