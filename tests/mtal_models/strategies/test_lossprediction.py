import pytest
import torch
from torch import nn

from mtal_models.data.sample import Batch
from mtal_models.nets.base import Labels, MultiTaskOutput
from mtal_models.strategies import LL4AL, LossPredictionModule, make_ll4al_extra_loss, margin_ranking_loss
from mtal_models.strategies.base import BatchOutputs
from mtal_models.strategies.lossprediction import multitask_sample_losses
from mtal_models.training import TrainConfig, fit, make_loader

from ..training.helpers import MODALITIES as TINY_MODALITIES
from ..training.helpers import TinyNet, make_samples
from .fakes import DENSE, FakeNet


@pytest.mark.parametrize("b", [1, 4])
def test_loss_prediction_module_shapes(b: int) -> None:
    assert LossPredictionModule(8)(torch.randn(b, 8)).shape == (b,)
    multi = LossPredictionModule([4, 6], hidden=8)
    assert multi([torch.randn(b, 4, 5, 5), torch.randn(b, 6)]).shape == (b,)
    with pytest.raises(ValueError, match="expected 2"):
        multi(torch.randn(b, 4))
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        LossPredictionModule(8)(torch.randn(b, 7))


def test_margin_ranking_loss_zero_when_ordered_with_margin_positive_when_reversed() -> None:
    target = torch.tensor([4.0, 3.0, 1.0, 0.0])  # pairs (0, 3) and (1, 2)
    assert float(margin_ranking_loss(torch.tensor([10.0, 5.0, 2.0, 0.0]), target)) == 0.0
    reversed_loss = margin_ranking_loss(torch.tensor([0.0, 2.0, 5.0, 10.0]), target)
    assert float(reversed_loss) == pytest.approx(((10 + 1) + (3 + 1)) / 2)
    assert float(margin_ranking_loss(torch.tensor([1.0]), torch.tensor([2.0]))) == 0.0


def test_extra_loss_hook_is_a_module_and_trains_the_predictor() -> None:
    net = FakeNet()
    images = torch.rand(4, 3, 8, 8)
    labels = {"depth": torch.rand(4, 1, 8, 8) + 0.5}
    batch = Batch(images, Labels(labels, {"depth": torch.tensor([True, True, True, False])}), list("abcd"))
    module = LossPredictionModule(8)
    hook = make_ll4al_extra_loss(module, DENSE)
    assert isinstance(hook, nn.Module) and list(hook.parameters())
    loss = hook(net(images), batch)
    assert loss.dim() == 0
    loss.backward()
    assert module.out.weight.grad is not None
    with pytest.raises(ValueError, match="modalities"):
        make_ll4al_extra_loss(module)


def test_ll4al_selects_highest_predicted_loss() -> None:
    module = LossPredictionModule(3, hidden=3)
    with torch.no_grad():
        module.branches[0][0].weight.copy_(torch.eye(3))
        module.branches[0][0].bias.zero_()
        module.out.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        module.out.bias.zero_()
    pooled = torch.tensor([[0.1, 0, 0], [3.0, 0, 0], [1.0, 0, 0]])  # predicted loss = first feature
    strategy = LL4AL(module)
    pool = strategy.score_batch(BatchOutputs(modalities=DENSE, pooled=pooled))
    sel = strategy.select(pool, {"depth": torch.zeros(3, dtype=torch.bool)}, 2)
    assert sel.images == [1, 2]
    with pytest.raises(ValueError, match="LossPredictionModule"):
        LL4AL().score_batch(BatchOutputs(modalities=DENSE, pooled=pooled))


class _ConditionedTiny(TinyNet):
    """TinyNet whose given depth adds 100 to every final output of that sample: a conditioned path whose
    losses are nothing like the plain network's (as with PAD-Net's encoders through a substituted label)."""

    substitutable = ("depth",)

    def forward(self, images: torch.Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        out = super().forward(images)
        if given is not None and "depth" in given.values:
            shift = 100.0 * given.present["depth"].float().view(-1, 1, 1, 1)
            out.final = {k: v + shift for k, v in out.final.items()}
        return out


def _ll4al_targets(substitution_prob: float) -> dict[str, list[float]]:
    """Train at lr ~0 with the LL4AL hook; the true losses it ranked, per sample id."""
    torch.manual_seed(0)
    net = _ConditionedTiny(TINY_MODALITIES)
    seen: dict[str, list[float]] = {}
    true_losses = multitask_sample_losses(TINY_MODALITIES)

    def recording(out: MultiTaskOutput, batch: Batch) -> torch.Tensor:
        values = true_losses(out, batch)
        used = torch.stack([batch.labels.is_present(n, len(batch.ids)) for n in batch.labels.values]).any(0)
        for i in used.nonzero(as_tuple=True)[0].tolist():
            seen.setdefault(batch.ids[i], []).append(float(values[i].detach()))
        return values

    hook = make_ll4al_extra_loss(LossPredictionModule(8), sample_losses=recording)
    config = TrainConfig(epochs=3, batch_size=4, lr=1e-12, device="cpu", substitution_prob=substitution_prob)
    fit(net, make_loader(make_samples(16), TINY_MODALITIES, 4), config, extra_loss=hook)
    return seen


def test_ll4al_targets_do_not_change_with_substitution() -> None:
    """LL4AL learns the losses of unconditioned forwards: with substitution on, the samples whose labels
    were fed in are left out of its ranking loss and the rest keep exactly their plain targets."""
    plain = _ll4al_targets(0.0)
    substituted = _ll4al_targets(0.5)
    assert len(plain) == 16 and 0 < sum(map(len, substituted.values())) < sum(map(len, plain.values()))
    for sid, values in substituted.items():
        for v in values:
            assert v == pytest.approx(plain[sid][0], rel=1e-5)
