"""The simulator's per-round training schedule: fixed optimizer steps, retraining from the initial weights,
GT substitution passed to training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

import mtal_models.simulate.rounds as rounds
from mtal_models.simulate import PRESETS, simulate
from mtal_models.simulate.data import load_data

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("n_samples", [3, 8, 21])
def test_step_loader_gives_exactly_the_steps_and_covers_every_sample(n_samples: int) -> None:
    data = load_data(TINY.replace(n_images=max(n_samples, 2)))
    samples = data.pool[:n_samples]
    loader = rounds._train_loader(samples, data.modalities, batch_size=4, seed=0, steps=7)
    batches = list(loader)
    assert len(loader) == len(batches) == 7
    assert all(len(b.ids) == 4 for b in batches)
    order = [i for b in batches for i in b.ids]  # 28 draws
    assert set(order) == {s.id for s in samples}
    # whole shuffled passes back to back: no sample is seen twice before every sample was seen once
    assert len(set(order[:n_samples])) == n_samples
    assert max(Counter(order).values()) - min(Counter(order).values()) <= 1


def test_epoch_loader_is_unchanged_without_steps() -> None:
    data = load_data(TINY)
    loader = rounds._train_loader(data.pool[:10], data.modalities, batch_size=4, seed=0)
    assert len(loader) == 3  # ceil(10 / 4); a last batch of one would be dropped


def _record_fit(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace rounds.fit by a recorder of (first parameter at the call, loader length, TrainConfig)."""
    calls: list[dict] = []
    real_fit = rounds.fit

    def recording_fit(model: torch.nn.Module, loader: object, config: object, **kwargs: object) -> object:
        first = next(model.parameters()).detach().clone()
        calls.append({"param": first, "steps": len(loader), "config": config})  # type: ignore[arg-type]
        return real_fit(model, loader, config, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rounds, "fit", recording_fit)
    return calls


@pytest.mark.parametrize("retrain", [True, False])
def test_retrain_starts_every_round_from_the_initial_weights(
    retrain: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_fit(monkeypatch)
    config = TINY.replace(strategies=("random",), rounds=2, retrain=retrain, steps_per_round=3, full_steps=2)
    simulate(config, tmp_path, progress=False)
    reference, *rounds = calls
    assert [c["steps"] for c in calls] == [2, 3, 3, 3]  # fixed steps, whatever the labelled-set size
    assert all(c["config"].epochs == 1 for c in calls)
    initial = reference["param"]
    for c in rounds[1:]:
        assert torch.equal(c["param"], initial) is retrain


def test_step_budget_sizes_every_training_and_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """min_steps / steps_per_label: each round trains max(min_steps, ceil(steps_per_label · N)) steps for its N
    labelled images (the fixed steps_per_round ignored), and the reference the same rule over the whole pool."""
    calls = _record_fit(monkeypatch)
    config = TINY.replace(strategies=("random",), rounds=2, retrain=True, steps_per_round=3, full_steps=2,
                          min_steps=5, steps_per_label=1.5)  # pool 16, initial 4, 2 images a round
    simulate(config, tmp_path, progress=False)
    assert [c["steps"] for c in calls] == [24, 6, 9, 12]  # reference ceil(1.5 · 16); 4, 6, 8 images: 5 -> 6, 9, 12
    assert rounds.budget_steps(config, 2, 99) == 5 and rounds.budget_steps(TINY, 2, 99) == 99


def test_substitution_prob_reaches_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_fit(monkeypatch)
    simulate(TINY.replace(strategies=("random",), rounds=1, substitution_prob=0.25), tmp_path, progress=False)
    assert [c["config"].substitution_prob for c in calls] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps_per_round": -1}, "steps_per_round"),
        ({"full_steps": -5}, "full_steps"),
        ({"substitution_prob": 1.5}, "substitution_prob"),
        ({"retrain": "yes"}, "retrain"),
    ],
)
def test_bad_schedule_values_raise(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TINY.replace(**changes)


def test_round0_is_trained_once_per_seed_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_fit(monkeypatch)
    config = TINY.replace(strategies=("random", "coreset", "ll4al"), rounds=1, steps_per_round=3, full_steps=2)
    result = simulate(config, tmp_path, progress=False)
    # reference, shared round 0, random r1, coreset r1, LL4AL's own r0 (its loss module trains too) and r1
    assert len(calls) == 6
    r0 = {r["strategy"]: r for r in result.rows if r["round"] == 0}
    assert r0["random"]["mt_score"] == r0["coreset"]["mt_score"]
    assert (tmp_path / "round0" / "seed0.pt").is_file()
    # a stored round 0 of other settings is not reused
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "round0").rename(other / "round0")
    calls.clear()
    simulate(config.replace(strategies=("random",), rounds=0, steps_per_round=5), other, progress=False)
    assert [c["steps"] for c in calls] == [2, 5]  # reference and round 0 train


def test_class_share_keys_only_semi_supervised_runs() -> None:
    """semi_class_share (default 0.5) means nothing without the semi-supervised term: supervised runs stored
    before it existed stay valid; semi-supervised ones, made with the threshold alone (0), are retrained."""
    assert "semi_class_share" not in rounds.settings_key(TINY)
    assert rounds.settings_key(TINY.replace(semi_weight=1.0))["semi_class_share"] == 0.5
    assert "semi_class_share" not in rounds.settings_key(TINY.replace(semi_weight=1.0, semi_class_share=0.0))
    assert "min_steps" not in rounds.settings_key(TINY)
    assert rounds.settings_key(TINY.replace(min_steps=9))["min_steps"] == 9
