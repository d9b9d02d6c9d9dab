"""bench.load at a tiny size: gunicorn answers every concurrent /predict and the figures are sane."""

from __future__ import annotations

import pytest

from bench.load import run

pytestmark = pytest.mark.slow


def test_load_bench_smoke() -> None:
    fig = run(n=6, rounds=2, net="tiny", image_size=64, threads=2)
    assert fig["ok"] == 6
    assert 0 < fig["idle"] <= fig["peak"] < 4096 and fig["wall"] > 0 and fig["p95"] > 0
