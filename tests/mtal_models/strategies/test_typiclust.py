import pytest
import torch

from mtal_models.strategies import get_strategy
from mtal_models.strategies.typiclust import TypiClust, kmeans, typicality, typiclust_order

# Four clusters of different sizes around far-apart centres; in each, a dense core (typical) and a few
# points on the rim (atypical); plus two isolated outliers.
CENTRES = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0], [0, 0, 0, 10.0]])
SIZES = (30, 24, 18, 12)


def _clustered(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """features [N, 4]; per cluster its indices; the core (typical) indices; the outlier indices."""
    gen = torch.Generator().manual_seed(seed)
    feats, members, core = [], [], []
    start = 0
    for c, size in zip(CENTRES, SIZES, strict=True):
        pts = c + 0.05 * torch.randn(size, 4, generator=gen)
        pts[-4:] = c + 1.5 * torch.randn(4, 4, generator=gen)  # the rim: atypical members
        feats.append(pts)
        members.append(torch.arange(start, start + size))
        core.append(torch.arange(start, start + size - 4))
        start += size
    outliers = torch.tensor([[7.0, 7.0, 7.0, 7.0], [-8.0, 0, 0, 0]])
    feats.append(outliers)
    # shuffle so that pool order says nothing
    x = torch.cat(feats)
    perm = torch.randperm(x.shape[0], generator=gen)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    return (x[perm], [inverse[m] for m in members], inverse[torch.cat(core)],
            inverse[torch.arange(start, start + 2)])


def _labelled(n: int) -> dict[str, torch.Tensor]:
    return {"sem": torch.zeros(n, dtype=torch.bool)}


def test_first_picks_are_typical_points_one_per_cluster_largest_first() -> None:
    x, members, core, outliers = _clustered()
    sel = TypiClust().select({"pooled": x}, _labelled(x.shape[0]), budget=4)
    assert len(sel.images) == 4
    for pick, cluster in zip(sel.images, members, strict=True):  # largest cluster first, then the next ...
        assert pick in cluster.tolist()
        assert pick in core.tolist()  # ... and a typical member, never one on the rim
    assert not set(sel.images) & set(outliers.tolist())


def test_every_cluster_is_covered_before_a_second_pick_and_outliers_come_last() -> None:
    x, members, core, outliers = _clustered(seed=1)
    n = x.shape[0]
    # 4 + 2 clusters: k-means gives each outlier its own, too small to visit
    sel = TypiClust(batch=6).select({"pooled": x}, _labelled(n), budget=n)
    order = sel.images
    assert sorted(order) == list(range(n))  # a full ranking of the pool
    cluster_of = {int(i): c for c, m in enumerate(members) for i in m}
    assert {cluster_of[i] for i in order[:4]} == {0, 1, 2, 3}
    assert set(order[-2:]) == set(outliers.tolist())
    for m in members:  # within a cluster, every typical member before any on the rim
        ranks = [order.index(int(i)) for i in m]
        is_core = [int(i) in set(core.tolist()) for i in m]
        assert max(r for r, c in zip(ranks, is_core, strict=True) if c) < min(
            r for r, c in zip(ranks, is_core, strict=True) if not c)
    ranks = torch.argsort(sel.scores, descending=True, stable=True).tolist()
    assert ranks == order  # sorting by score (what Label Studio does) gives the same order


def test_labelled_clusters_are_visited_last() -> None:
    x, members, _, _ = _clustered()
    labelled = _labelled(x.shape[0])
    labelled["sem"][members[0][:2]] = True  # the largest cluster already has labels
    sel = TypiClust().select({"pooled": x}, labelled, budget=4)
    cluster_of = {int(i): c for c, m in enumerate(members) for i in m}
    # |L| + B = 6 clusters may split the big ones; the first picks still avoid the labelled cluster
    assert all(cluster_of.get(i) != 0 for i in sel.images[:3])
    assert not any(labelled["sem"][i] for i in sel.images)
    assert float(sel.scores[labelled["sem"]].max()) == 0.0


def test_partially_labelled_images_follow_the_unlabelled_ones() -> None:
    x, _, _, _ = _clustered()
    n = x.shape[0]
    labelled = {"a": torch.zeros(n, dtype=torch.bool), "b": torch.zeros(n, dtype=torch.bool)}
    labelled["a"][[3, 7]] = True
    sel = TypiClust(batch=4).select({"pooled": x}, labelled, budget=2 * n)
    assert sel.images[-2:] == [3, 7]
    assert sel.by_image()[3] == ["b"]


def test_typicality_and_kmeans_known_answers() -> None:
    x = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
    t = typicality(x, 2)  # 0.1 has both neighbours at 0.1
    assert int(t.argmax()) == 1 and int(t.argmin()) == 3
    assert torch.equal(typicality(torch.zeros(1, 3), 5), torch.full((1,), 1e5))
    a = kmeans(torch.tensor([[0.0, 0], [0.1, 0], [9, 9], [9.1, 9]]), 2, seed=3)
    assert a[0] == a[1] and a[2] == a[3] and a[0] != a[2]
    assert torch.equal(a, kmeans(torch.tensor([[0.0, 0], [0.1, 0], [9, 9], [9.1, 9]]), 2, seed=3))


def test_order_is_deterministic_and_clusters_are_capped() -> None:
    x, _, _, _ = _clustered()
    free = torch.zeros(x.shape[0], dtype=torch.bool)
    assert torch.equal(typiclust_order(x, free, 4), typiclust_order(x, free, 4))
    strategy = TypiClust(min_cluster_size=5, max_clusters=500)
    assert strategy.n_clusters(0, 86, budget=86) == 86 // 5  # the backend ranks everything: no singletons
    assert strategy.n_clusters(3, 86, budget=10) == 13
    assert TypiClust(batch=20).n_clusters(0, 1000, budget=1000) == 20


def test_registered_and_errors_are_clear() -> None:
    s = get_strategy("typiclust", batch=10)
    assert isinstance(s, TypiClust) and s.needs.embeddings == "pooled"
    with pytest.raises(ValueError, match="pooled"):
        s.select({}, _labelled(3), 1)
    with pytest.raises(ValueError, match="finite"):
        s.select({"pooled": torch.full((3, 2), float("inf"))}, _labelled(3), 1)
    with pytest.raises(ValueError, match="invalid options"):
        TypiClust(k_nn=0)
