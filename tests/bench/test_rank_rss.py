"""bench.rank_rss at a tiny size (pools of 20 and 40 tasks, no photo chunk): each size is ranked in a fresh child
process against the fake Label Studio served by the parent, every prediction pushed, and the peaks and the
growth per task are printed. No memory target is asserted here (the benchmark's figure is)."""

from __future__ import annotations

import re

import pytest

from bench.rank_rss import main


def test_rank_rss_prints_peaks_and_growth(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "20", "40", "--photos", "0"]) == 0
    out = capsys.readouterr().out
    peaks = {n: float(v) for n, v in re.findall(r"^METRIC rank_peak_rss_mb_tiny_(\d+)=(\S+)$", out, re.M)}
    assert len(re.findall(r"^# (20|40) tasks, tiny net at 64 px, partal_image: ready \d+ MB, peak", out, re.M)) == 2
    assert set(peaks) == {"20", "40"} and all(v > 50 for v in peaks.values()), out
    assert re.search(r"^METRIC rank_rss_kb_per_task=-?[\d.]+$", out, re.M), out
    assert "rank_peak_rss_mb_10k=" not in out  # no photo chunk, no estimate
