"""Start a real Label Studio server (from its own cached virtualenv) for tests and demos.

The venv is made by ``scripts/ls_venv.sh`` at ``${MTAL_LS_VENV:-~/.cache/mtal/ls-venv}``.
The first start on a machine runs LS's migrations (~30 s on 2 cores); afterwards the migrated SQLite
database is kept as a template in ``~/.cache/mtal/ls-db-template/`` (keyed by LS version) and copied
into each new data dir, which brings a start down to a few seconds. Set ``MTAL_LS_NO_TEMPLATE=1`` to
start from an empty database.

Usage::

    with LabelStudioServer.start(tmp_dir) as ls:
        requests.get(f"{ls.url}/api/projects/", headers={"Authorization": f"Token {ls.token}"})
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support._proc import die_with_parent, free_port, stop_process_group

__all__ = [
    "LabelStudioServer",
    "LabelStudioStartError",
    "ls_venv_path",
    "ls_executable",
    "ls_version",
    "template_path",
    "DEFAULT_USERNAME",
    "DEFAULT_PASSWORD",
    "DEFAULT_TOKEN",
]

DEFAULT_USERNAME = "mtal@example.com"
DEFAULT_PASSWORD = "mtal-test-password"
DEFAULT_TOKEN = "mtal0test0legacy0token0000000000000000000"  # legacy token: any string longer than 5 chars
_PORT_LINE = re.compile(rb"Starting development server at https?://[^:/]+:(\d+)/")
_DB_NAME = "label_studio.sqlite3"


class LabelStudioStartError(RuntimeError):
    """Label Studio did not start, or did not accept the token, in time."""


def ls_venv_path() -> Path:
    """The Label Studio virtualenv: env ``MTAL_LS_VENV`` or ``~/.cache/mtal/ls-venv``."""
    return Path(os.environ.get("MTAL_LS_VENV", Path.home() / ".cache" / "mtal" / "ls-venv")).expanduser()


def ls_executable() -> Path | None:
    """The ``label-studio`` entry point in the venv, or None when the venv is missing (run scripts/ls_venv.sh)."""
    exe = ls_venv_path() / "bin" / "label-studio"
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


def ls_version() -> str | None:
    """Installed Label Studio version read from the venv's dist-info (no subprocess), or None."""
    for info in sorted(ls_venv_path().glob("lib/python*/site-packages/label_studio-*.dist-info")):
        return info.name[len("label_studio-"): -len(".dist-info")]
    return None


def template_path(version: str) -> Path:
    """Where the migrated DB template for LS ``version`` lives (env ``MTAL_LS_TEMPLATE_DIR`` overrides the dir)."""
    root = Path(os.environ.get("MTAL_LS_TEMPLATE_DIR", Path.home() / ".cache" / "mtal" / "ls-db-template"))
    return root.expanduser() / f"label_studio-{version}.sqlite3"


def _ls_env(data_dir: Path, files_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"):  # never leak ours into LS
        env.pop(key, None)
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "LATEST_VERSION_CHECK": "false",  # else every start asks pypi.org
        "COLLECT_ANALYTICS": "false",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    })
    return env


@dataclass
class LabelStudioServer:
    """A running Label Studio. ``files_root`` is LOCAL_FILES_DOCUMENT_ROOT: a file ``files_root/a.png``
    is served at ``/data/local-files/?d=a.png`` (with the token)."""

    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    files_root: Path
    startup_s: float
    used_template: bool
    process: subprocess.Popen = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """Authorization header for the legacy token."""
        return {"Authorization": f"Token {self.token}"}

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        token: str = DEFAULT_TOKEN,
        port: int | None = None,
        timeout: float = 240.0,
        use_template: bool | None = None,
    ) -> LabelStudioServer:
        """Start LS with its own data dir and wait for ``/health`` and an authenticated API call.

        Raises:
            LabelStudioStartError: venv missing, process exited, or not ready within ``timeout`` s
                (the message carries the end of LS's log).
        """
        exe = ls_executable()
        if exe is None:
            raise LabelStudioStartError(f"no Label Studio venv at {ls_venv_path()}; run scripts/ls_venv.sh")
        if len(token) <= 5:
            raise ValueError("token: Label Studio ignores --user-token of 5 characters or fewer")
        if use_template is None:
            use_template = os.environ.get("MTAL_LS_NO_TEMPLATE", "") in ("", "0", "false")
        data_dir = Path(data_dir).resolve()
        files_root = data_dir / "local-files"
        files_root.mkdir(parents=True, exist_ok=True)
        version = ls_version() or "unknown"
        template = template_path(version)
        used_template = use_template and template.is_file()
        if used_template:
            shutil.copyfile(template, data_dir / _DB_NAME)

        port = port or free_port()
        log_path = data_dir / "label_studio.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child keeps its own copy
        args = [str(exe), "start", "--no-browser", "--port", str(port), "--username", username,
                "--password", password, "--user-token", token]
        t0 = time.monotonic()
        proc = subprocess.Popen(die_with_parent(args), cwd=data_dir, env=_ls_env(data_dir, files_root), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        server = cls(url=f"http://127.0.0.1:{port}", token=token, username=username, password=password,
                     data_dir=data_dir, files_root=files_root, startup_s=0.0, used_template=used_template,
                     process=proc)
        try:
            server._wait_ready(log_path, t0 + timeout)
        except BaseException:
            server.stop()
            raise
        server.startup_s = time.monotonic() - t0
        if use_template and not used_template:
            _save_template(data_dir / _DB_NAME, template)
        return server

    def _wait_ready(self, log_path: Path, deadline: float) -> None:
        session = requests.Session()
        while True:
            if self.process.poll() is not None:
                raise LabelStudioStartError(f"label-studio exited with {self.process.returncode}: {self.log_tail()}")
            # LS silently moves to another port when the requested one is busy: follow its log.
            found = _PORT_LINE.search(log_path.read_bytes())
            if found:
                self.url = f"http://127.0.0.1:{int(found.group(1))}"
                try:
                    if session.get(f"{self.url}/health", timeout=2).ok:
                        who = session.get(f"{self.url}/api/current-user/whoami", headers=self.headers, timeout=10)
                        if who.ok and who.json().get("email") == self.username:
                            return
                        raise LabelStudioStartError(f"token rejected ({who.status_code}): {who.text[:300]}")
                except (requests.ConnectionError, requests.Timeout):  # a loaded machine answers late
                    pass
            if time.monotonic() > deadline:
                raise LabelStudioStartError(f"Label Studio not ready in time: {self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of LS's log."""
        path = self.data_dir / "label_studio.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        """Stop LS (the whole process group: runserver may have children)."""
        stop_process_group(self.process)

    def __enter__(self) -> LabelStudioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _save_template(db: Path, template: Path) -> None:
    """Copy a freshly migrated DB to ``template`` with SQLite's backup API, atomically (tmp + rename)."""
    if not db.is_file():
        return
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(tmp)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.replace(tmp, template)
