import pytest
import torch

from mtal_models.strategies import MTAL, CoreSet
from mtal_models.strategies.diversity import kcenter_greedy, nearest_distance, train_autoencoder


@pytest.mark.parametrize(("n", "m", "d"), [(1, 1, 1), (7, 5, 3), (40, 20, 16)])
@pytest.mark.parametrize("chunk", [3, 1000])
def test_chunked_nearest_distance_equals_full_cdist(n: int, m: int, d: int, chunk: int) -> None:
    gen = torch.Generator().manual_seed(n + m + d)
    x, y = torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)
    expected = torch.cdist(x, y).min(dim=1).values
    assert torch.allclose(nearest_distance(x, y, chunk, chunk), expected, atol=1e-4)


def test_nearest_distance_edge_cases() -> None:
    assert torch.isinf(nearest_distance(torch.zeros(3, 2), torch.zeros(0, 2))).all()
    with pytest.raises(ValueError, match="share D"):
        nearest_distance(torch.zeros(3, 2), torch.zeros(4, 3))


def _cluster_and_outlier(n: int, d: int, far: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n * d)
    feats = torch.randn(n, d, generator=gen) * 0.1
    feats[far] += 10.0
    return feats


@pytest.mark.parametrize(("n", "d", "far"), [(6, 2, 5), (20, 8, 3), (40, 32, 0)])
def test_kcenter_picks_the_point_far_from_all_labelled_first(n: int, d: int, far: int) -> None:
    feats = _cluster_and_outlier(n, d, far)
    centres = torch.zeros(n, dtype=torch.bool)
    centres[[i for i in range(n) if i != far][:2]] = True
    initial, picks = kcenter_greedy(feats, centres, ~centres, 2)
    assert picks[0] == far
    assert int(torch.argmax(initial)) == far and float(initial[centres].max()) < 1e-3
    labelled = {"a": centres.clone(), "b": centres.clone()}
    sel = CoreSet().select({"pooled": feats}, labelled, 2)
    assert sel.pairs == [(far, "a"), (far, "b")]


def test_kcenter_without_centres_and_with_costs() -> None:
    feats = torch.tensor([[0.0], [1.0], [2.0], [12.0]])
    everyone = torch.ones(4, dtype=torch.bool)
    _, picks = kcenter_greedy(feats, ~everyone, everyone, 2)
    assert picks == [3, 0]  # farthest from the mean 3.75, then farthest from 12
    costs = torch.tensor([1, 1, 1, 5])
    _, picks = kcenter_greedy(feats, ~everyone, everyone, 2, costs)
    assert 3 not in picks and len(picks) == 2


def test_autoencoder_learns_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 4, generator=gen) @ torch.randn(4, 24, generator=gen)  # rank-4 data
    ae, hist = train_autoencoder(feats, epochs=10, seed=3, code_dim=512, hidden=32, batch_size=16)
    assert hist[-1] < hist[0] * 0.5
    assert ae.encode(feats).shape == (64, 512)
    ae2, hist2 = train_autoencoder(feats, epochs=10, seed=3, code_dim=512, hidden=32, batch_size=16)
    assert hist == hist2 and torch.equal(ae.encode(feats), ae2.encode(feats))
    with pytest.raises(ValueError, match="NaN"):
        train_autoencoder(torch.full((2, 3), float("nan")))


def _mtal_pool(n: int, far: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    head = _cluster_and_outlier(n, 12, far)
    gen = torch.Generator().manual_seed(7)
    pool = {"head": head, "inconsistency:a": torch.rand(n, generator=gen)}
    pool["inconsistency:b"] = torch.rand(n, generator=gen)
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[[i for i in range(n) if i != far][: n // 2]] = True
    return pool, {"a": labelled.clone(), "b": labelled.clone()}


@pytest.mark.parametrize(("n", "far"), [(8, 7), (16, 2)])
def test_mtal_diversity_picks_the_far_point_and_combined_is_the_product(n: int, far: int) -> None:
    pool, labelled = _mtal_pool(n, far)
    div = MTAL("diversity", ae_epochs=5, seed=1, ae_hidden=32)
    sel_div = div.select(pool, labelled, 2)
    assert sel_div.images == [far]
    inc = MTAL("inconsistency").select(pool, labelled, 2)
    comb = MTAL("combined", ae_epochs=5, seed=1, ae_hidden=32).select(pool, labelled, 2)
    assert torch.allclose(comb.scores, sel_div.scores * inc.scores, atol=1e-6)
    assert set(comb.weights) == {"a", "b"}
    for w in comb.weights.values():
        assert float(w.min()) == 0.0 and float(w.max()) == 1.0
    assert torch.allclose(inc.scores, torch.maximum(comb.weights["a"], comb.weights["b"]))
