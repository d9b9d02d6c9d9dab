"""MTAL-WACV loss weights in the simulator: each image keeps the s_k(x) of the round that selected it."""

from __future__ import annotations

import json
from pathlib import Path

from mtal_models.simulate import PRESETS, initial_images, simulate
from mtal_models.simulate.rounds import merge_weights


def test_merge_keeps_earlier_weights_and_adds_only_the_chosen() -> None:
    old = {"a": {"depth": 0.7}}
    new = {"a": {"depth": 0.0}, "b": {"depth": 0.9}, "c": {"depth": 0.1}}
    merged = merge_weights(old, new, ["b"])
    assert merged == {"a": {"depth": 0.7}, "b": {"depth": 0.9}}
    assert old == {"a": {"depth": 0.7}}  # not modified in place
    assert merge_weights(None, new, ["c"]) == {"c": {"depth": 0.1}}


def test_initial_images_train_with_weight_one(tmp_path: Path) -> None:
    config = PRESETS["tiny"].replace(strategies=("mtal",), rounds=2, budget=6)
    simulate(config, tmp_path, progress=False)
    state = json.loads((tmp_path / "runs" / "mtal" / "seed0" / "state.json").read_text())
    ids = [f"{i:06d}" for i in range(config.n_images)]
    weighted = set(state["sample_weights"])
    initial = {ids[i] for i in initial_images(config, config.n_images, 0)}
    labelled = {ids[i] for idx in state["pool"]["labelled"].values() for i in idx}
    assert weighted and not weighted & initial
    assert weighted == labelled - initial
