"""The unlabelled pool cache (backend/serving/pool.py): selection, once-only fetch, keys, bounds, failures,
two processes filling one cache, and streaming memory. A counting fake fetcher in the unit tests; a real
HTTP server on loopback with the real ImageFetcher in the integration tests."""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import threading
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.auth import ImageError
from backend.labelstudio.images import ImageFetcher
from backend.labelstudio.label_config import parse_label_config
from backend.serving.pool import PoolCache, PoolDataset, PooledFetcher, pool_status, pool_tasks
from mtal_models.data.geometry import Fit
from mtal_models.data.sample import Sample

REPO = Path(__file__).resolve().parents[3]
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="semantic" toName="image"><Label value="road"/></BrushLabels></View>"""
SCHEMA = parse_label_config(CONFIG, dense_fields={"depth": "depth_map"})


def _image(task_id: int, h: int = 30, w: int = 40) -> np.ndarray:
    """A known picture per task: every pixel = task id (mod 256) in R, row index in G."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = task_id % 256
    img[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    return img


class CountingFetcher:
    """fetch_fitted as ImageFetcher's: decodes `_image(task id)` (or raises for URLs containing "bad")."""

    def __init__(self, h: int = 30, w: int = 40) -> None:
        self.calls: Counter[str] = Counter()
        self.h, self.w = h, w
        self.lock = threading.Lock()

    def fetch_fitted(self, url: str, task_id: int | None, fit_for: Callable[[int, int], Fit]) -> tuple[np.ndarray, Fit]:
        with self.lock:
            self.calls[url] += 1
        if "bad" in url:
            raise ImageError(f"{url}: cannot decode image: broken")
        if "gone" in url:
            raise ImageError(f"{url}: HTTP 404 from ls")
        fit = fit_for(self.h, self.w)
        return fit.image(_image(int(task_id or 0), self.h, self.w)), fit


def _task(i: int, annotations: list[dict[str, Any]] | None = None, url: str | None = None, **data: Any) -> dict:
    task: dict[str, Any] = {"id": i, "data": {"image": url or f"/data/upload/1/{i}.png", **data}}
    if annotations is not None:
        task["annotations"] = annotations
    return task


LABEL = {"id": 1, "result": [{"type": "brushlabels"}], "was_cancelled": False}


# ---- selection ------------------------------------------------------------------------------------
def test_pool_is_the_tasks_without_any_label() -> None:
    tasks = [
        _task(1),  # task_only listing, no count: unlabelled
        {**_task(2), "total_annotations": 1},  # task_only listing with an annotation: labelled
        _task(3, annotations=[LABEL]),  # labelled
        _task(4, annotations=[{**LABEL, "was_cancelled": True}]),  # only a skipped annotation: unlabelled
        _task(5, annotations=[{"id": 2, "result": []}]),  # an empty result labels nothing: unlabelled
        _task(6, depth_map="/data/upload/1/d6.png"),  # sensor ground truth: labelled
        _task(7, annotations=[]),
    ]
    assert [t["id"] for t in pool_tasks(tasks, SCHEMA)] == [1, 4, 5, 7]


def test_fill_leaves_labelled_tasks_out(tmp_path: Path) -> None:
    fetcher = CountingFetcher()
    cache = PoolCache(tmp_path, "3", fetcher, image_size=32)
    stats = cache.fill([_task(1), _task(2, annotations=[LABEL]), _task(3)], SCHEMA)
    assert (stats.tasks, stats.labelled, stats.pool, stats.fetched, stats.images) == (3, 1, 2, 2, 2)
    assert cache.dataset().task_ids == [1, 3]
    assert not any("/2.png" in url for url in fetcher.calls)


# ---- once-only fetch, keys ------------------------------------------------------------------------
def test_each_image_is_fetched_once_across_fills_and_instances(tmp_path: Path) -> None:
    fetcher = CountingFetcher()
    tasks = [_task(i) for i in range(1, 21)]
    first = PoolCache(tmp_path, "3", fetcher, image_size=32).fill(tasks, SCHEMA)
    second = PoolCache(tmp_path, "3", fetcher, image_size=32).fill(tasks, SCHEMA)
    assert (first.fetched, first.cached) == (20, 0)
    assert (second.fetched, second.cached, second.images) == (0, 20, 20)
    assert set(fetcher.calls.values()) == {1} and len(fetcher.calls) == 20


def test_a_changed_url_or_size_fetches_again(tmp_path: Path) -> None:
    fetcher = CountingFetcher()
    PoolCache(tmp_path, "3", fetcher, image_size=32).fill([_task(1), _task(2)], SCHEMA)
    stats = PoolCache(tmp_path, "3", fetcher, image_size=32).fill([_task(1, url="/data/upload/1/new.png"), _task(2)],
                                                                  SCHEMA)
    assert (stats.fetched, stats.cached) == (1, 1) and fetcher.calls["/data/upload/1/new.png"] == 1
    stats = PoolCache(tmp_path, "3", fetcher, image_size=64).fill([_task(2)], SCHEMA)
    assert (stats.fetched, stats.cached) == (1, 0) and fetcher.calls["/data/upload/1/2.png"] == 2
    stats = PoolCache(tmp_path, "3", fetcher, image_size=64, image_max_size=2048).fill([_task(2)], SCHEMA)
    assert stats.fetched == 1 and fetcher.calls["/data/upload/1/2.png"] == 3


def test_entries_hold_the_training_geometry(tmp_path: Path) -> None:
    """Known answer: a 30x40 image at size 32 -> 32x43 (shorter side 32), padded to 32x64; the stored
    pixels are what Fit.image gives, the padding is zero."""
    cache = PoolCache(tmp_path, "3", CountingFetcher(), image_size=32)
    cache.fill([_task(7)], SCHEMA)
    image, fit = cache.image(7, "/data/upload/1/7.png")  # type: ignore[misc]
    assert fit == Fit.for_size(30, 40, 32, 1024) and fit.resized == (32, 43) and image.shape == (32, 64, 3)
    np.testing.assert_array_equal(image, Fit.for_size(30, 40, 32, 1024).image(_image(7)))
    assert (image[:, 43:] == 0).all() and (image[:, :43, 0] == 7).all()
    assert cache.image(7, "/data/upload/1/other.png") is None and cache.image(8, "/data/upload/1/8.png") is None


# ---- bounds ---------------------------------------------------------------------------------------
def test_max_images_keeps_a_seeded_subset_and_prunes_the_rest(tmp_path: Path) -> None:
    fetcher = CountingFetcher()
    tasks = [_task(i) for i in range(1, 41)]
    cache = PoolCache(tmp_path, "3", fetcher, image_size=32, max_images=10, prune_grace_s=0)
    a = cache.fill(tasks, SCHEMA, seed=1)
    ids_a = cache.dataset().task_ids
    assert (a.pool, a.selected, a.fetched) == (40, 10, 10) and len(ids_a) == 10
    cache.fill(tasks + [_task(41)], SCHEMA, seed=1)  # a new task displaces at most one
    assert len(set(ids_a) & set(cache.dataset().task_ids)) >= 9
    b = cache.fill(tasks, SCHEMA, seed=2)
    ids_b = cache.dataset().task_ids
    assert ids_b != ids_a and len(ids_b) == 10 and b.pruned >= 1
    assert len(list((tmp_path / "3" / "pool").glob("*.npz"))) == 10  # outside entries pruned (grace 0)
    assert PoolCache(tmp_path, "3", fetcher, image_size=32, max_images=0).fill(tasks, SCHEMA).images == 0


def test_entries_in_use_by_another_job_survive_the_grace(tmp_path: Path) -> None:
    fetcher = CountingFetcher()
    PoolCache(tmp_path, "3", fetcher, image_size=32).fill([_task(1), _task(2)], SCHEMA)
    stats = PoolCache(tmp_path, "3", fetcher, image_size=32, prune_grace_s=3600).fill([_task(2)], SCHEMA)
    assert stats.pruned == 0 and len(list((tmp_path / "3" / "pool").glob("*.npz"))) == 2


def test_disk_bound_stops_storing_and_counts_the_rest(tmp_path: Path) -> None:
    per_image = 32 * 43 * 3 + 600  # bytes of one stored image and its .npz headers (about 560)
    cache = PoolCache(tmp_path, "3", CountingFetcher(), image_size=32, max_bytes=5 * per_image + 100, threads=2)
    stats = cache.fill([_task(i) for i in range(1, 21)], SCHEMA)
    assert stats.images == 5 and stats.over_bound == 15 and stats.failed == 0
    assert stats.bytes <= 5 * per_image + 100 and len(cache.dataset()) == 5


# ---- failures -------------------------------------------------------------------------------------
def test_failures_are_skipped_counted_and_shown_in_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tasks = [_task(1), _task(2, url="/data/upload/bad.png"), _task(3, url="/data/upload/gone.png"),
             {"id": 4, "data": {"text": "no image"}}, _task(5, url="/data/upload/bad2.png")]
    cache = PoolCache(tmp_path, "3", CountingFetcher(), image_size=32)
    stats = cache.fill(tasks, SCHEMA)
    assert (stats.images, stats.failed) == (1, 4)
    assert stats.failures == {"decode": 2, "download": 1, "no image URL": 1}
    assert {e["task"] for e in stats.failed_examples} == {2, 3, 4, 5}
    assert "pool task 2 skipped (decode)" in caplog.text
    on_disk = pool_status(tmp_path, "3")
    assert on_disk is not None and on_disk["failures"] == stats.failures and on_disk["images"] == 1
    assert pool_status(tmp_path, "4") is None and pool_status(tmp_path, "../3") is None


def test_a_broken_entry_is_fetched_again_and_the_dataset_skips_a_vanished_one(tmp_path: Path) -> None:
    fetcher = CountingFetcher()
    cache = PoolCache(tmp_path, "3", fetcher, image_size=32)
    cache.fill([_task(1), _task(2), _task(3)], SCHEMA)
    cache.path(1, "/data/upload/1/1.png").write_bytes(b"torn")
    assert cache.fill([_task(1), _task(2), _task(3)], SCHEMA).fetched == 1
    ds = cache.dataset()
    cache.path(2, "/data/upload/1/2.png").unlink()  # another job pruned it meanwhile
    assert [ds[i].id for i in range(3)] == ["1", "3", "3"]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="project id"):
        PoolCache(tmp_path, "../x", None)
    with pytest.raises(ValueError, match="max_images"):
        PoolCache(tmp_path, "3", None, max_images=-1)
    with pytest.raises(ValueError, match="no fetcher"):
        PoolCache(tmp_path, "3", None, image_size=32).fill([_task(1)], SCHEMA)


# ---- the dataset ----------------------------------------------------------------------------------
def test_pooled_fetcher_reads_the_pool_at_the_same_geometry_and_fetches_the_rest(tmp_path: Path) -> None:
    """The rank job's fetcher: a pooled task at the pool's size comes from disk (no fetch); a task outside
    the pool, or a caller asking for another size, is fetched as before; other methods are the fetcher's."""
    cache = PoolCache(tmp_path, "3", CountingFetcher(), image_size=32)
    cache.fill([_task(1), _task(2)], SCHEMA)
    behind = CountingFetcher()
    pooled = PooledFetcher(PoolCache(tmp_path, "3", None, image_size=32), behind)
    same = lambda h, w: Fit.for_size(h, w, 32, 1024)  # noqa: E731
    image, fit = pooled.fetch_fitted("/data/upload/1/2.png", 2, same)
    assert fit == same(30, 40) and image.shape == (32, 64, 3) and int(image[0, 0, 0]) == 2
    assert sum(behind.calls.values()) == 0 and pooled.hits == 1
    pooled.fetch_fitted("/data/upload/1/5.png", 5, same)  # not in the pool
    pooled.fetch_fitted("/data/upload/1/2.png", 2, lambda h, w: Fit.for_size(h, w, 64, 1024))  # another size
    assert behind.calls == Counter({"/data/upload/1/5.png": 1, "/data/upload/1/2.png": 1}) and pooled.misses == 2
    assert pooled.calls is behind.calls  # anything else is the wrapped fetcher's


def test_dataset_items_are_image_only_samples(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, "3", CountingFetcher(), image_size=32)
    cache.fill([_task(9), _task(4)], SCHEMA)
    ds = cache.dataset(modalities=SCHEMA.modalities)
    assert len(ds) == 2 and ds.task_ids == [4, 9]
    s = ds[-1]
    assert isinstance(s, Sample) and s.id == "9" and s.labels == {} and s.present == {"semantic": False, "depth": False}
    assert s.image.dtype == np.uint8 and s.image.shape == (32, 64, 3) and not s.is_present("semantic")
    with pytest.raises(IndexError):
        ds[2]
    import pickle

    assert pickle.loads(pickle.dumps(ds)).task_ids == [4, 9]  # DataLoader workers


def test_streaming_memory_does_not_grow_with_the_pool(tmp_path: Path) -> None:
    """300 images of 192x256 (147 KB each, 44 MB in all): filling holds one chunk of fetches at most (16
    images of 4 threads, each with its .npz buffer), reading every item keeps a few copies of one image
    (measured: 1.4 MB and 0.6 MB)."""
    fetcher = CountingFetcher(h=192, w=256)
    cache = PoolCache(tmp_path, "3", fetcher, image_size=192, threads=4)
    one = 192 * 256 * 3
    tracemalloc.start()
    try:
        assert cache.fill([_task(i) for i in range(300)], SCHEMA).images == 300
        _, fill_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fill_peak < 20 * one, f"fill peak {fill_peak / 1e6:.1f} MB: images are written as they come, in chunks"
    ds = cache.dataset()
    tracemalloc.start()
    try:
        total = 0
        for i in range(len(ds)):
            total += int(ds[i].image[0, 0, 0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == sum(i % 256 for i in range(300))
    assert peak < 8 * one, f"peak {peak / 1e6:.1f} MB while streaming 300 images of {one / 1e6:.2f} MB"


# ---- integration: real HTTP server, real ImageFetcher, real processes -------------------------------
class _Images(http.server.ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True


@pytest.fixture
def image_server() -> Iterator[tuple[str, Counter[str]]]:
    """Loopback server of /data/upload/<i>.png (PNG of `_image(i)`) and /data/upload/broken.png; counts GETs."""
    hits: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                hits[self.path] += 1
            name = self.path.rsplit("/", 1)[-1]
            if name == "broken.png":
                body = b"\x89PNG\r\n\x1a\nnot really"
            elif name.removesuffix(".png").isdigit():
                buf = io.BytesIO()
                Image.fromarray(_image(int(name.removesuffix(".png")), 48, 64)).save(buf, format="PNG")
                body = buf.getvalue()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = _Images(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_fill_over_http_fetches_each_image_once(tmp_path: Path, image_server: tuple[str, Counter[str]]) -> None:
    url, hits = image_server
    fetcher = ImageFetcher(url, "token", cache_dir=None)  # no raw-bytes cache: the pool alone saves the fetches
    tasks = [_task(i) for i in range(1, 13)] + [_task(13, url="/data/upload/broken.png"),
                                                _task(14, url="/data/upload/missing.png"), _task(15, [LABEL])]
    first = PoolCache(tmp_path, "5", fetcher, image_size=32).fill(tasks, SCHEMA)
    assert (first.pool, first.images, first.failed) == (14, 12, 2)
    assert first.failures == {"decode": 1, "download": 1}
    second_cache = PoolCache(tmp_path, "5", fetcher, image_size=32)
    second = second_cache.fill(tasks, SCHEMA)
    assert (second.cached, second.fetched, second.failed) == (12, 0, 2)
    assert all(hits[f"/data/upload/1/{i}.png"] == 1 for i in range(1, 13)) and "/data/upload/1/15.png" not in hits
    image, fit = second_cache.image(4, "/data/upload/1/4.png")  # type: ignore[misc]
    assert (fit.height, fit.width) == (48, 64) and (image[: fit.resized_height, : fit.resized_width, 0] == 4).all()


_FILL = """
import json, os, sys, time
from backend.labelstudio.images import ImageFetcher
from backend.serving.pool import PoolCache
from tests.backend.serving.test_pool_cache import SCHEMA, _task
root, url, lock_timeout, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
cache = PoolCache(root, "5", ImageFetcher(url, "token", cache_dir=None), image_size=32, lock_timeout_s=lock_timeout)
print("ready", flush=True)
while not os.path.exists(go):  # both processes start filling together
    time.sleep(0.01)
stats = cache.fill([_task(i) for i in range(60)], SCHEMA)
ds = cache.dataset()
print(json.dumps({"stats": stats.to_dict(), "ids": [ds[i].id for i in range(len(ds))]}))
"""


@pytest.mark.slow  # two interpreters importing torch
@pytest.mark.parametrize("lock_timeout", [900.0, 0.0], ids=["locked", "unlocked"])
def test_two_processes_fill_one_cache(tmp_path: Path, image_server: tuple[str, Counter[str]],
                                      lock_timeout: float) -> None:
    """Two real processes fill the same pool at once: both end with all 60 readable images; with the lock
    each image is downloaded once, without it (lock timeout 0) both may download but nothing is torn."""
    url, hits = image_server
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _FILL, str(tmp_path), url, str(lock_timeout), str(go)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()[1][-2000:]
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for o in outs:
        assert o["stats"]["images"] == 60 and o["stats"]["failed"] == 0
        assert o["ids"] == [str(i) for i in range(60)]
    if lock_timeout:  # one fetched all, the other waited for the lock and found them on disk
        assert sorted(o["stats"]["fetched"] for o in outs) == [0, 60] and set(hits.values()) == {1}
    pool = tmp_path / "5" / "pool"
    assert len(list(pool.glob("*.npz"))) == 60 and not list(pool.glob(".*.tmp"))
    ds = PoolDataset(sorted((int(p.name[1:].split("-")[0]), p) for p in pool.glob("*.npz")))
    assert all(int(ds[i].image[0, 0, 0]) == int(ds[i].id) for i in range(60))
