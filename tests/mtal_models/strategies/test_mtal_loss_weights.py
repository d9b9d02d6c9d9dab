"""MTAL-WACV eq. 5 loss weights: the ``loss_weights`` option (paper / relative / none)."""

import pytest
import torch

from mtal_models.strategies import get_strategy
from mtal_models.strategies.multitask import MTAL, loss_weights_from_scores

# raw inconsistencies of 4 unlabelled images and 1 labelled one; min-max over the pool maps task a to
# [0, 0.25, 0.5, 1, 0] and task b to [0.5, 0, 1, 0.25, 0] (raw a: 0..4, raw b: 0..2, both minimum 0)
RAW_A = [0.0, 1.0, 2.0, 4.0, 0.0]
RAW_B = [1.0, 0.0, 2.0, 0.5, 0.0]
PAPER_A = [0.0, 0.25, 0.5, 1.0, 0.0]
PAPER_B = [0.5, 0.0, 1.0, 0.25, 0.0]
# relative: divided by the image's larger weight; image 4 (both 0) gets 1 everywhere
REL_A = [0.0, 1.0, 0.5, 1.0, 1.0]
REL_B = [1.0, 0.0, 1.0, 0.25, 1.0]


def _pool() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    pool = {"inconsistency:a": torch.tensor(RAW_A), "inconsistency:b": torch.tensor(RAW_B)}
    labelled = torch.tensor([False, False, False, False, True])
    return pool, {"a": labelled.clone(), "b": labelled.clone()}


@pytest.mark.parametrize(
    ("how", "want"), [("paper", {"a": PAPER_A, "b": PAPER_B}), ("relative", {"a": REL_A, "b": REL_B}), ("none", {})]
)
def test_loss_weights_known_values_and_selection_unchanged(how: str, want: dict[str, list[float]]) -> None:
    pool, labelled = _pool()
    sel = MTAL("inconsistency", loss_weights=how).select(pool, labelled, 4)  # 2 images x 2 tasks
    assert set(sel.weights) == set(want)
    for k, v in want.items():
        assert torch.allclose(sel.weights[k], torch.tensor(v), atol=1e-6), (k, sel.weights[k])
    # selection uses max_k of the pool-normalised s_k whatever the loss weights: images 2 (1.0) and 3 (1.0)
    assert sorted(sel.images) == [2, 3]
    assert torch.allclose(sel.scores, torch.tensor([0.5, 0.25, 1.0, 1.0, 0.0]), atol=1e-6)
    ids = [f"im{i}" for i in range(5)]
    assert sel.sample_weights(ids) == (
        {i: {k: pytest.approx(v[n]) for k, v in want.items()} for n, i in enumerate(ids)} if want else {}
    )


def test_default_is_the_paper_and_factory_passes_the_option() -> None:
    assert MTAL().loss_weights == "paper"
    assert get_strategy("mtal", loss_weights="relative").loss_weights == "relative"
    assert get_strategy("mtal_inconsistency", loss_weights="none").loss_weights == "none"


def test_relative_keeps_the_top_task_at_one_and_the_ratios() -> None:
    s = {"a": torch.tensor([0.2, 0.05, 0.0]), "b": torch.tensor([0.1, 0.1, 0.0]), "c": torch.tensor([0.0, 0.4, 0.0])}
    w = loss_weights_from_scores(s, "relative")
    top = torch.stack(list(w.values()), dim=1)
    assert torch.allclose(top.max(dim=1).values, torch.ones(3))
    assert torch.allclose(w["b"][:2] / w["a"][:2], s["b"][:2] / s["a"][:2])
    assert torch.allclose(top[2], torch.ones(3))  # all-zero image: weight 1, not 0/0
    assert loss_weights_from_scores(s, "none") == {}
    assert all(torch.equal(w, s[k]) for k, w in loss_weights_from_scores(s, "paper").items())


def test_unknown_loss_weights_raise() -> None:
    with pytest.raises(ValueError, match="loss_weights"):
        MTAL(loss_weights="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_weights"):
        loss_weights_from_scores({"a": torch.zeros(2)}, "bogus")  # type: ignore[arg-type]


def test_mtal_unweighted_is_the_combined_selection_without_weights() -> None:
    s = get_strategy("mtal_unweighted", seed=0)
    assert (s.name, s.mode, s.loss_weights) == ("mtal_unweighted", "combined", "none")
    assert get_strategy("mtal").name == "mtal" and get_strategy("mtal_diversity", loss_weights="none").name == (
        "mtal_diversity"
    )

