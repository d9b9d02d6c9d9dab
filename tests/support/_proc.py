"""Small process helpers shared by the service starters: free ports and process-group shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

__all__ = ["die_with_parent", "free_port", "stop_process_group", "services_required"]


def die_with_parent(args: list[str]) -> list[str]:
    """``args`` prefixed so the service gets SIGTERM if the test process dies without its teardown
    (a crash or a kill): util-linux ``setpriv --pdeathsig``, when present; else ``args`` unchanged."""
    import shutil

    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *args] if setpriv else list(args)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process started with ``start_new_session=True`` and all its children.

    Sends SIGTERM to the group, waits up to ``timeout`` seconds, then SIGKILL.
    """
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children may outlive the leader
    proc.wait(timeout=timeout)


def services_required() -> bool:
    """True when env ``MTAL_REQUIRE_SERVICES`` is set to a true value: missing services fail tests (CI)."""
    return os.environ.get("MTAL_REQUIRE_SERVICES", "").strip().lower() not in ("", "0", "false", "no")
