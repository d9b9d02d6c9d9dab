"""The MTPSL cross-task consistency term."""

from __future__ import annotations

import math

import pytest
import torch

from mtal_models.data.sample import collate
from mtal_models.training import MTPSLMapper, TrainConfig, fit
from tests.mtal_models.training.helpers import MODALITIES, TinyNet, make_samples

PARTIAL = {"sem": True}  # depth and normals unlabelled: pairs (depth, sem) and (normals, sem)


def _setup(present=PARTIAL):
    torch.manual_seed(0)
    model = TinyNet(MODALITIES)
    mapper = MTPSLMapper(MODALITIES, embed_dim=8, width=8)
    batch = collate(make_samples(4, present=present), MODALITIES)
    return model, mapper, batch


def test_term_is_finite_and_reaches_the_unlabelled_heads() -> None:
    model, mapper, batch = _setup()
    loss = mapper.loss(model(batch.images), batch.labels)
    value = float(loss.detach())
    assert loss.dim() == 0 and math.isfinite(value) and value > 0
    loss.backward()
    assert model.head_convs["depth"].weight.grad.abs().sum() > 0  # prediction of unlabelled s is supervised
    assert model.head_convs["sem"].weight.grad is None  # labelled t enters only as ground truth


def test_term_decreases_when_trained() -> None:
    model, mapper, batch = _setup()
    opt = torch.optim.Adam([*model.parameters(), *mapper.parameters()], lr=1e-2)
    values = []
    for _ in range(30):
        loss = mapper.loss(model(batch.images), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.5 * values[0]


def test_zero_without_partial_samples() -> None:
    model, mapper, batch = _setup(present=dict.fromkeys(MODALITIES, True))
    assert float(mapper.loss(model(batch.images), batch.labels)) == 0.0


def test_fit_uses_term_only_when_weighted() -> None:
    samples = make_samples(4, present=PARTIAL)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu")
    off = fit(TinyNet(MODALITIES), samples, cfg)
    assert off.mtpsl is None
    torch.manual_seed(0)
    on_net = TinyNet(MODALITIES)
    torch.manual_seed(0)
    plain_net = TinyNet(MODALITIES)
    with_term: list[float] = []
    without: list[float] = []
    on = fit(on_net, samples, TrainConfig(**{**cfg.to_dict(), "mtpsl_weight": 1.0}),
             progress=lambda e, s, v: with_term.append(v))  # fmt: skip
    fit(plain_net, samples, cfg, progress=lambda e, s, v: without.append(v))
    assert on.mtpsl is not None and with_term[0] > without[0]
    assert not torch.equal(on_net.head_convs["depth"].weight, plain_net.head_convs["depth"].weight)


def test_single_dense_modality_warns_and_stays_off() -> None:
    mods = {"sem": MODALITIES["sem"]}
    samples = make_samples(2)
    with pytest.warns(UserWarning, match="MTPSL"):
        result = fit(TinyNet(mods), samples, TrainConfig(epochs=1, device="cpu", mtpsl_weight=1.0))
    assert result.mtpsl is None
    with pytest.raises(ValueError, match="dense"):
        MTPSLMapper(mods, embed_dim=8)
