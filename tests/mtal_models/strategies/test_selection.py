import pytest
import torch

from mtal_models.strategies.selection import Selection, select_images, select_pairs, stable_order


def _labelled(n: int, names: list[str], done: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    out = {m: torch.zeros(n, dtype=torch.bool) for m in names}
    for m, idx in (done or {}).items():
        out[m][idx] = True
    return out


@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 2), (17, 4)])
def test_select_pairs_takes_top_budget_unlabelled_pairs(n: int, k: int) -> None:
    names = [f"m{i}" for i in range(k)]
    gen = torch.Generator().manual_seed(n * 10 + k)
    scores = {m: torch.rand(n, generator=gen) for m in names}
    labelled = _labelled(n, names, {names[0]: [0]})
    budget = max(1, n * k // 3)
    sel = select_pairs(scores, labelled, budget)
    free = [(float(scores[m][i]), i, m) for i in range(n) for m in names if not labelled[m][i]]
    expected = sorted(free, key=lambda t: -t[0])[:budget]
    assert sel.pairs == [(i, m) for _, i, m in expected]
    assert (0, names[0]) not in sel.pairs
    assert sel.cost == min(budget, len(free))


def test_pair_ties_break_by_image_then_modality_order() -> None:
    scores = {"a": torch.tensor([1.0, 1.0, 0.0]), "b": torch.tensor([1.0, 0.0, 1.0])}
    sel = select_pairs(scores, _labelled(3, ["a", "b"]), 4)
    assert sel.pairs == [(0, "a"), (0, "b"), (1, "a"), (2, "b")]
    assert stable_order(torch.tensor([2.0, 5.0, 2.0, 5.0])).tolist() == [1, 3, 0, 2]


def test_budget_larger_than_pool_selects_everything_unlabelled() -> None:
    labelled = _labelled(3, ["a", "b"], {"a": [1]})
    sel = select_pairs({"a": torch.rand(3), "b": torch.rand(3)}, labelled, 100)
    assert sel.cost == 5 and (1, "a") not in sel.pairs
    img = select_images(torch.rand(3), labelled, 100)
    assert img.cost == 5 and sorted(img.images) == [0, 1, 2]


def test_budget_zero_and_fully_labelled_pool_select_nothing() -> None:
    assert select_pairs({"a": torch.rand(4)}, _labelled(4, ["a"]), 0).pairs == []
    full = {"a": torch.ones(4, dtype=torch.bool)}
    assert select_images(torch.rand(4), full, 3).pairs == []


def test_image_selection_counts_unlabelled_modalities_and_skips_what_does_not_fit() -> None:
    # image 0: 3 labels to do (best score), image 1: 1 label (a done... b, c left? see mask), image 2: 2 labels
    labelled = _labelled(3, ["a", "b", "c"], {"a": [1, 2], "b": [1]})
    scores = torch.tensor([0.9, 0.5, 0.7])
    sel = select_images(scores, labelled, 2)
    # image 0 costs 3 > 2 -> skipped; image 2 costs 2 -> taken; budget exhausted
    assert sel.by_image() == {2: ["b", "c"]}
    sel = select_images(scores, labelled, 4)
    assert sel.by_image() == {0: ["a", "b", "c"], 1: ["c"]}


def test_selection_weights_by_id() -> None:
    sel = Selection(torch.zeros(2), [(1, "a")], weights={"a": torch.tensor([0.25, 1.0])})
    assert sel.images == [1]
    assert sel.sample_weights(["x", "y"]) == {"x": {"a": 0.25}, "y": {"a": 1.0}}
    with pytest.raises(ValueError, match="ids"):
        sel.sample_weights(["x"])


@pytest.mark.parametrize(
    ("scores", "labelled", "budget", "match"),
    [
        ({"a": torch.tensor([0.1, float("nan")])}, {"a": torch.zeros(2, dtype=torch.bool)}, 1, "NaN"),
        ({"z": torch.rand(2)}, {"a": torch.zeros(2, dtype=torch.bool)}, 1, "'z'"),
        ({"a": torch.rand(3)}, {"a": torch.zeros(2, dtype=torch.bool)}, 1, "3 images"),
        ({"a": torch.rand(0)}, {"a": torch.zeros(0, dtype=torch.bool)}, 1, "empty pool"),
        ({"a": torch.rand(2)}, {"a": torch.zeros(2)}, 1, "bool"),
        ({"a": torch.rand(2)}, {"a": torch.zeros(2, dtype=torch.bool)}, -1, "budget"),
        ({"a": torch.rand(2)}, {"a": torch.zeros(2, dtype=torch.bool)}, 1.5, "budget"),
        ({"a": torch.rand(2)}, {}, 1, "non-empty"),
    ],
)
def test_bad_input_raises_clear_value_error(scores, labelled, budget, match) -> None:
    with pytest.raises(ValueError, match=match):
        select_pairs(scores, labelled, budget)


def test_image_scores_with_nan_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        select_images(torch.tensor([0.0, float("nan")]), {"a": torch.zeros(2, dtype=torch.bool)}, 1)
