"""The simulator's fixed-step loader on partially labelled sets (``SimConfig.sampling``, drawn with
``mtal_models.training.data.draw_probabilities`` / ``make_sampler``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import RandomSampler, WeightedRandomSampler

import mtal_models.simulate.rounds as rounds
from mtal_models.data import LabelPool, Sample
from mtal_models.simulate import PRESETS, simulate
from mtal_models.simulate.data import load_data
from mtal_models.simulate.sim_data import SimData
from mtal_models.training.data import SAMPLINGS, draw_probabilities

TINY = PRESETS["tiny"]
NAMES = ["semantic", "depth", "normals"]


@pytest.fixture(scope="module")
def data() -> SimData:
    return load_data(TINY)


def _labelled(data: SimData, full: int, semantic_only: int) -> list[Sample]:
    """``full`` fully labelled images, then ``semantic_only`` images with only ``semantic``."""
    pool = LabelPool(len(data.pool), NAMES)
    pool.label_images(range(full))
    pool.label([(i, "semantic") for i in range(full, full + semantic_only)])
    return [pool.apply(data.pool[i], i) for i in pool.labelled_images()]


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_fully_labelled_sets_are_drawn_uniformly(data: SimData, sampling: str) -> None:
    p = draw_probabilities(data.pool[:7], NAMES, sampling)
    np.testing.assert_allclose(p, np.full(7, 1 / 7))


def test_known_probabilities_for_two_full_and_four_semantic_only(data: SimData) -> None:
    samples = _labelled(data, full=2, semantic_only=4)
    # labels: 3, 3, 1, 1, 1, 1 of 10
    np.testing.assert_allclose(draw_probabilities(samples, NAMES, "label"), [0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    # a modality (1/3), then an image labelled for it: semantic 1/6 of 6, depth and normals 1/2 of 2
    full, part = (1 / 6 + 1 / 2 + 1 / 2) / 3, (1 / 6) / 3
    np.testing.assert_allclose(draw_probabilities(samples, NAMES, "modality"), [full] * 2 + [part] * 4)
    np.testing.assert_allclose(draw_probabilities(samples, NAMES, "image"), np.full(6, 1 / 6))


def test_modality_sampling_ignores_modalities_without_labels(data: SimData) -> None:
    pool = LabelPool(len(data.pool), NAMES)
    pool.label([(0, "semantic"), (0, "depth"), (1, "semantic"), (2, "semantic")])  # no normals at all
    samples = [pool.apply(data.pool[i], i) for i in pool.labelled_images()]
    # semantic: 1/3 each of 3; depth: image 0; each modality 1/2
    expected = [(1 / 3 + 1) / 2, (1 / 3) / 2, (1 / 3) / 2]
    np.testing.assert_allclose(draw_probabilities(samples, NAMES, "modality"), expected)


def test_unknown_sampling_raises(data: SimData) -> None:
    with pytest.raises(ValueError, match="sampling"):
        draw_probabilities(data.pool[:2], NAMES, "pairs")
    with pytest.raises(ValueError, match="sampling"):
        TINY.replace(sampling="pairs")


@pytest.mark.parametrize("sampling", ["label", "modality"])
def test_step_loader_draws_follow_the_probabilities(data: SimData, sampling: str) -> None:
    samples = _labelled(data, full=2, semantic_only=4)
    loader = rounds._train_loader(samples, data.modalities, batch_size=8, seed=0, steps=500, sampling=sampling)
    assert isinstance(loader.sampler, WeightedRandomSampler)
    batches = list(loader)
    assert len(batches) == 500 and all(len(b.ids) == 8 for b in batches)
    counts = Counter(i for b in batches for i in b.ids)
    freq = np.array([counts[s.id] for s in samples]) / 4000
    np.testing.assert_allclose(freq, draw_probabilities(samples, NAMES, sampling), atol=0.015)


def test_step_loader_is_unchanged_on_fully_labelled_sets(data: SimData) -> None:
    """Uniform probabilities keep the whole-shuffled-passes loader, so image-level strategies and the
    reference draw exactly the same batches as before ``sampling`` existed."""
    orders = {}
    for sampling in SAMPLINGS:
        loader = rounds._train_loader(data.pool[:10], data.modalities, batch_size=4, seed=3, steps=6, sampling=sampling)
        assert isinstance(loader.sampler, RandomSampler)
        orders[sampling] = [i for b in loader for i in b.ids]
    assert orders["modality"] == orders["label"] == orders["image"]


def test_config_sampling_reaches_the_loader_and_the_settings_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = rounds._train_loader

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(str(args[5] if len(args) > 5 else kwargs["sampling"]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rounds, "_train_loader", recording)
    config = TINY.replace(strategies=("random",), rounds=1, steps_per_round=2, full_steps=2, sampling="label")
    simulate(config, tmp_path, progress=False)
    assert seen == ["label"] * 3  # reference, rounds 0 and 1
    assert rounds.settings_key(config)["sampling"] == "label"
    assert TINY.sampling == PRESETS["default"].sampling == "modality"


def test_label_steps_present_as_many_labels_as_full_image_steps(data: SimData) -> None:
    assert rounds.label_steps(data.pool[:5], NAMES, "modality", 200) == 200  # fully labelled: unchanged
    samples = _labelled(data, full=2, semantic_only=4)
    # modality draws: p = 7/18 for each full image, 1/18 for each semantic-only one -> 46/18 labels a draw
    assert rounds.label_steps(samples, NAMES, "modality", 200) == int(np.ceil(200 * 3 / (46 / 18)))  # 235
    # uniform draws: 10 labels over 6 images
    assert rounds.label_steps(samples, NAMES, "image", 200) == 360


def test_step_budget_is_a_result_field_that_keeps_older_runs_valid() -> None:
    base = rounds.settings_key(TINY)
    assert "step_budget" not in base  # runs stored before the field existed had "steps"
    assert rounds.settings_key(TINY.replace(step_budget="labels"))["step_budget"] == "labels"
    with pytest.raises(ValueError, match="step_budget"):
        TINY.replace(step_budget="epochs")


def test_step_budget_labels_gives_pair_rounds_more_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = rounds._train_loader

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(int(args[4]))  # steps
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rounds, "_train_loader", recording)
    config = TINY.replace(strategies=("partal",), rounds=1, steps_per_round=2, full_steps=2, step_budget="labels")
    simulate(config, tmp_path, progress=False)
    # reference and round 0 (full images): 2 steps; round 1 adds 6 single-modality pairs: more
    assert seen[:2] == [2, 2] and seen[2] > 2
