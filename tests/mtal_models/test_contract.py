"""Every registered network against the MultiTaskNet contract, on tiny 64x64 inputs.

Parametrised over NETWORKS x modality sets (a set goes to the network ``choose_network`` picks for it).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtal_models.data.sample import Sample, collate
from mtal_models.modalities import ModalitySpec, build_modalities
from mtal_models.nets import NETWORKS, build_network, choose_network
from mtal_models.nets.base import Labels
from mtal_models.training import TrainConfig, evaluate, fit, load_checkpoint, make_loader, save_checkpoint

SIZE = 64
MODALITY_SETS: dict[str, dict[str, ModalitySpec]] = {
    "seg_depth_normals": build_modalities(
        [("sem", "segmentation", 3), ("depth", "depth", 1), ("normals", "normals", 3)]
    ),
    "seg_edges": build_modalities([("sem", "segmentation", 3), ("edges", "binary", 1, {"metric": "odsf"})]),
    "boxes_seg": build_modalities([("boxes", "detection", 2), ("sem", "segmentation", 3)]),
    "boxes_seg_depth": build_modalities([("boxes", "detection", 2), ("sem", "segmentation", 3), ("depth", "depth", 1)]),
}
CASES = [
    pytest.param(net, key, id=f"{net}-{key}")
    for key, mods in MODALITY_SETS.items()
    for net in NETWORKS
    if choose_network(mods) == net
]


def _label(spec: ModalitySpec, rects: list[tuple[int, int, int, int, int]]) -> object:
    """Labels for rectangles (x1, y1, x2, y2, class) on a plain background."""
    sem = np.zeros((SIZE, SIZE), np.int64)
    for x1, y1, x2, y2, c in rects:
        sem[y1:y2, x1:x2] = c + 1
    if spec.kind == "segmentation":
        return sem
    if spec.kind == "binary":
        inner = np.zeros_like(sem, dtype=bool)
        inner[1:-1, 1:-1] = (sem[1:-1, 1:-1] == sem[:-2, 1:-1]) & (sem[1:-1, 1:-1] == sem[1:-1, :-2])
        return (~inner).astype(np.uint8)
    if spec.kind == "depth":
        return (3.0 - (sem > 0)).astype(np.float32)
    if spec.kind == "normals":
        n = np.zeros((SIZE, SIZE, 3), np.float32)
        n[..., 2] = 1.0
        n[sem > 0] = (0.6, 0.0, 0.8)
        return n
    boxes = np.array([r[:4] for r in rects], np.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.array([r[4] for r in rects], np.int64)}


def _samples(mods: dict[str, ModalitySpec], n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 40, 40], [40, 40, 230]], np.uint8)
    out = []
    for i in range(n):
        image = rng.integers(90, 140, (SIZE, SIZE, 3), dtype=np.uint8)
        rects = []
        for c in range(2):
            x1, y1 = (int(v) for v in rng.integers(4, 30, 2))
            w, h = (int(v) for v in rng.integers(14, 30, 2))
            rect = (x1 + 32 * c // 2, y1, min(SIZE, x1 + 32 * c // 2 + w), min(SIZE, y1 + h), c)
            image[rect[1] : rect[3], rect[0] : rect[2]] = colours[c]
            rects.append(rect)
        labels = {name: _label(spec, rects) for name, spec in mods.items()}
        out.append(Sample(f"t{i}", image, labels, dict.fromkeys(mods, True)))
    return out


def _build(net: str, mods: dict[str, ModalitySpec]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(net, mods, "tiny")


def test_every_network_has_a_case() -> None:
    covered = {p.values[0] for p in CASES}
    assert covered == set(NETWORKS), f"networks without a contract case: {set(NETWORKS) - covered}"


@pytest.mark.parametrize(("net", "key"), CASES)
def test_output_shapes(net: str, key: str) -> None:
    mods = MODALITY_SETS[key]
    model = _build(net, mods).eval()
    batch = collate(_samples(mods, 2), mods)
    out = model(batch.images)
    assert set(out.final) == set(mods)
    for name, spec in mods.items():
        if spec.dense:
            assert tuple(out.final[name].shape) == (2, spec.channels, SIZE, SIZE), name
        else:
            assert tuple(out.final[name].shape) == (2, model.config.max_detections, 6 + spec.channels), name
    assert out.pooled is not None and out.pooled.shape[0] == 2


@pytest.mark.parametrize(("net", "key"), CASES)
def test_masked_losses_ignore_absent_modalities(net: str, key: str) -> None:
    mods = MODALITY_SETS[key]
    model = _build(net, mods).eval()
    batch = collate(_samples(mods, 2), mods)
    out = model(batch.images)
    clean = model.losses(out, batch.labels)
    for name, spec in mods.items():
        values = dict(batch.labels.values)
        if spec.kind == "detection":
            values[name] = [{"boxes": torch.full((1, 4), math.nan), "labels": torch.tensor([99])} for _ in range(2)]
        elif spec.kind == "segmentation":
            values[name] = torch.full_like(values[name], 99)  # out-of-range ids would raise if read
        else:
            values[name] = torch.full_like(values[name], math.nan)
        present = {**batch.labels.present, name: torch.zeros(2, dtype=torch.bool)}
        losses = model.losses(out, Labels(values, present))
        assert float(losses[name]) == 0.0, name
        for other in mods:
            if other != name:
                assert torch.allclose(losses[other], clean[other]), (name, other)


@pytest.mark.parametrize(("net", "key"), CASES)
def test_few_steps_lower_the_loss(net: str, key: str) -> None:
    mods = MODALITY_SETS[key]
    model = _build(net, mods)
    samples = _samples(mods, 2)
    loader = make_loader(samples, mods, 2)
    before = evaluate(model, loader)["multi_task_loss"]
    cfg = TrainConfig(epochs=8, batch_size=2, lr=3e-3, weight_decay=0.0, device="cpu", poly_power=0.0)
    result = fit(model, loader, cfg)
    after = evaluate(model, loader)["multi_task_loss"]
    assert math.isfinite(after) and after < before, (before, after, result.history)


@pytest.mark.parametrize(("net", "key"), CASES)
def test_checkpoint_round_trip(net: str, key: str, tmp_path: Path) -> None:
    mods = MODALITY_SETS[key]
    model = _build(net, mods)
    fit(model, _samples(mods, 2), TrainConfig(epochs=1, batch_size=2, device="cpu"))
    ck = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, epoch=1))
    assert ck.network == net and type(ck.model) is type(model) and ck.epoch == 1
    images = collate(_samples(mods, 2, seed=1), mods).images
    a, b = model.predict(images), ck.model.predict(images)
    for name in mods:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(("net", "key"), CASES)
def test_partal_options_train(net: str, key: str) -> None:
    """GT substitution, the committee and MTPSL run through every network (no-ops where unsupported)."""
    mods = MODALITY_SETS[key]
    model = _build(net, mods)
    samples = _samples(mods, 2)
    samples[1].present[next(n for n, s in mods.items() if s.dense)] = False
    mtpsl = 0.1 if sum(s.dense for s in mods.values()) >= 2 else 0.0  # MTPSL needs a pair of dense modalities
    cfg = TrainConfig(epochs=1, batch_size=2, device="cpu", substitution_prob=0.5, committee=True, mtpsl_weight=mtpsl)
    result = fit(model, samples, cfg)
    assert all(math.isfinite(v) for v in result.step_losses)


def test_substitution_trains_padnet_label_encoders() -> None:
    if "padnet" not in NETWORKS:
        pytest.skip("PAD-Net not registered")
    mods = MODALITY_SETS["seg_depth_normals"]
    samples = _samples(mods, 2)

    def encoder_change(prob: float) -> float:
        model = _build("padnet", mods)
        before = {k: v.clone() for k, v in model.label_encoders.state_dict().items()}
        fit(model, samples, TrainConfig(epochs=1, batch_size=2, device="cpu", substitution_prob=prob))
        return sum(float((v - before[k]).abs().sum()) for k, v in model.label_encoders.state_dict().items())

    assert encoder_change(0.0) == 0.0  # never given: the encoders get no gradient
    assert encoder_change(1.0) > 0.0
