"""Shared fixtures: a real redis-server (``redis_url``) and a real Label Studio (``label_studio``).

Both are session-scoped. When a service is not installed the tests using it are skipped, unless env
``MTAL_REQUIRE_SERVICES`` is set (CI), in which case they fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support._proc import services_required
from tests.support.label_studio import LabelStudioServer, ls_executable, ls_venv_path
from tests.support.redis_server import RedisServer, redis_server_path


def _missing(message: str) -> None:
    if services_required():
        pytest.fail(f"{message} (MTAL_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh redis-server on a free port, e.g. ``redis://127.0.0.1:40123/0``."""
    if redis_server_path() is None:
        _missing("redis-server not installed: run scripts/ensure_redis.sh")
    with RedisServer.start(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio 1.23 (url, token, username, password, data_dir, files_root)."""
    if ls_executable() is None:
        _missing(f"Label Studio venv not found at {ls_venv_path()}: run scripts/ls_venv.sh")
    with LabelStudioServer.start(tmp_path_factory.mktemp("label-studio")) as server:
        yield server
