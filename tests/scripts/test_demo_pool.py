"""scripts/demo_pool.py: the arms' options and the side-by-side edit-cost table (the demo itself runs in
tests/e2e/test_demo.py)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_pool.py"
spec = importlib.util.spec_from_file_location("demo_pool", SCRIPT)
demo_pool = importlib.util.module_from_spec(spec)
sys.modules["demo_pool"] = demo_pool
spec.loader.exec_module(demo_pool)


def test_arm_flags_set_only_their_own_setting() -> None:
    args = argparse.Namespace(semi_weight=0.5, pretrain_minutes=3.0)
    assert demo_pool.arm_flags("off", args) == ["--semi-weight", "0", "--pretrain-minutes", "0"]
    assert demo_pool.arm_flags("semi", args) == ["--semi-weight", "0.5", "--pretrain-minutes", "0"]
    assert demo_pool.arm_flags("pretrain", args) == ["--semi-weight", "0", "--pretrain-minutes", "3.0"]
    with pytest.raises(SystemExit, match="unknown arm"):
        demo_pool.arm_flags("ssl", args)


def test_table_puts_arms_side_by_side_and_drops_absent_modalities() -> None:
    nan = float("nan")
    off = {"before": {"mask_edit_share": 0.8, "box_precision": nan}, "after": {"mask_edit_share": 0.25,
           "box_precision": nan}, "metrics": {"train_seconds": 100}}
    semi = {"before": {"mask_edit_share": 0.8}, "after": {"mask_edit_share": 0.2}, "metrics": {"train_seconds": 180}}
    lines = demo_pool.table({"off": off, "semi": semi}).splitlines()
    assert lines[0] == "| edit cost after training | before training | off | semi |"
    assert "| pixels to repaint (mask edit share) | 80.0% | 25.0% | 20.0% |" in lines
    assert not any("box precision" in line for line in lines)  # no boxes in this project
    assert lines[-1] == "| training seconds | – | 100 | 180 |"
