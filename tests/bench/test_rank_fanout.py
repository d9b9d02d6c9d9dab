"""bench.rank_fanout at a tiny size (8 tasks in chunks of 4, the tiny net, 64 px input): it runs end to end with
a real redis-server, worker processes and the fake Label Studio, and prints its METRIC line and where the time
went. No timing target is asserted here (benchmarks meet targets, unit tests do not)."""

from __future__ import annotations

import re
import shutil

import pytest

from bench.rank_fanout import main

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_rank_fanout_prints_its_metric(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    assert main(["--tasks", "8", "--chunk", "4", "--image-size", "64", "--net", "tiny"]) == 0
    out = capsys.readouterr().out
    speedup = re.search(r"^METRIC rank_fanout_speedup=([\d.]+)$", out, re.M)
    assert speedup and float(speedup.group(1)) > 0, out
    assert out.count("2 chunk jobs") == 2 and "net tiny, 2 chunks of 4" in out, out
