"""The ``redis_url`` fixture: a real, non-persistent redis-server that answers and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer, RedisStartError, redis_server_path

pytestmark = pytest.mark.redis


def test_fixture_server_answers_without_persistence(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("mtal:probe", b"42")
    assert client.get("mtal:probe") == b"42"
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    client.delete("mtal:probe")


def test_start_and_stop(tmp_path: Path) -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    with RedisServer.start(tmp_path) as server:
        assert redis.Redis.from_url(server.url).ping()
    assert server.process.poll() is not None
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()


def test_busy_port_is_reported(tmp_path: Path) -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    with RedisServer.start(tmp_path / "a") as first, pytest.raises(RedisStartError, match="exited"):
        RedisServer.start(tmp_path / "b", port=first.port, timeout=5)
