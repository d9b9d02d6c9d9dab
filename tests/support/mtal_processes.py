"""The production topology as real processes: the backend under gunicorn and ``python -m backend.loop.worker``.

Used by the end-to-end suite (``tests/e2e/test_full_loop.py``) and the demo (``scripts/demo.py``).
Each process runs in its own session (process group) with its output in a log file, so ``stop()``
ends it and its children even when a test fails, and error messages can quote the log.

Usage::

    env = backend_env(ls_url, token, model_dir, redis_url=redis_url, MTAL_NET_CONFIG="tiny")
    with start_backend(env, workdir) as backend, start_worker(env, workdir) as worker:
        requests.get(f"{backend.url}/health")
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support._proc import die_with_parent, free_port, stop_process_group

__all__ = ["ManagedProcess", "ProcessStartError", "backend_env", "start_backend", "start_worker", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ProcessStartError(RuntimeError):
    """A process exited or did not become ready in time (the message quotes its log)."""


@dataclass
class ManagedProcess:
    """A child process in its own process group, logging to ``log_path``; ``url`` for servers."""

    name: str
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    url: str | None = None

    @classmethod
    def spawn(cls, name: str, args: list[str], env: Mapping[str, str], log_path: Path) -> ManagedProcess:
        """Start ``args`` in the repository root with ``env`` (added to os.environ), output to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env}
        full_env.pop("VIRTUAL_ENV", None)
        log = open(log_path, "wb")  # noqa: SIM115 - the child keeps its own copy
        proc = subprocess.Popen(die_with_parent(args), cwd=REPO_ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return cls(name, log_path, proc)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of the process's output."""
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> ManagedProcess:
        """Poll ``ready()`` until it is true; stop the process and raise ProcessStartError (quoting the
        log) if it exits first or ``timeout`` s pass. Returns self."""
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if not self.alive():
                    raise ProcessStartError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise ProcessStartError(f"{self.name}: {what} not within {timeout} s: {self.log_tail()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s."""
        stop_process_group(self.process)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def backend_env(ls_url: str, token: str, model_dir: Path, *, redis_url: str | None = None,
                cache_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for the backend and its workers (see docs/backend.md); ``extra`` adds MTAL_* etc."""
    env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(model_dir),
           "REDIS_URL": redis_url or ""}
    if cache_dir is not None:
        env["MTAL_CACHE_DIR"] = str(cache_dir)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _bin(name: str) -> str:
    """An executable of the interpreter's venv (``.venv/bin/gunicorn``), else whatever is on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start_backend(env: Mapping[str, str], workdir: Path, port: int | None = None,
                  timeout: float = 120.0, app: str = "backend.web.wsgi:app") -> ManagedProcess:
    """``gunicorn -c backend/web/gunicorn.conf.py <app>`` on ``port`` (free one by default); returns once
    ``GET /health`` answers ``{"status": "UP"}``. ``app`` other than the backend: benchmarks' baselines.

    Raises:
        ProcessStartError: gunicorn exited or /health did not answer within ``timeout`` s.
    """
    port = port or free_port()
    args = [_bin("gunicorn"), "-c", "backend/web/gunicorn.conf.py", app]
    name = "backend" if app == "backend.web.wsgi:app" else app.split(":")[0].rsplit(".", 1)[-1]
    proc = ManagedProcess.spawn(name, args, {**env, "PORT": str(port)}, Path(workdir) / f"{name}.log")
    proc.url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            r = requests.get(f"{proc.url}/health", timeout=2)
            return r.ok and r.json().get("status") == "UP"
        except requests.RequestException:
            return False

    return proc.wait_until(up, "/health UP", timeout)


def start_worker(env: Mapping[str, str], workdir: Path, name: str = "mtal-e2e-worker",
                 timeout: float = 60.0, prefix: list[str] | None = None) -> ManagedProcess:
    """``python -m backend.loop.worker --name <name>`` on ``env["REDIS_URL"]``; returns once the worker has
    registered itself in Redis (so a job enqueued now will be picked up). ``prefix``: a command that runs
    it (``prlimit --fsize=N --``).

    Raises:
        ValueError: ``env`` has no REDIS_URL.
        ProcessStartError: the worker exited or did not register within ``timeout`` s.
    """
    import redis
    from rq import Worker

    if not env.get("REDIS_URL"):
        raise ValueError("env: REDIS_URL is required for a separate worker")
    args = [*(prefix or []), sys.executable, "-m", "backend.loop.worker", "--name", name]
    proc = ManagedProcess.spawn("worker", args, env, Path(workdir) / f"{name}.log")
    conn = redis.Redis.from_url(env["REDIS_URL"])
    try:
        return proc.wait_until(lambda: any(w.name == name for w in Worker.all(connection=conn)),
                               "registration in Redis", timeout)
    finally:
        conn.close()
