import pytest
import torch
from torch import nn

from mtal_models.data.sample import Batch
from mtal_models.nets.base import Labels
from mtal_models.strategies import LL4AL, LossPredictionModule, make_ll4al_extra_loss, margin_ranking_loss
from mtal_models.strategies.base import BatchOutputs

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
