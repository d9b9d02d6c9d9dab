"""bench.rank_photo at a tiny size (3 generated 96x72 photos, the tiny net, 64 px input): it runs end to end
through the fake Label Studio over HTTP and prints both METRIC lines per config (single, detseg, dense), with
sane figures. No timing target is asserted here (benchmarks meet targets, unit tests do not)."""

from __future__ import annotations

import re

import pytest

from bench.rank_photo import main


def test_rank_photo_prints_its_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--photos", "3", "--size", "72x96", "--image-size", "64", "--net", "tiny"]) == 0
    out = capsys.readouterr().out
    for config in ("single", "detseg", "dense"):
        ms = re.search(rf"^METRIC rank_ms_per_photo_{config}_tiny=(\d+)$", out, re.M)
        ratio = re.search(rf"^METRIC rank_vs_forward_photo_{config}_tiny=([\d.]+)$", out, re.M)
        assert ms and ratio, out
        assert int(ms.group(1)) > 0 and float(ratio.group(1)) > 0
    assert "3 synthetic photos 96x72 -> input 64x96" in out
