"""The partial-label training options (``SimConfig.pseudo_label_weight``, ``pseudo_label_confidence``,
``mtpsl_weight``) reach the training of every round and are result fields that keep runs stored before
they existed valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mtal_models.simulate.rounds as rounds
from mtal_models.simulate import PRESETS, simulate

TINY = PRESETS["tiny"]


def test_pseudo_label_weight_reaches_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float, float]] = []
    real = rounds.fit

    def recording(model, loader, config, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((config.pseudo_label_weight, config.pseudo_label_confidence, config.mtpsl_weight))
        return real(model, loader, config, **kwargs)

    monkeypatch.setattr(rounds, "fit", recording)
    config = TINY.replace(strategies=("partal",), rounds=1, steps_per_round=2, full_steps=2,
                          substitution_prob=0.2, pseudo_label_weight=0.5, pseudo_label_confidence=0.7,
                          mtpsl_weight=0.1)
    simulate(config, tmp_path, progress=False)
    assert seen == [(0.5, 0.7, 0.1)] * 3  # reference, rounds 0 and 1


def test_pseudo_label_weight_is_a_result_field_that_keeps_older_runs_valid() -> None:
    old = rounds.settings_key(TINY)  # stored runs trained without guesses or MTPSL
    assert not {"pseudo_label_weight", "pseudo_label_confidence", "mtpsl_weight"} & set(old)
    on = TINY.replace(substitution_prob=0.2, pseudo_label_weight=1.0)
    assert rounds.settings_key(on)["pseudo_label_weight"] == 1.0
    assert rounds.settings_key(TINY.replace(mtpsl_weight=0.1))["mtpsl_weight"] == 0.1
    with pytest.raises(ValueError, match="substitution_prob"):
        TINY.replace(substitution_prob=0.0, pseudo_label_weight=1.0)


def test_previous_teacher_is_the_last_rounds_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teachers: list[object] = []
    real = rounds.fit

    def recording(model, loader, config, teacher=None, **kwargs):  # type: ignore[no-untyped-def]
        teachers.append(None if teacher is None else {k: v.clone() for k, v in teacher.state_dict().items()})
        result = real(model, loader, config, teacher=teacher, **kwargs)
        trained.append({k: v.clone() for k, v in model.state_dict().items()})
        return result

    trained: list[dict] = []
    monkeypatch.setattr(rounds, "fit", recording)
    config = TINY.replace(strategies=("partal",), rounds=2, steps_per_round=2, full_steps=2,
                          substitution_prob=0.2, pseudo_label_weight=1.0, pseudo_label_teacher="previous")
    simulate(config, tmp_path, progress=False)
    assert teachers[0] is None and teachers[1] is None  # the reference, round 0: no partial labels
    for rnd in (2, 3):  # rounds 1 and 2 learn from the network that selected their labels
        assert all(torch.equal(teachers[rnd][k], trained[rnd - 1][k]) for k in teachers[rnd])
    with pytest.raises(ValueError, match="pseudo_label_teacher"):
        TINY.replace(pseudo_label_teacher="oracle")
