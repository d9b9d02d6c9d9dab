"""Start a throw-away real ``redis-server`` on a free port (no persistence) for tests.

Usage::

    with RedisServer.start(tmp_dir) as server:
        redis.Redis.from_url(server.url).ping()
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support._proc import die_with_parent, free_port, stop_process_group

__all__ = ["RedisServer", "redis_server_path", "RedisStartError"]


class RedisStartError(RuntimeError):
    """redis-server did not start or did not answer PING in time."""


def redis_server_path() -> str | None:
    """Path of the ``redis-server`` binary, or None when it is not installed (see scripts/ensure_redis.sh)."""
    return shutil.which("redis-server")


@dataclass
class RedisServer:
    """A running redis-server process bound to 127.0.0.1; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    port: int
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, *, port: int | None = None, timeout: float = 15.0) -> RedisServer:
        """Start redis-server in ``workdir`` (RDB and AOF off) and wait until PING answers.

        Raises:
            RedisStartError: when the binary is missing, the process exits, or PING fails for ``timeout`` s.
        """
        binary = redis_server_path()
        if binary is None:
            raise RedisStartError("redis-server is not installed; run scripts/ensure_redis.sh")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed with the process
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
        proc = subprocess.Popen(die_with_parent(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        server = cls(port=port, workdir=workdir, process=proc)
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RedisStartError(f"redis-server exited with {proc.returncode}: {server.log_tail()}")
            try:
                # Check the answer comes from our process, not another server already on the port.
                if client.ping() and int(client.info("server")["process_id"]) == proc.pid:
                    client.close()
                    return server
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RedisStartError(f"redis-server did not answer PING within {timeout} s: {server.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the server log."""
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the server and its process group."""
        stop_process_group(self.process)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
