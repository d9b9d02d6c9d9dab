"""The project's pool of unlabelled images, fetched and decoded once, cached on disk, streamed back.

One cache per project, shared by the jobs that learn from unlabelled images: the train job's
semi-supervised term (issue #30), the cold-start pretrain (issue #25) and the rank job, which may read
an image by task id instead of fetching it again.

Selection (:func:`pool_tasks`): the pool is the tasks that have **no usable label at all** when the run
starts: no non-cancelled annotation with a non-empty ``result`` (for task listings without
``annotations``: ``total_annotations == 0``) and no dense ground-truth field of the schema in their data.
A task labelled for one modality only is not in the pool (per-modality pools are left for later: the
simple rule never trains on a human label as "unlabelled"). When the pool holds more than
``max_images`` tasks, a random subset is kept: the tasks with the smallest ``sha256(seed:task id)``,
so the same seed keeps the same tasks while the project grows (a new task displaces at most one).

Layout under ``<MODEL_DIR>/<project>/pool/``::

    t<task id>-<sha256(url)[:16]>-<size>x<max_size>.npz   image uint8 [h, w, 3] (resized, unpadded)
                                                          and fit int64 [6] (the Fit's fields)
    status.json                                           the last fill's counts (/status "pool")
    .lock                                                 held by a filling process (fcntl)

The key holds the task, its image URL and the geometry's size settings: a changed image URL or
``MTAL_IMAGE_SIZE`` / ``MTAL_IMAGE_MAX_SIZE`` fetches again. Every file is written to a hidden
temporary and renamed (:func:`mtal_models.atomic.atomic_write`): readers see a whole entry or none.
A fill holds an exclusive ``fcntl`` lock for its fetching, so a second process filling the same pool
waits and then finds the images on disk (fetched once); past ``lock_timeout_s`` it goes on without
the lock (still safe: renames are atomic, both write the same bytes).

Bounds: ``max_images`` (``MTAL_POOL_MAX_IMAGES``) and ``max_bytes`` (``MTAL_POOL_MAX_MB``). A fill first
prunes entries outside its selection that were not used for ``prune_grace_s`` (a concurrent job may
still read them), then, while the pool is over ``max_bytes``, outside entries oldest first; it stops
storing new images at ``max_bytes`` (the rest are counted as ``over_bound``). Failures (no image URL,
download, refused URL, decode, too large) are skipped, logged with the task id and counted by reason.

Reading (the streaming :class:`PoolDataset`, one entry, ``/status``): :mod:`backend.serving.pool_dataset`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import latest_annotation
from backend.serving.pool_dataset import (
    FIT_FIELDS,
    PROJECT_RE,
    PoolDataset,
    PooledFetcher,
    entry_readable,
    load_entry,
    pool_status,
)
from backend.serving.store import atomic_write_json
from mtal_models.atomic import atomic_write
from mtal_models.data.geometry import Fit

__all__ = ["PoolCache", "PoolDataset", "PoolFill", "PooledFetcher", "pool_status", "pool_tasks"]

log = logging.getLogger(__name__)
_ENTRY_RE = re.compile(r"t(?P<task>[0-9]+)-[0-9a-f]{16}-[0-9]+x[0-9]+\.npz")
_EXAMPLES = 10  # failed tasks listed by id in status.json


class FittedFetcher(Protocol):
    """What the pool needs of :class:`backend.labelstudio.images.ImageFetcher`."""

    def fetch_fitted(self, url: str, task_id: int | None,
                     fit_for: Callable[[int, int], Fit]) -> tuple[np.ndarray, Fit]: ...


@dataclass
class PoolFill:
    """Counts of one fill (also written to ``status.json`` and shown in ``/status`` as ``pool``).

    tasks: tasks given; labelled: left out as labelled; pool: tasks without a label; selected: the
    subset kept (at most ``max_images``); cached: selected and already on disk; fetched: fetched now;
    failed: skipped for a failure, by reason in ``failures``, the first few in ``failed_examples``
    ({"task", "reason"}); over_bound: selected but not stored because the pool reached ``max_bytes``;
    images: usable entries (cached + fetched); bytes: the pool's files on disk after the fill."""

    tasks: int = 0
    labelled: int = 0
    pool: int = 0
    selected: int = 0
    cached: int = 0
    fetched: int = 0
    failed: int = 0
    over_bound: int = 0
    images: int = 0
    bytes: int = 0
    pruned: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failed_examples: list[dict[str, Any]] = field(default_factory=list)
    image_size: int = 0
    image_max_size: int = 0
    seed: int = 0
    started: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool_tasks(tasks: Iterable[Mapping[str, Any]], schema: ProjectSchema) -> list[Mapping[str, Any]]:
    """The tasks without any usable label (see the module docstring), in the order given."""
    dense_keys = [key for name, key in (schema.dense_fields or {}).items() if name in schema.modalities]
    out = []
    for task in tasks:
        if "annotations" in task:
            ann = latest_annotation(task)
            labelled = ann is not None and bool(ann["result"])
        else:  # a task_only listing: no annotation bodies, only the count of non-cancelled ones
            labelled = _int(task.get("total_annotations")) > 0
        data = task.get("data")
        if isinstance(data, Mapping) and any(isinstance(data.get(k), str) and data.get(k) for k in dense_keys):
            labelled = True
        if not labelled:
            out.append(task)
    return out


class PoolCache:
    """The unlabelled pool of one project under ``root/<project>/pool`` (see the module docstring).

    root: MODEL_DIR; fetcher: has ``fetch_fitted`` (:class:`~backend.labelstudio.images.ImageFetcher`);
    image_size / image_max_size: the geometry of the training (:meth:`Fit.for_size`; the longer side is
    capped at ``max(image_size, image_max_size)`` as :func:`backend.labelstudio.tasks.prepare_tasks` does);
    max_images >= 0 (0: no pool); max_bytes >= 1; threads: parallel fetches."""

    def __init__(self, root: Path | str, project: str, fetcher: FittedFetcher | None, *, image_size: int = 384,
                 image_max_size: int = 1024, max_images: int = 2000, max_bytes: int = 2048 * 1024**2,
                 prune_grace_s: float = 3600.0, lock_timeout_s: float = 900.0, threads: int = 8) -> None:
        project = str(project)
        if not PROJECT_RE.fullmatch(project):
            raise ValueError(f"project id must be 1-64 letters, digits, '_' or '-', got {project!r}")
        if image_size < 1 or max_images < 0 or max_bytes < 1 or threads < 1:
            raise ValueError(f"need image_size >= 1, max_images >= 0, max_bytes >= 1, threads >= 1; got "
                             f"{image_size}, {max_images}, {max_bytes}, {threads}")
        self.dir = Path(root) / project / "pool"
        self.project = project
        self.fetcher = fetcher
        self.size, self.max_size = int(image_size), max(int(image_size), int(image_max_size))
        self.max_images, self.max_bytes = int(max_images), int(max_bytes)
        self.prune_grace_s, self.lock_timeout_s, self.threads = float(prune_grace_s), float(lock_timeout_s), threads
        self._entries: list[tuple[int, Path]] = []  # (task id, file) of the last fill's usable images
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, project: str, fetcher: FittedFetcher | None) -> PoolCache:
        """The pool of ``project`` with MODEL_DIR, MTAL_IMAGE_SIZE, MTAL_IMAGE_MAX_SIZE, MTAL_POOL_MAX_IMAGES
        and MTAL_POOL_MAX_MB from ``settings`` (:class:`backend.settings.Settings`)."""
        return cls(settings.model_dir, project, fetcher, image_size=settings.image_size,
                   image_max_size=settings.image_max_size, max_images=settings.pool_max_images,
                   max_bytes=settings.pool_max_mb * 1024**2)

    # ---- keys ------------------------------------------------------------------------------------
    def path(self, task_id: int, url: str) -> Path:
        """The entry of ``task_id`` with image ``url`` at this cache's image size."""
        digest = hashlib.sha256(url.strip().encode("utf-8")).hexdigest()[:16]
        return self.dir / f"t{int(task_id)}-{digest}-{self.size}x{self.max_size}.npz"

    def fit_for(self, height: int, width: int) -> Fit:
        """The training's geometry of a ``height`` x ``width`` image."""
        return Fit.for_size(height, width, self.size, self.max_size)

    # ---- filling ---------------------------------------------------------------------------------
    def fill(self, tasks: Iterable[Mapping[str, Any]], schema: ProjectSchema, seed: int = 0,
             progress: Callable[[int, int], None] | None = None) -> PoolFill:
        """Select the pool from ``tasks`` (Label Studio task dicts: labelled ones are left out), fetch the
        images not on disk yet, prune, and write ``status.json``. Never raises for one image. Afterwards
        :meth:`dataset` streams the usable entries. ``progress(done, total)`` is called now and then."""
        started = time.time()
        tasks = list(tasks)
        pool = pool_tasks(tasks, schema)
        stats = PoolFill(tasks=len(tasks), labelled=len(tasks) - len(pool), pool=len(pool), seed=int(seed),
                         image_size=self.size, image_max_size=self.max_size, started=round(started, 3))
        chosen = _choose(pool, seed, self.max_images)
        stats.selected = len(chosen)
        failures: Counter[str] = Counter()
        wanted: dict[Path, tuple[int, str]] = {}
        for task in chosen:
            try:
                task_id, url = _task_url(task, schema)
            except ValueError as e:
                self._failed(stats, failures, task.get("id"), "no image URL", str(e))
                continue
            wanted[self.path(task_id, url)] = (task_id, url)
        self.dir.mkdir(parents=True, exist_ok=True)
        entries: list[tuple[int, Path]] = []
        with self._fill_lock():
            stats.pruned, used = self._prune(set(wanted))
            budget = _Budget(self.max_bytes, used)
            todo = []
            for path, (task_id, url) in wanted.items():
                if entry_readable(path):
                    with contextlib.suppress(OSError):
                        os.utime(path)  # in use: not pruned by another fill within the grace
                    stats.cached += 1
                    entries.append((task_id, path))
                else:
                    todo.append((path, task_id, url))
            if todo and self.fetcher is None:
                raise ValueError(f"project {self.project}: {len(todo)} pool images to fetch, but no fetcher given")
            done, chunk = 0, 4 * self.threads  # chunks: a progress callback that raises stops the fill soon
            with ThreadPoolExecutor(max_workers=self.threads) as ex:
                for start in range(0, len(todo), chunk):
                    part = todo[start:start + chunk]
                    for (path, task_id, _), outcome in zip(part, ex.map(lambda a: self._fetch(*a, budget), part),
                                                           strict=True):
                        if outcome is None:
                            stats.fetched += 1
                            entries.append((task_id, path))
                        elif outcome == "over_bound":
                            stats.over_bound += 1
                        else:
                            self._failed(stats, failures, task_id, *outcome)
                    done += len(part)
                    if progress is not None:
                        progress(done, len(todo))
        entries.sort(key=lambda e: e[0])
        with self._lock:
            self._entries = entries
        stats.images = len(entries)
        stats.failures = dict(sorted(failures.items()))
        stats.bytes = sum(size for _, size, _ in self._files())
        stats.seconds = round(time.time() - started, 3)
        log.info("project %s: pool of %d unlabelled tasks (%d labelled left out): %d images (%d cached, %d fetched), "
                 "%d failed %s, %d over the %d MB bound", self.project, stats.pool, stats.labelled, stats.images,
                 stats.cached, stats.fetched, stats.failed, stats.failures, stats.over_bound, self.max_bytes >> 20)
        try:
            atomic_write_json(self.dir / "status.json", stats.to_dict())
        except OSError as e:
            log.warning("project %s: pool status not written: %s", self.project, e)
        return stats

    def _fetch(self, path: Path, task_id: int, url: str, budget: _Budget) -> tuple[str, str] | str | None:
        """Fetch, decode and store one entry. None = stored; "over_bound"; or (reason, message)."""
        try:
            image, fit = self.fetcher.fetch_fitted(url, task_id, self.fit_for)  # type: ignore[union-attr]
            image = np.ascontiguousarray(np.asarray(image, np.uint8)[: fit.resized_height, : fit.resized_width])
            if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != fit.resized:
                raise ValueError(f"fetcher returned {image.shape}, expected {fit.resized} x 3")
        except Exception as e:  # one bad image never stops the fill
            return _reason(e), f"{type(e).__name__}: {e}"
        buf = io.BytesIO()
        np.savez(buf, image=image, fit=np.array([getattr(fit, f) for f in FIT_FIELDS], np.int64))
        del image
        data = buf.getbuffer()
        if not budget.take(len(data)):
            return "over_bound"
        try:
            atomic_write(path, lambda fh: fh.write(data))
        except OSError as e:
            budget.give(len(data))
            return "disk", f"{type(e).__name__}: {e}"
        return None

    def _failed(self, stats: PoolFill, failures: Counter[str], task_id: Any, reason: str, message: str) -> None:
        stats.failed += 1
        failures[reason] += 1
        if len(stats.failed_examples) < _EXAMPLES:
            stats.failed_examples.append({"task": task_id, "reason": message[:300]})
        log.warning("project %s: pool task %s skipped (%s): %s", self.project, task_id, reason, message)

    def _files(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry, oldest first."""
        out = []
        with contextlib.suppress(OSError):
            for p in self.dir.iterdir():
                if _ENTRY_RE.fullmatch(p.name):
                    with contextlib.suppress(OSError):
                        st = p.stat()
                        out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def _prune(self, keep: set[Path]) -> tuple[int, int]:
        """Delete entries outside ``keep`` idle for ``prune_grace_s``, then outside ones oldest first while
        over ``max_bytes``; and temporaries a killed writer left (an hour old). -> (removed, bytes left)."""
        now, removed = time.time(), 0
        files = self._files()
        total = sum(size for _, size, _ in files)
        for mtime, size, p in files:
            if p not in keep and (now - mtime > self.prune_grace_s or total > self.max_bytes):
                p.unlink(missing_ok=True)
                total -= size
                removed += 1
        with contextlib.suppress(OSError):
            for p in self.dir.glob(".t*.tmp"):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > 3600:
                        p.unlink()
        return removed, total

    @contextlib.contextmanager
    def _fill_lock(self) -> Any:
        """The exclusive lock of a fill (``.lock``), waited for at most ``lock_timeout_s``."""
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline, locked = time.monotonic() + self.lock_timeout_s, False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        log.warning("project %s: pool lock busy for %g s; filling without it", self.project,
                                    self.lock_timeout_s)
                        break
                    time.sleep(0.2)
            yield locked
        finally:
            os.close(fd)  # releases the lock

    # ---- reading ---------------------------------------------------------------------------------
    def dataset(self, modalities: Iterable[str] = ()) -> PoolDataset:
        """The last fill's images as a Sequence of :class:`Sample` (``present`` False for ``modalities``),
        each read from disk when indexed."""
        with self._lock:
            return PoolDataset(list(self._entries), tuple(modalities))

    def image(self, task_id: int, url: str) -> tuple[np.ndarray, Fit] | None:
        """(uint8 [H, W, 3] network input, padded; its Fit) of ``task_id`` with image ``url`` when the pool
        holds it at this cache's size; None otherwise (the caller fetches it as usual)."""
        return load_entry(self.path(task_id, url))


class _Budget:
    """Bytes left under ``max_bytes``, shared by the fetch threads."""

    def __init__(self, max_bytes: int, used: int) -> None:
        self.left, self._lock = max_bytes - used, threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if n > self.left:
                return False
            self.left -= n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.left += n


def _choose(pool: Sequence[Mapping[str, Any]], seed: int, limit: int) -> list[Mapping[str, Any]]:
    """At most ``limit`` tasks: the smallest sha256(seed:task id), in that order (a seeded random subset
    that changes little as tasks come and go)."""
    def key(task: Mapping[str, Any]) -> str:
        return hashlib.sha256(f"{int(seed)}:{task.get('id')}".encode()).hexdigest()

    return sorted(pool, key=key)[:limit]


def _task_url(task: Mapping[str, Any], schema: ProjectSchema) -> tuple[int, str]:
    task_id = task.get("id")
    if isinstance(task_id, bool) or not isinstance(task_id, int | str) or not str(task_id).isdigit():
        raise ValueError(f"task id must be a non-negative integer, got {task_id!r}")
    data = task.get("data")
    url = data.get(schema.image_key) if isinstance(data, Mapping) else None
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"task data has no image URL under {schema.image_key!r}")
    return int(task_id), url.strip()


def _reason(e: Exception) -> str:
    """A short failure class for /status: download, refused, too large, decode or the exception type."""
    text = str(e)
    for reason, marks in (("too large", ("exceeds the limit", "bytes; download aborted")),
                          ("refused", ("refused", "not allowed", "neither the Label Studio host", "needs the")),
                          ("decode", ("cannot decode", "not an allowed file format", "empty image")),
                          ("download", ("HTTP ", "request failed", "download failed", "took longer", "redirect"))):
        if any(m in text for m in marks):
            return reason
    return type(e).__name__


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
