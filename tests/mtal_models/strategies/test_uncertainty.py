import json
import math

import pytest
import torch

from mtal_models.modalities import ModalitySpec
from mtal_models.strategies import RBAL, MinMaxNormalizer, PartAL, get_strategy
from mtal_models.strategies.base import BatchOutputs
from mtal_models.strategies.uncertainty import image_uncertainty, rank_sum, ranks

SHAPES = [(1, 2, 4, 4), (3, 4, 8, 5), (2, 3, 1, 1)]  # (B, D, H, W)


@pytest.mark.parametrize(("b", "d", "h", "w"), SHAPES)
@pytest.mark.parametrize("classes", [2, 5])
def test_uniform_softmax_entropy_is_log_c(b: int, d: int, h: int, w: int, classes: int) -> None:
    spec = ModalitySpec("sem", "segmentation", classes)
    u = image_uncertainty(spec, torch.zeros(b, d, classes, h, w))
    assert torch.allclose(u, torch.full((b,), math.log(classes)), atol=1e-5)


@pytest.mark.parametrize(("b", "d", "h", "w"), SHAPES)
def test_binary_entropy_at_half_is_log_2(b: int, d: int, h: int, w: int) -> None:
    u = image_uncertainty(ModalitySpec("edges", "binary", 1), torch.zeros(b, d, 1, h, w))
    assert torch.allclose(u, torch.full((b,), math.log(2)), atol=1e-5)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
@pytest.mark.parametrize(("kind", "channels"), [("depth", 1), ("normals", 3)])
def test_gaussian_entropy_matches_closed_form(sigma: float, kind: str, channels: int) -> None:
    base = torch.randn(2, 1, channels, 4, 4)
    samples = torch.cat([base - sigma, base + sigma], dim=1)  # unbiased variance over D=2 is 2 sigma^2
    u = image_uncertainty(ModalitySpec(kind, kind, channels), samples)
    expected = channels * 0.5 * math.log(2 * math.pi * math.e * 2 * sigma**2)
    assert torch.allclose(u, torch.full((2,), expected), atol=1e-4)


def _mc_batch(b: int, d: int, c: int, h: int, w: int, uniform: int) -> BatchOutputs:
    """Peaked logits everywhere except image ``uniform``, whose softmax is uniform."""
    logits = torch.zeros(b, d, c, h, w)
    logits[:, :, 0] = 8.0
    logits[uniform] = 0.0
    spec = ModalitySpec("sem", "segmentation", c)
    return BatchOutputs(modalities={"sem": spec}, mc={"sem": logits})


@pytest.mark.parametrize(("b", "c", "h", "w"), [(2, 2, 4, 4), (5, 3, 8, 8), (7, 6, 3, 5)])
@pytest.mark.parametrize("name", ["partal", "partal_image", "rbal"])
def test_uniform_softmax_outranks_peaked(name: str, b: int, c: int, h: int, w: int) -> None:
    strategy = get_strategy(name, mc_samples=3)
    target = b // 2
    pool = strategy.score_batch(_mc_batch(b, 3, c, h, w, target))
    sel = strategy.select(pool, {"sem": torch.zeros(b, dtype=torch.bool)}, 1)
    assert sel.pairs == [(target, "sem")]
    assert int(torch.argmax(sel.scores)) == target


def test_minmax_is_frozen_and_out_of_range_values_are_not_clipped() -> None:
    norm = MinMaxNormalizer().fit({"a": torch.tensor([1.0, 3.0])})
    norm.fit({"a": torch.tensor([-100.0, 100.0]), "b": torch.tensor([0.0, 10.0])})  # "a" stays frozen
    z = norm.transform({"a": torch.tensor([0.5, 2.0, 5.0]), "b": torch.tensor([5.0])})
    assert torch.allclose(z["a"].float(), torch.tensor([-0.25, 0.5, 2.0]))
    assert torch.allclose(z["b"].float(), torch.tensor([0.5]))
    clipped = MinMaxNormalizer.from_dict({**norm.to_dict(), "clip": True})
    assert torch.allclose(clipped.transform({"a": torch.tensor([0.5, 5.0])})["a"].float(), torch.tensor([0.0, 1.0]))
    norm.refit({"a": torch.tensor([0.0, 1.0])})
    assert norm.mins["a"] == 0.0


def test_minmax_constant_modality_and_errors() -> None:
    norm = MinMaxNormalizer().fit({"a": torch.tensor([2.0, 2.0])})
    assert torch.allclose(norm.transform({"a": torch.tensor([2.0, 3.0])})["a"].float(), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="'zz'"):
        norm.transform({"zz": torch.tensor([1.0])})
    with pytest.raises(ValueError, match="non-finite"):
        MinMaxNormalizer().fit({"a": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="bad range"):
        MinMaxNormalizer.from_dict({"min": {"a": 2.0}, "max": {"a": 1.0}})


def test_partal_round_two_uses_round_one_constants_after_json_round_trip() -> None:
    labelled = {"sem": torch.zeros(3, dtype=torch.bool), "depth": torch.zeros(3, dtype=torch.bool)}
    round1 = PartAL(mc_samples=2)
    round1.select({"sem": torch.tensor([1.0, 2.0, 3.0]), "depth": torch.tensor([-5.0, 0.0, 5.0])}, labelled, 1)
    saved = json.loads(json.dumps(round1.state()))
    round2 = PartAL(mc_samples=2)
    round2.load_state(saved)
    labelled["sem"][2] = True
    sel = round2.select({"sem": torch.tensor([0.0, 1.5, 2.0]), "depth": torch.tensor([-1.0, 10.0, 0.0])}, labelled, 2)
    assert torch.allclose(sel.pair_scores["sem"], torch.tensor([-0.5, 0.25, 0.5]))
    assert torch.allclose(sel.pair_scores["depth"], torch.tensor([0.4, 1.5, 0.5]))
    assert sel.pairs == [(1, "depth"), (2, "depth")]  # (2, "sem") is labelled
    with pytest.raises(ValueError, match="normalizer"):
        round2.load_state({"other": 1})
    round2.load_state({})  # nothing stored yet (a project's first ranking): a fresh normaliser
    assert round2.normalizer.fitted == []


def test_partal_per_round_normalisation_refits_on_each_rounds_unlabelled_pairs() -> None:
    labelled = {"sem": torch.zeros(3, dtype=torch.bool), "depth": torch.zeros(3, dtype=torch.bool)}
    strategy = PartAL(mc_samples=2, normalise="per_round")
    strategy.select({"sem": torch.tensor([1.0, 2.0, 3.0]), "depth": torch.tensor([-5.0, 0.0, 5.0])}, labelled, 1)
    labelled["sem"][2] = True
    sel = strategy.select({"sem": torch.tensor([0.0, 1.5, 2.0]), "depth": torch.tensor([-1.0, 10.0, 0.0])}, labelled, 2)
    # sem refitted on its unlabelled pairs (0, 1.5); depth on all three (-1 .. 10)
    assert torch.allclose(sel.pair_scores["sem"], torch.tensor([0.0, 1.0, 2.0 / 1.5]))
    assert torch.allclose(sel.pair_scores["depth"], torch.tensor([0.0, 1.0, 1.0 / 11]))
    assert sorted(sel.pairs) == [(1, "depth"), (1, "sem")]  # frozen constants pick (1, depth), (2, depth)
    with pytest.raises(ValueError, match="normalise"):
        PartAL(normalise="sometimes")


def test_partal_rejects_mismatched_modality_keys() -> None:
    with pytest.raises(ValueError, match="no labelled mask"):
        PartAL(mc_samples=2).select({"depth": torch.rand(2)}, {"sem": torch.zeros(2, dtype=torch.bool)}, 1)
    with pytest.raises(ValueError, match="MC"):
        PartAL(mc_samples=2).score_batch(BatchOutputs(modalities={}))


def test_rbal_rank_sum_on_hand_made_table() -> None:
    table = {"a": torch.tensor([0.1, 0.9, 0.5, 0.3]), "b": torch.tensor([5.0, 1.0, 4.0, 2.0])}
    # ranks a: [0, 3, 2, 1]; b: [3, 0, 2, 1]; sums: [3, 3, 4, 2]
    assert rank_sum(table).tolist() == [3.0, 3.0, 4.0, 2.0]
    labelled = {k: torch.zeros(4, dtype=torch.bool) for k in table}
    sel = RBAL(mc_samples=2).select(table, labelled, 4)
    assert sel.by_image() == {2: ["a", "b"], 0: ["a", "b"]}  # tie 0/1 -> lower index first
    assert ranks(torch.tensor([1.0, 1.0, 0.0])).tolist() == [1, 2, 0]


@pytest.mark.parametrize(("kind", "channels"), [("segmentation", 6), ("binary", 1), ("depth", 1), ("normals", 3)])
def test_image_uncertainty_equals_the_whole_batch_at_once(kind: str, channels: int) -> None:
    """Scored one image at a time (the photo-size memory bound), the values are those of the batch at once."""
    spec = ModalitySpec("m", kind, channels)
    samples = torch.randn(3, 4, channels, 9, 7, generator=torch.Generator().manual_seed(0)) * 3
    whole = spec.uncertainty(samples).flatten(1).mean(dim=1)
    assert torch.equal(image_uncertainty(spec, samples), whole)
