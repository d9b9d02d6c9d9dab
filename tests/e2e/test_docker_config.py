"""docker/: the compose file is valid for the docker client (when compose is installed) and wires the
services the way the backend expects. No docker engine is needed: ``config`` only parses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "docker-compose.yml"
SECRETS = {"MTAL_LS_TOKEN": "t" * 40, "MTAL_LS_PASSWORD": "p" * 12, "MTAL_BASIC_AUTH_USER": "ls",
           "MTAL_BASIC_AUTH_PASS": "b" * 12}


def _compose_cmd() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1), whichever works, else None."""
    if shutil.which("docker"):
        ok = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
        if ok:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        ok = subprocess.run(["docker-compose", "version"], capture_output=True, timeout=30).returncode == 0
        if ok:
            return ["docker-compose"]
    return None


def test_compose_config_is_valid() -> None:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, **SECRETS}
    proc = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    bare = {k: v for k, v in os.environ.items() if not k.startswith("MTAL_")}
    refused = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=bare)
    assert refused.returncode != 0 and "MTAL_" in refused.stderr  # no defaults for secrets
    for service in ("label-studio", "redis", "backend", "worker"):
        assert f"{service}:" in proc.stdout


def test_compose_wiring() -> None:
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"label-studio", "redis", "backend", "worker"}
    ls_env = services["label-studio"]["environment"]
    for key in ("ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED"):
        assert ls_env[key] == "false", key
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:1.23.")
    # The backend and the worker share the token LS creates, the queue and the model volume.
    for name in ("backend", "worker"):
        env = services[name]["environment"]
        assert env["LABEL_STUDIO_API_KEY"] == ls_env["LABEL_STUDIO_USER_TOKEN"], name
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080", name
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        assert "models:/models" in services[name]["volumes"], name
        assert (ROOT / services[name]["build"]["dockerfile"]).is_file(), name
    (gpu,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"


@pytest.mark.parametrize(("name", "command"), [
    ("Dockerfile.backend", '["gunicorn", "-c", "backend/web/gunicorn.conf.py", "backend.web.wsgi:app"]'),
    ("Dockerfile.worker", '["python", "-m", "backend.loop.worker"]'),
])
def test_dockerfiles_run_as_non_root(name: str, command: str) -> None:
    lines = [ln.strip() for ln in (ROOT / "docker" / name).read_text().splitlines()]
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] != "USER root"
    assert lines[[i for i, ln in enumerate(lines) if ln.startswith("CMD ")][-1]] == f"CMD {command}"
    for path in ("backend/web/gunicorn.conf.py", "backend/web/wsgi.py", "backend/loop/worker.py"):
        assert (ROOT / path).is_file(), path


def test_compose_defaults_are_closed() -> None:
    """No default secrets, basic auth required, ports on loopback unless MTAL_BIND says otherwise."""
    yaml = pytest.importorskip("yaml")
    text = COMPOSE.read_text()
    spec = yaml.safe_load(text)
    services = spec["services"]
    secrets = ("MTAL_LS_TOKEN", "MTAL_LS_PASSWORD", "MTAL_BASIC_AUTH_USER", "MTAL_BASIC_AUTH_PASS")
    for name in secrets:  # every use is ${NAME:?...}: required, never a default
        uses = re.findall(r"\$\{" + name + r"(:?[-?])", text)
        assert uses and set(uses) == {":?"}, name
    env = services["backend"]["environment"]
    assert "MTAL_BASIC_AUTH_USER" in env["BASIC_AUTH_USER"] and "MTAL_BASIC_AUTH_PASS" in env["BASIC_AUTH_PASS"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("${MTAL_BIND:-127.0.0.1}:"), (name, port)
