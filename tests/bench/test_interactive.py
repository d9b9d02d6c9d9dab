"""bench.interactive at a tiny size (the tiny net, 3 later clicks, 2 fitting steps): it runs end to end through
the app and prints its METRIC lines with sane figures. No timing target is asserted here."""

from __future__ import annotations

import re

import pytest
import torch

from bench.interactive import main


def test_interactive_bench_prints_its_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    assert main(["--clicks", "3", "--net", "tiny", "--fit-steps", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("interactive_p95_ms", "interactive_vs_heads", "interactive_first_click_ms", "interactive_regions"):
        m = re.search(rf"^METRIC {name}=([\d.]+)$", out, re.M)
        assert m and float(m.group(1)) >= 0, out
    assert "480x360; net tiny" in out
