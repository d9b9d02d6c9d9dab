"""Shared fixtures: a real redis-server (``redis_url``) and a real Label Studio (``label_studio``).

Both are session-scoped. When a service is not installed the tests using it are skipped, unless env
``MTAL_REQUIRE_SERVICES`` is set (CI), in which case they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(autouse=True)
def offline_torch_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No test downloads weights: TORCH_HOME is an empty folder of the test (the user's cache is never
    read) and torch.hub's download raises URLError as on a machine without internet. Returns the list of
    URLs a test tried to download (see tests/support/weights.py to place fabricated files)."""
    from urllib.error import URLError

    import torch.hub

    attempts: list[str] = []

    def no_download(url: str, *args: object, **kwargs: object) -> None:
        attempts.append(url)
        raise URLError(f"no network in tests ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return attempts
