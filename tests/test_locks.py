"""The locks agree with the hand-kept pins, and the Label Studio venv's stamp follows its lock.

Three pairs, each made by ``make lock`` (pip-tools' pip-compile):
  requirements.in -> requirements.txt (runtime: the images), requirements-dev.in -> requirements-dev.txt
  (the backend's .venv), requirements-labelstudio.in -> requirements-labelstudio.txt (Label Studio's venv).
A hand-kept pin edited without ``make lock`` (or a lock edited by hand) fails here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt"),
         ("requirements-labelstudio.in", "requirements-labelstudio.txt")]
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def hand_pins(path: Path) -> list[Requirement]:
    """Requirements of a ``*.in`` file, following ``-r`` includes (``-c`` constraints are not pins)."""
    reqs: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("-c "):
            continue
        if line.startswith("-r "):
            reqs += hand_pins(path.parent / line[3:].strip())
            continue
        reqs.append(Requirement(line))
    return reqs


def lock_entries(path: Path) -> dict[str, tuple[str, int]]:
    """Canonical name -> (exact version, number of hashes) of every package in a pip-compile lock."""
    found: dict[str, tuple[str, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = _ENTRY.match(line)
        if m:
            name = canonicalize_name(m.group(1))
            assert name not in found, f"{path.name}: {name} twice"
            found[name] = (m.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and name is not None:
            version, n = found[name]
            found[name] = (version, n + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{path.name}: not an exact pin: {line!r}")
    return found


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_every_hand_pin_is_met_by_its_lock(source: str, lock: str) -> None:
    entries = lock_entries(ROOT / lock)
    for req in hand_pins(ROOT / source):
        name = canonicalize_name(req.name)
        assert name in entries, f"{source} asks for {req}, {lock} lacks it: run `make lock`"
        version, _ = entries[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{source} asks for {req}, {lock} holds {name}=={version}: run `make lock`"
        )


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_every_locked_package_is_exact_and_hashed(source: str, lock: str) -> None:
    entries = lock_entries(ROOT / lock)
    assert len(entries) > len(hand_pins(ROOT / source)), "the lock holds the transitive packages too"
    assert not [n for n, (_, hashes) in entries.items() if hashes == 0], "every package needs a hash"
    assert f"-o {lock} {source}" in (ROOT / lock).read_text() or "make lock" in (ROOT / lock).read_text()


def test_dev_lock_holds_the_runtime_lock_exactly() -> None:
    runtime = lock_entries(ROOT / "requirements.txt")
    dev = lock_entries(ROOT / "requirements-dev.txt")
    differ = {n: (v, dev.get(n, ("missing",))[0]) for n, (v, _) in runtime.items() if dev.get(n, (None,))[0] != v}
    assert not differ, f"runtime lock vs dev lock (runtime, dev): {differ}"


def test_label_studio_lock_keeps_sentry_below_3() -> None:
    # Label Studio 1.23 passes send_default_pii to sentry_sdk.init; sentry-sdk 3.0 removed it.
    version, _ = lock_entries(ROOT / "requirements-labelstudio.txt")["sentry-sdk"]
    assert int(version.split(".")[0]) < 3


def _stamp(lock: Path, venv: Path) -> str:
    env = {**os.environ, "MTAL_LS_LOCK": str(lock), "MTAL_LS_VENV": str(venv)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "ls_venv.sh"), "--stamp"], env=env, check=True,
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_label_studio_venv_stamp_follows_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "requirements-labelstudio.txt"
    shutil.copy(ROOT / "requirements-labelstudio.txt", lock)
    before = _stamp(lock, tmp_path / "venv")
    assert before.startswith(".mtal-label-studio-1.23.2-py3.")
    assert _stamp(lock, tmp_path / "venv") == before  # same lock, same stamp: the cached venv is kept
    lock.write_text(lock.read_text().replace("sentry-sdk==", "sentry-sdk===", 1))
    assert _stamp(lock, tmp_path / "venv") != before  # any edit of the lock rebuilds the venv


def test_a_stale_label_studio_venv_is_rebuilt(tmp_path: Path) -> None:
    """A venv whose stamp names another lock is removed before the install (no old package survives).

    The install itself is cut short by a lock that pins nothing installable, so no network is needed:
    the stale venv must be gone and the script must fail, not print the stale venv's path."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "label-studio").write_text("#!/bin/sh\n")
    (venv / "bin" / "label-studio").chmod(0o755)
    (venv / ".mtal-label-studio-1.23.2-py3.11-lock-0000000000000000").touch()
    (venv / "leftover-from-old-lock").touch()
    lock = tmp_path / "lock.txt"
    lock.write_text("label-studio==1.23.2 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    env = {**os.environ, "MTAL_LS_LOCK": str(lock), "MTAL_LS_VENV": str(venv), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ls_venv.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert "does not match" in proc.stderr
    assert not (venv / "leftover-from-old-lock").exists()
    assert proc.returncode != 0 and str(venv) not in proc.stdout


def _lock_without():
    spec = importlib.util.spec_from_file_location("lock_without", ROOT / "scripts" / "lock_without.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_image_lock_leaves_out_the_cuda_build_only() -> None:
    text = (ROOT / "requirements.txt").read_text()
    cpu = _lock_without().without(text, ["torch", "torchvision", "triton", "nvidia-*", "cuda-*"])
    full = lock_entries(ROOT / "requirements.txt")
    tmp = {canonicalize_name(m.group(1)): m.group(2) for m in map(_ENTRY.match, cpu.splitlines()) if m}
    gone = set(full) - set(tmp)
    assert {"torch", "torchvision"} <= gone
    assert all(n in {"torch", "torchvision", "triton"} or n.startswith(("nvidia-", "cuda-")) for n in gone)
    assert "torchmetrics" in tmp and cpu.count("--hash=sha256:") > 100


@pytest.mark.parametrize("name", ["Dockerfile.backend", "Dockerfile.worker"])
def test_images_install_from_the_runtime_lock(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    assert "--require-hashes" in text and "requirements.txt" in text
    assert "requirements.in" not in text  # the hand-kept pins are not what an image installs
    ignore = (ROOT / "docker" / f"{name}.dockerignore").read_text().splitlines()
    assert "!requirements.txt" in ignore
