"""The model store: per-project versioned checkpoints with metadata and an atomic "current" pointer.

Layout under ``root`` (one directory per Label Studio project id)::

    <project>/CURRENT                 the current version name (one line)
    <project>/versions/<v>.pt          checkpoint (whatever training.checkpoint writes)
    <project>/versions/<v>.json        metadata: modalities, config hash, network, net config,
                                       normalisation constants, metrics, created, parent, number
    <project>/project.json             what /setup learnt (label config, its hash)
    <project>/ranking.json             the active-learning loop's scores per task id (optional)
    <project>/events.json              webhook event counts (recorded by MTALModel.fit)

Every file is written to a hidden temporary next to its target, fsynced, ``os.replace``d and the
directory fsynced: a crashed writer leaves either the old or the new file, never half of one, and
``CURRENT`` is switched only after the version's files are complete. Writers of one project take an
``fcntl`` lock, so a server and RQ workers in other processes can publish safely.

Readers call :meth:`ModelStore.load_model` per request: one ``os.stat`` of ``CURRENT`` decides
whether the cached network is still current, so a new version is picked up without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtal_models.atomic import atomic_write

__all__ = ["LoadedModel", "ModelStore", "StoreError", "atomic_write_bytes", "atomic_write_json", "version_number"]

log = logging.getLogger(__name__)
_PROJECT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # always fullmatch: "$" lets "7\n" through
_VERSION_RE = re.compile(r"mtal-(?P<project>[A-Za-z0-9_-]+)-v(?P<n>[0-9]+)-(?P<hash>[0-9a-f]{8})")

# (checkpoint path, device) -> network in eval mode
ModelLoader = Callable[[Path, str], torch.nn.Module]


class StoreError(ValueError):
    """Bad project id, unknown version or unreadable store content."""


def version_number(name: str, project: str) -> int | None:
    """N of a version name ``mtal-<project>-v<N>-<hash8>`` of ``project``; None for any other name."""
    m = _VERSION_RE.fullmatch(name)
    return int(m["n"]) if m and m["project"] == project else None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`mtal_models.atomic.atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON variant of :func:`atomic_write_bytes` (UTF-8, non-ASCII kept)."""
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8"))


def _default_loader(path: Path, device: str) -> torch.nn.Module:
    from mtal_models.training.checkpoint import load_checkpoint

    model = load_checkpoint(path, map_location=device).model
    return model.to(device).eval()


@dataclass
class LoadedModel:
    """A network loaded from the store, with the version and metadata it came from."""

    model: torch.nn.Module
    version: str
    metadata: dict[str, Any]


@dataclass
class _CacheEntry:
    stamp: tuple[int, int, int]
    loaded: LoadedModel


class ModelStore:
    """Versioned checkpoints per project under ``root`` (see the module docstring).

    ``loader(path, device)`` turns a checkpoint file into a network (default:
    :func:`mtal_models.training.checkpoint.load_checkpoint`); tests may pass their own.
    """

    def __init__(self, root: str | Path, device: str = "cpu", loader: ModelLoader | None = None) -> None:
        self.root = Path(root)
        self.device = device
        self._loader = loader or _default_loader
        self._cache: dict[str, _CacheEntry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._json_cache: dict[tuple[str, str], tuple[tuple[int, int, int], dict[str, Any]]] = {}

    # ---- paths ---------------------------------------------------------------------------------
    def project_dir(self, project: str, create: bool = False) -> Path:
        """``root/<project>``; ``project`` must be 1-64 of ``[A-Za-z0-9_-]`` (no path tricks)."""
        project = str(project)
        if not _PROJECT_RE.fullmatch(project):
            raise StoreError(f"project id must be 1-64 letters, digits, '_' or '-', got {project!r}")
        path = self.root / project
        if create:
            (path / "versions").mkdir(parents=True, exist_ok=True)
        return path

    def tmp_dir(self, project: str) -> Path:
        """A directory on the store's file system for writers to save checkpoints before publishing."""
        path = self.project_dir(project, create=True) / "tmp"
        path.mkdir(exist_ok=True)
        return path

    def remove_leftovers(self, project: str, min_age_s: float = 3600.0) -> list[Path]:
        """Delete what a killed writer left behind: ``tmp/train-*.pt`` (a training run saves there before
        publishing; runs of a project never overlap), ``versions/.ckpt.*.tmp`` and other hidden
        ``.*.tmp`` files (only written under the write lock, which this holds), and anything else in
        ``tmp/`` older than ``min_age_s``. Returns the removed paths."""
        removed: list[Path] = []
        now = time.time()
        with self._write_lock(project) as pdir:
            candidates = [*pdir.glob("versions/.*.tmp"), *pdir.glob(".*.tmp"), *pdir.glob("tmp/train-*.pt")]
            candidates += [p for p in pdir.glob("tmp/*") if p.is_file() and now - p.stat().st_mtime > min_age_s]
            for path in sorted(set(candidates)):
                try:
                    path.unlink()
                    removed.append(path)
                except OSError as e:
                    log.warning("store: cannot remove leftover %s: %s", path, e)
        if removed:
            log.info("store: project %s: removed %d leftover temporary files", project, len(removed))
        return removed

    @contextmanager
    def _write_lock(self, project: str) -> Iterator[Path]:
        pdir = self.project_dir(project, create=True)
        with open(pdir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield pdir
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _thread_lock(self, project: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(project, threading.Lock())

    # ---- reading -------------------------------------------------------------------------------
    def projects(self) -> list[str]:
        """Project ids that have a current version."""
        if not self.root.is_dir():
            return []
        dirs = self.root.iterdir()
        return sorted(p.name for p in dirs if _PROJECT_RE.fullmatch(p.name) and (p / "CURRENT").is_file())

    def current(self, project: str) -> str | None:
        """The current version of ``project``, or None before its first version."""
        try:
            version = (self.project_dir(project) / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return version or None

    def metadata(self, project: str, version: str | None = None) -> dict[str, Any]:
        """Metadata of ``version`` (default: the current one)."""
        version = version or self.current(project)
        if version is None:
            raise StoreError(f"project {project!r} has no model version yet")
        path = self.project_dir(project) / "versions" / f"{version}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"project {project!r}: unknown version {version!r}") from None

    def checkpoint_path(self, project: str, version: str | None = None) -> Path:
        version = version or self.current(project)
        if version is None:
            raise StoreError(f"project {project!r} has no model version yet")
        return self.project_dir(project) / "versions" / f"{version}.pt"

    def list_versions(self, project: str) -> list[dict[str, Any]]:
        """Metadata of every complete version of ``project``, oldest first, with a ``current`` flag."""
        vdir = self.project_dir(project) / "versions"
        if not vdir.is_dir():
            return []
        current = self.current(project)
        out = []
        for meta_path in vdir.glob("mtal-*.json"):
            if not (vdir / f"{meta_path.stem}.pt").is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("store: unreadable metadata %s", meta_path)
                continue
            meta["current"] = meta.get("version") == current
            out.append(meta)
        return sorted(out, key=lambda m: int(m.get("number", 0)))

    # ---- writing -------------------------------------------------------------------------------
    def publish(self, project: str, checkpoint: str | Path, metadata: dict[str, Any], move: bool = False,
                check: Callable[[], None] | None = None, make_current: bool = True) -> str:
        """Add ``checkpoint`` as the next version of ``project`` and make it current (``make_current=False``:
        a candidate, stored and listed while the current version stays).

        metadata: JSON-able dict (modalities, config_hash, network, net_config, normalization,
        metrics, ...); ``version``, ``number``, ``parent``, ``created`` and ``checkpoint_sha256`` are
        filled in. ``move=True`` renames the file into the store (it must be on the same file
        system, e.g. under :meth:`tmp_dir`) instead of copying it. ``check()`` runs under the write lock
        before anything is written; what it raises stops the publication. Returns the version name
        ``mtal-<project>-v<N>-<hash8>``.
        """
        src = Path(checkpoint)
        if not src.is_file():
            raise StoreError(f"publish: checkpoint {str(src)!r} does not exist")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as e:
            raise StoreError(f"publish: metadata is not JSON-serialisable: {e}") from None
        digest = _sha256(src)
        with self._write_lock(project) as pdir:
            if check is not None:
                check()
            vdir = pdir / "versions"
            numbers = [int(m["n"]) for p in vdir.glob("mtal-*.json") if (m := _VERSION_RE.fullmatch(p.stem))]
            number = max(numbers, default=0) + 1
            version = f"mtal-{project}-v{number}-{digest[:8]}"
            parent = self.current(project)
            fd, tmp = tempfile.mkstemp(prefix=".ckpt.", suffix=".tmp", dir=vdir)
            os.close(fd)
            try:
                if move:
                    os.replace(src, tmp)
                else:
                    shutil.copyfile(src, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, vdir / f"{version}.pt")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            meta = dict(metadata)
            meta.update(
                version=version,
                number=number,
                parent=parent,
                created=time.time(),
                checkpoint_sha256=digest,
                project=str(project),
            )
            atomic_write_json(vdir / f"{version}.json", meta)
            if make_current:
                atomic_write_bytes(pdir / "CURRENT", f"{version}\n".encode())
        log.info("store: project %s %s %s (parent %s)", project, "now at" if make_current else "candidate", version,
                 parent)
        return version

    def set_current(self, project: str, version: str) -> None:
        """Point ``project`` at an existing ``version`` (rollback)."""
        with self._write_lock(project) as pdir:
            if not (pdir / "versions" / f"{version}.pt").is_file():
                raise StoreError(f"project {project!r}: unknown version {version!r}")
            atomic_write_bytes(pdir / "CURRENT", f"{version}\n".encode())

    # ---- loading (cached, reload on change) ----------------------------------------------------
    def _stamp(self, project: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.project_dir(project) / "CURRENT")
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load_model(self, project: str) -> LoadedModel:
        """The current network of ``project``, cached; reloaded when ``CURRENT`` changed on disk."""
        stamp = self._stamp(project)
        if stamp is None:
            raise StoreError(f"project {project!r} has no model version yet")
        entry = self._cache.get(project)
        if entry is not None and entry.stamp == stamp:
            return entry.loaded
        with self._thread_lock(project):
            entry = self._cache.get(project)
            stamp = self._stamp(project)
            if entry is not None and entry.stamp == stamp:
                return entry.loaded
            version = self.current(project)
            if entry is not None and entry.loaded.version == version:  # touched, same version
                self._cache[project] = _CacheEntry(stamp, entry.loaded)  # type: ignore[arg-type]
                return entry.loaded
            meta = self.metadata(project, version)
            model = self._loader(self.checkpoint_path(project, version), self.device)
            loaded = LoadedModel(model, version, meta)  # type: ignore[arg-type]
            self._cache[project] = _CacheEntry(stamp, loaded)  # type: ignore[arg-type]
            log.info("store: loaded %s for project %s", version, project)
            return loaded

    # ---- small per-project records -------------------------------------------------------------
    def _read_json(self, project: str, name: str, default: Any) -> Any:
        try:
            return json.loads((self.project_dir(project) / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except ValueError:
            log.error("store: %s of project %s is not valid JSON; ignoring it", name, project)
            return default

    def project_info(self, project: str) -> dict[str, Any]:
        """What /setup stored for ``project`` ({} if nothing). Cached until the file changes (it is
        read on every webhook)."""
        return self._read_json_cached(project, "project.json")

    def save_project_info(self, project: str, info: dict[str, Any]) -> None:
        with self._write_lock(project) as pdir:
            atomic_write_json(pdir / "project.json", info)

    def ranking(self, project: str) -> dict[str, Any]:
        """The loop's ranking: {"model_version": str, "tasks": {task_id: {"score": float,
        "requested": [modality, ...], "certainty": float, "strategy_score": float | None}}, ...} ({} if
        none; rankings stored before issue #32 lack the last two). Cached until the file changes."""
        return self._read_json_cached(project, "ranking.json")

    def _read_json_cached(self, project: str, name: str) -> dict[str, Any]:
        """A small per-project JSON file, re-read only when its (inode, mtime, size) changed."""
        try:
            st = os.stat(self.project_dir(project) / name)
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._json_cache.get((project, name))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data = self._read_json(project, name, {})
        self._json_cache[(project, name)] = (stamp, data)
        return data

    def save_ranking(self, project: str, ranking: dict[str, Any]) -> None:
        with self._write_lock(project) as pdir:
            atomic_write_json(pdir / "ranking.json", ranking)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
