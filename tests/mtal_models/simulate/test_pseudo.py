"""The partial-label training options (``SimConfig.pseudo_label_weight``, ``pseudo_label_confidence``,
``mtpsl_weight``) reach the training of every round and are result fields that keep runs stored before
they existed valid."""

from __future__ import annotations

from pathlib import Path

import pytest

import mtal_models.simulate.loop as loop
from mtal_models.simulate import PRESETS, simulate

TINY = PRESETS["tiny"]


def test_pseudo_label_weight_reaches_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float, float]] = []
    real = loop.fit

    def recording(model, loader, config, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((config.pseudo_label_weight, config.pseudo_label_confidence, config.mtpsl_weight))
        return real(model, loader, config, **kwargs)

    monkeypatch.setattr(loop, "fit", recording)
    config = TINY.replace(strategies=("partal",), rounds=1, steps_per_round=2, full_steps=2,
                          substitution_prob=0.2, pseudo_label_weight=0.5, pseudo_label_confidence=0.7,
                          mtpsl_weight=0.1)
    simulate(config, tmp_path, progress=False)
    assert seen == [(0.5, 0.7, 0.1)] * 3  # reference, rounds 0 and 1


def test_pseudo_label_weight_is_a_result_field_that_keeps_older_runs_valid() -> None:
    old = loop.settings_key(TINY)  # stored runs trained without guesses or MTPSL
    assert not {"pseudo_label_weight", "pseudo_label_confidence", "mtpsl_weight"} & set(old)
    on = TINY.replace(substitution_prob=0.2, pseudo_label_weight=1.0)
    assert loop.settings_key(on)["pseudo_label_weight"] == 1.0
    assert loop.settings_key(TINY.replace(mtpsl_weight=0.1))["mtpsl_weight"] == 0.1
    with pytest.raises(ValueError, match="substitution_prob"):
        TINY.replace(substitution_prob=0.0, pseudo_label_weight=1.0)
