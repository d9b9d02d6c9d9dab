"""``SimConfig.pseudo_label_weight`` reaches the training of every round and is a result field that keeps
runs stored before it existed valid."""

from __future__ import annotations

from pathlib import Path

import pytest

import mtal_models.simulate.loop as loop
from mtal_models.simulate import PRESETS, simulate

TINY = PRESETS["tiny"]


def test_pseudo_label_weight_reaches_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    real = loop.fit

    def recording(model, loader, config, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(config.pseudo_label_weight)
        return real(model, loader, config, **kwargs)

    monkeypatch.setattr(loop, "fit", recording)
    config = TINY.replace(strategies=("partal",), rounds=1, steps_per_round=2, full_steps=2,
                          substitution_prob=0.2, pseudo_label_weight=0.5)
    simulate(config, tmp_path, progress=False)
    assert seen == [0.5] * 3  # reference, rounds 0 and 1


def test_pseudo_label_weight_is_a_result_field_that_keeps_older_runs_valid() -> None:
    assert "pseudo_label_weight" not in loop.settings_key(TINY)  # stored runs trained without guesses
    on = TINY.replace(substitution_prob=0.2, pseudo_label_weight=1.0)
    assert loop.settings_key(on)["pseudo_label_weight"] == 1.0
    with pytest.raises(ValueError, match="substitution_prob"):
        TINY.replace(substitution_prob=0.0, pseudo_label_weight=1.0)
