import pytest
import torch

from mtal_models.data.sample import Batch
from mtal_models.nets.base import Labels
from mtal_models.strategies import STRATEGIES, LossPredictionModule, collect_pool_outputs, get_strategy

from .fakes import DENSE, DETSEG, FakeNet

REQUIRED = {"random", "rbal", "coreset", "ll4al", "equal", "partal", "partal_image", "mtal", "mtal_inconsistency",
            "mtal_diversity", "boxmask"}


def test_registry_has_every_method_and_unknown_names_list_the_valid_ones() -> None:
    assert set(STRATEGIES) >= REQUIRED
    with pytest.raises(ValueError, match="valid: .*partal"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="bad options"):
        get_strategy("random", mc_samples=3)


def _options(name: str) -> dict:
    return {
        "ll4al": {"module": LossPredictionModule(8)},
        "rbal": {"mc_samples": 3},
        "partal": {"mc_samples": 3},
        "partal_image": {"mc_samples": 3},
        "mtal": {"ae_epochs": 2, "code_dim": 16, "ae_hidden": 16},
        "mtal_diversity": {"ae_epochs": 2, "code_dim": 16, "ae_hidden": 16},
        "boxmask": {"crop_size": 8},
    }.get(name, {})


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("budget", [3, 100])
def test_every_strategy_runs_through_the_driver(name: str, budget: int) -> None:
    specs = DETSEG if name == "boxmask" else DENSE
    net = FakeNet(specs)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(3, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)]
    labels = Labels({}, {})
    batches[1] = Batch(batches[1], labels, ["d", "e"])  # both kinds of batch are accepted
    strategy = get_strategy(name, **_options(name))
    pool = collect_pool_outputs(net, batches, strategy)
    labelled = {k: torch.zeros(5, dtype=torch.bool) for k in specs}
    labelled[next(iter(specs))][0] = True
    sel = strategy.select(pool, labelled, budget)
    n_free = sum(int((~m).sum()) for m in labelled.values())
    assert sel.scores.shape == (5,) and not torch.isnan(sel.scores).any()
    assert 0 < sel.cost <= min(budget, n_free)
    assert all(not labelled[m][i] for i, m in sel.pairs)
    assert len(set(sel.pairs)) == sel.cost
    if strategy.unit == "image":  # whole images: every unlabelled modality of each chosen image
        for i, mods in sel.by_image().items():
            assert mods == [m for m in labelled if not labelled[m][i]]
    assert net.training  # the driver restores the mode


def test_driver_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="empty pool"):
        collect_pool_outputs(FakeNet(), [], get_strategy("random"))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        collect_pool_outputs(FakeNet(), [torch.rand(2, 1, 8, 8)], get_strategy("random"))
    with pytest.raises(ValueError, match="exactly one detection"):
        collect_pool_outputs(FakeNet(DENSE), [torch.rand(1, 3, 8, 8)], get_strategy("boxmask"))
