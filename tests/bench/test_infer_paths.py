"""bench.infer_paths at a tiny size (2 generated 96x72 photos, the tiny net, 64 px input): every path runs, prints
its METRIC lines, and the exact paths are exact. The tolerance the docs state for bfloat16 autocast (the only
inexact path that runs everywhere) is checked: dense outputs within 0.05 of eager's. No timing is asserted."""

from __future__ import annotations

import re

import pytest

from bench.infer_paths import main


def test_infer_paths_prints_ratios_and_differences(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--photos", "2", "--batch", "2", "--size", "72x96", "--image-size", "64", "--net", "tiny",
                 "--runs", "1", "--config", "single", "dense"]) == 0
    out = capsys.readouterr().out
    assert "2 synthetic photos 96x72 -> input 64x96" in out
    for config in ("single", "dense"):
        diff = dict(re.findall(rf"^METRIC infer_maxdiff_(\w+?)_{config}_tiny=(\S+)$", out, re.M))
        speed = dict(re.findall(rf"^METRIC infer_speedup_(\w+?)_{config}_tiny=(\S+)$", out, re.M))
        assert {"inference", "channels_last", "bf16"} <= set(diff) and set(diff) == set(speed), out
        assert float(diff["inference"]) == 0  # the same kernels
        assert float(diff["channels_last"]) < 1e-5  # other memory order: at most float rounding
        assert float(diff["bf16"]) < 0.05
        assert all(float(v) > 0 for v in speed.values())
        if "ort" in diff:  # only where onnxruntime is importable
            assert float(diff["ort"]) < 1e-4
        else:
            assert re.search(rf"^# {config}_tiny: ort skipped: ", out, re.M), out
