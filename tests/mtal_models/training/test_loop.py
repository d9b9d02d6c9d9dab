"""fit / train_one_epoch / evaluate on a tiny conv net with partial labels and sample weights."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtal_models.data.sample import collate
from mtal_models.nets import build_network
from mtal_models.training import TrainConfig, evaluate, fit, make_loader, substitute_labels, weights_for
from tests.mtal_models.training.helpers import MODALITIES, TinyNet, make_samples

CFG = TrainConfig(epochs=1, batch_size=4, lr=1e-2, weight_decay=0.0, device="cpu", seed=0)


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(MODALITIES)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_lowers_loss_on_fixed_batch_and_reports_progress() -> None:
    samples = make_samples(4)
    model = _net()
    calls: list[tuple[int, int, float]] = []
    before = evaluate(model, make_loader(samples, MODALITIES, 4))["multi_task_loss"]
    result = fit(model, samples, TrainConfig(**{**CFG.to_dict(), "epochs": 30}), progress=lambda *a: calls.append(a))
    after = evaluate(model, make_loader(samples, MODALITIES, 4))["multi_task_loss"]
    assert after < 0.7 * before
    assert result.epochs_run == 30 and result.epoch == 30 and len(result.history) == 30
    assert [(e, s) for e, s, _ in calls] == [(e, 1) for e in range(1, 31)]
    assert all(isinstance(v, float) and math.isfinite(v) for _, _, v in calls)
    assert result.history[-1] < result.history[0]


def test_multi_task_loss_is_the_final_stage_loss_and_total_adds_padnets_initial_heads() -> None:
    """The papers' multi-task loss is Σ_t w_t L_t(final); PAD-Net trains initial + final (``total_loss``)."""
    torch.manual_seed(0)
    net = build_network("padnet", MODALITIES, "tiny")
    samples = make_samples(4)
    metrics = evaluate(net, make_loader(samples, MODALITIES, 4))
    batch = collate(samples, MODALITIES)
    net.eval()
    with torch.no_grad():
        out = net(batch.images)
        final = sum(MODALITIES[n].weight * MODALITIES[n].loss(out.final[n], batch.labels.values[n],
                                                              batch.labels.present[n]).mean() for n in MODALITIES)
        initial = sum(MODALITIES[n].weight * MODALITIES[n].loss(out.initial[n], batch.labels.values[n],
                                                                batch.labels.present[n]).mean() for n in MODALITIES)
    assert metrics["multi_task_loss"] == pytest.approx(float(final), rel=1e-4)
    assert metrics["total_loss"] == pytest.approx(float(final + initial), rel=1e-4)


def test_validation_metrics_per_epoch() -> None:
    samples = make_samples(4)
    result = fit(_net(), samples[:2], TrainConfig(**{**CFG.to_dict(), "epochs": 2}), val=samples[2:])
    assert len(result.val) == 2
    assert set(result.val[0]) == {"sem", "depth", "normals", "multi_task_loss", "total_loss"}
    assert result.val[0]["total_loss"] == pytest.approx(result.val[0]["multi_task_loss"])  # no initial heads
    assert 0.0 <= result.val[-1]["sem"]["miou"] <= 1.0
    assert result.val[-1]["depth"]["rmse"] >= 0
    assert 0.0 <= result.val[-1]["normals"]["mean_angle"] <= 180.0


def test_modality_present_nowhere_contributes_nothing() -> None:
    clean = make_samples(4, present={"sem": True, "normals": True})
    garbage = make_samples(4, present={"sem": True, "normals": True})
    for s in garbage:
        s.labels["depth"] = np.full_like(s.labels["depth"], np.nan)  # never read: absent everywhere
    batch = collate(clean, MODALITIES)
    model = _net()
    losses = model.losses(model(batch.images), batch.labels)
    assert float(losses["depth"]) == 0.0
    a, b = _net(), _net()
    fit(a, clean, CFG)
    fit(b, garbage, CFG)
    for k, v in _params(a).items():
        assert torch.equal(v, _params(b)[k]), k
    assert not torch.equal(_params(a)["head_convs.sem.weight"], _params(_net())["head_convs.sem.weight"])


def _grads(model: TinyNet, samples, weights=None) -> dict[str, torch.Tensor]:
    batch = collate(samples, MODALITIES)
    model.zero_grad()
    out = model(batch.images)
    w = None if weights is None else weights_for(batch.ids, list(MODALITIES), weights, torch.device("cpu"))
    sum(model.losses(out, batch.labels, w).values()).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_zero_sample_weight_removes_influence() -> None:
    a, b = make_samples(2, seed=1)
    b_other = copy.deepcopy(b)
    b_other.labels["sem"] = (b_other.labels["sem"] + 1) % 3
    b_other.labels["depth"] = b_other.labels["depth"] + 5
    zero = {b.id: dict.fromkeys(MODALITIES, 0.0)}
    model = _net()
    g1 = _grads(model, [a, b], zero)
    g2 = _grads(model, [a, b_other], zero)
    g_alone = _grads(model, [a])
    g_full = _grads(model, [a, b])
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-7), k
        # masked_mean divides by the 2 present samples: the zero-weighted one adds nothing
        assert torch.allclose(g1[k], g_alone[k] / 2, atol=1e-6), k
    assert any(not torch.allclose(g1[k], g_full[k]) for k in g1)


def test_fit_with_sample_weights_ignores_zero_weighted_labels() -> None:
    samples = make_samples(4, seed=2)
    changed = copy.deepcopy(samples)
    changed[3].labels["depth"] = changed[3].labels["depth"] * 10
    weights = {samples[3].id: {"depth": 0.0}}
    a, b = _net(), _net()
    fit(a, samples, CFG, sample_weights=weights)
    fit(b, changed, CFG, sample_weights=weights)
    for k, v in _params(a).items():
        assert torch.equal(v, _params(b)[k]), k
    with pytest.raises(ValueError, match="depth"):
        weights_for(["s0"], ["depth"], {"s0": {"depth": -1.0}}, torch.device("cpu"))


def test_substitution_keeps_one_loss_modality_per_sample() -> None:
    batch = collate(make_samples(6), MODALITIES)
    gen = torch.Generator().manual_seed(0)
    given, loss_labels = substitute_labels(batch.labels, ["sem", "depth", "normals"], 1.0, gen)
    assert given is not None
    kept = sum(loss_labels.present[n].int() for n in MODALITIES)
    assert torch.equal(kept, torch.ones(6, dtype=torch.int32))  # prob 1: all but one substituted
    for n, mask in given.present.items():
        assert not (mask & loss_labels.present[n]).any()  # substituted labels never reach the loss
    assert substitute_labels(batch.labels, ["sem"], 0.0, gen) == (None, batch.labels)


def test_extra_loss_module_is_trained_and_added() -> None:
    class Extra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(2.0))

        def forward(self, out, batch) -> torch.Tensor:
            return self.scale**2

    samples = make_samples(4)
    extra = Extra()
    seen: list[float] = []
    fit(_net(), samples, CFG, extra_loss=extra, progress=lambda e, s, v: seen.append(v))
    base: list[float] = []
    fit(_net(), samples, CFG, progress=lambda e, s, v: base.append(v))
    assert seen[0] == pytest.approx(base[0] + 4.0, rel=1e-5)
    assert float(extra.scale.detach()) < 2.0


def test_bad_config_names_field() -> None:
    with pytest.raises(ValueError, match="substitution_prob"):
        TrainConfig(substitution_prob=1.5)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


@pytest.mark.gpu
def test_amp_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = TrainConfig(epochs=2, batch_size=4, device="cuda")
    assert cfg.use_amp(torch.device("cuda")) and not cfg.use_amp(torch.device("cpu"))
    model = _net()
    result = fit(model, make_samples(4), cfg)
    assert all(math.isfinite(v) for v in result.step_losses)
    assert next(model.parameters()).is_cuda
