"""bench.loop's webhook benchmark runs end to end on a short run (it cannot rot): gunicorn with the
production config, a real redis-server, a job holding the project in ``training``, bursts of webhooks.
The benchmark itself checks that every label was counted and exactly one follow-up run happened (it
raises otherwise); no timing is asserted here (targets are met in benchmarks, not unit tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support._proc import services_required
from tests.support.redis_server import redis_server_path

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_webhook_bench_short_run(tmp_path: Path) -> None:
    if redis_server_path() is None:
        if services_required():
            pytest.fail("redis-server not installed (MTAL_REQUIRE_SERVICES is set)")
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    from bench.loop import N_CONCURRENT, bench_webhook

    out = bench_webhook(tmp_path, sleep_s=60.0, bursts=2)
    assert out["n"] == 2 * N_CONCURRENT
    assert 0 < out["p50"] <= out["p99"] <= out["max"]
    assert out["noop_p99"] > 0 and out["nice0_p99"] > 0
