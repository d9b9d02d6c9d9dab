"""Faults against real processes: redis-server, the backend under gunicorn, ``python -m backend.loop.worker``
processes, and a fake Label Studio REST API that can go down and come back (tests/support/fault_rig.py).

- ``kill -9`` of the worker mid-training: the previous version keeps serving, and the next trigger after
  the lease (3 s here) expires completes a run within 60 s;
- a stalled worker (SIGSTOP) whose run was taken over writes nothing when it wakes up;
- Label Studio down during ranking: retried with backoff, visible in /status; down for good: the run
  fails, the project is not stuck, and the next trigger completes once LS is back;
- Redis restarted (every key lost) mid-run;
- disk full during the checkpoint write: MODEL_DIR on a small tmpfs (root), else the worker under
  ``prlimit --fsize`` (RLIMIT_FSIZE);
- a version switch during 100 concurrent /predict requests: no answer mixes versions.

One rig (services started once) serves the module, with one worker (12 epochs a run) for the tests
after the first two, which start their own; each test leaves the project idle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.serving.store import ModelStore
from mtal_models.training.checkpoint import load_checkpoint, save_checkpoint
from tests.support.fault_rig import PROJECT, FaultRig, kill9
from tests.support.mtal_processes import ManagedProcess
from tests.support.redis_server import redis_server_path

pytestmark = [pytest.mark.redis, pytest.mark.slow]
P = str(PROJECT)
TMPFS_MB = 48


def _mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or os.environ.get("MTAL_FAULTS_NO_TMPFS"):  # the latter: try the RLIMIT_FSIZE path
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultRig]:
    if redis_server_path() is None:
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    tmp = tmp_path_factory.mktemp("faults")
    model_dir = tmp / "models"
    mounted = _mount_tmpfs(model_dir)
    try:
        with FaultRig.start(tmp, model_dir=model_dir) as rig:
            rig.tmpfs = mounted  # type: ignore[attr-defined]
            rig.setup()
            yield rig
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(model_dir)], check=False)


@pytest.fixture(scope="module")
def worker(rig: FaultRig) -> ManagedProcess:
    """The module's standard worker, started at its first use (after the tests with their own workers)."""
    return rig.worker()


def _training_under_way(s: dict[str, Any]) -> bool:
    return s["state"] == "training" and (s.get("step") or 0) > 0


def _idle_at_new_version(old: str | None) -> Any:
    return lambda s: s["state"] == "idle" and s["current_version"] not in (None, old)


def test_kill9_mid_training_previous_version_serves_and_next_trigger_recovers(rig: FaultRig) -> None:
    before = rig.current()
    with rig.worker(MTAL_TRAIN_EPOCHS="1000") as slow:
        assert rig.start_training() == "enqueued"
        rig.wait(_training_under_way, "training under way", 90, (slow,))
        with rig.worker() as fresh:  # started now: its start-up recovery finds the lease alive
            kill9(slow)
            r = rig.predict()
            assert r.status_code == 200 and r.json()["model_version"] == before
            assert r.json()["results"][0]["result"], "the previous version answers with regions"
            rig.wait(lambda s: s["lease_expired"], "lease expiry", 30)
            expired = time.monotonic()
            assert rig.start_training() == "enqueued"  # the next trigger takes the dead run over
            st = rig.wait(_idle_at_new_version(before), "the restarted run", 60, (fresh,))
            recovered = time.monotonic() - expired
            print(f"kill -9: new version current {recovered:.1f} s after the lease expired")
            assert recovered < 60
            assert st["error"] is None and rig.current() == st["current_version"] == st["version"]
            assert rig.predict().json()["model_version"] == st["version"]
    leftovers = list((rig.model_dir / P / "tmp").glob("train-*.pt"))
    assert leftovers == [], "the next run removes a killed run's checkpoint"


def test_stalled_worker_whose_run_was_taken_over_writes_nothing(rig: FaultRig) -> None:
    before = rig.current()
    with rig.worker(MTAL_TRAIN_EPOCHS="1000") as stalled:
        assert rig.start_training() == "enqueued"
        rig.wait(_training_under_way, "training under way", 90, (stalled,))
        with rig.worker() as fresh:
            os.killpg(stalled.process.pid, signal.SIGSTOP)
            try:
                rig.wait(lambda s: s["lease_expired"], "lease expiry", 30)
                assert rig.start_training() == "enqueued"
                st = rig.wait(_idle_at_new_version(before), "the replacing run", 60, (fresh,))
                versions = rig.versions()
            finally:
                os.killpg(stalled.process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while "no longer owns the run" not in stalled.log_tail(20000) and time.monotonic() < deadline:
                time.sleep(0.3)
            assert "no longer owns the run" in stalled.log_tail(20000), stalled.log_tail()
            after = rig.status()
            assert rig.versions() == versions and rig.current() == st["current_version"]
            assert {k: after[k] for k in ("state", "version", "job_id", "error")} == {
                k: st[k] for k in ("state", "version", "job_id", "error")}


def test_label_studio_down_during_ranking(rig: FaultRig, worker: ManagedProcess) -> None:
    before, w = rig.current(), worker
    # down for a while: the ranking waits with the error in /status, then completes
    assert rig.start_training() == "enqueued"
    rig.wait(_training_under_way, "training under way", 90, (w,))
    rig.ls.stop()
    try:
        st = rig.wait(lambda s: "Label Studio unreachable" in (s["error"] or ""), "retry in /status", 60, (w,))
        assert st["state"] == "ranking" and "try 1 of 4" in st["error"]
    finally:
        rig.ls.restart()
    st = rig.wait(_idle_at_new_version(before), "the ranking after LS came back", 60, (w,))
    assert st["error"] is None
    assert {p["model_version"] for p in rig.ls.predictions} == {st["version"]}  # pushed (older ones pruned)
    assert rig.ls.project["model_version"] == st["version"]
    # down for good: the run fails after its retries (1 + 2 + 4 s), the project is idle, and the next
    # trigger completes once Label Studio is back
    second = st["version"]
    assert rig.start_training() == "enqueued"
    rig.wait(_training_under_way, "training under way", 90, (w,))
    rig.ls.stop()
    try:
        st = rig.wait(lambda s: s["state"] == "idle", "the run to give up", 60, (w,))
    finally:
        rig.ls.restart()
    assert st["error"].startswith("rank: LabelStudioAPIError") and st["labels_since_last_run"] == {}
    assert rig.start_training() == "enqueued"
    st = rig.wait(_idle_at_new_version(second), "the run after LS is back", 60, (w,))
    assert st["error"] is None


def test_redis_restarted_mid_run(rig: FaultRig, worker: ManagedProcess) -> None:
    """Either the run finishes on the new Redis, or RQ's job heartbeat hit the outage and the job was
    lost with it (which one is a matter of timing): then the worker serves again and the next trigger
    trains. Never a dead worker or a stuck project."""
    before = rig.current()
    assert rig.start_training() == "enqueued"
    rig.wait(_training_under_way, "training under way", 90, (worker,))
    rig.restart_redis()  # no persistence: the run state, the queue and RQ's registries are gone

    def finished_or_lost(s: dict[str, Any]) -> bool:
        return _idle_at_new_version(before)(s) or (s["state"] == "idle" and "serving again" in worker.log_tail(20000))

    st = rig.wait(finished_or_lost, "the run to finish on the new Redis, or the worker to serve again", 90, (worker,))
    assert worker.alive(), worker.log_tail()  # a worker whose job ended while Redis was down waits, not exits
    if st["current_version"] in (None, before):  # the job was lost with Redis: the next trigger trains
        assert rig.start_training() == "enqueued"
        st = rig.wait(_idle_at_new_version(before), "a run after the lost one", 90, (worker,))
    # the run's Redis state may be gone (it can finish while Redis is down): the store's current version
    assert st["error"] is None and rig.predict().json()["model_version"] == st["current_version"]
    assert rig.start_training() == "enqueued"  # and the worker still serves the queue
    rig.wait(_idle_at_new_version(st["current_version"]), "a run after the restart", 60, (worker,))


def test_disk_full_during_the_checkpoint_write(rig: FaultRig, worker: ManagedProcess) -> None:
    before = rig.current()
    size = ModelStore(rig.model_dir).checkpoint_path(P).stat().st_size
    filler = rig.model_dir / "filler"
    if rig.tmpfs:  # type: ignore[attr-defined]
        st_fs = os.statvfs(rig.model_dir)
        with open(filler, "wb") as f:  # leave a third of a checkpoint free
            f.write(b"\0" * max(0, st_fs.f_bavail * st_fs.f_frsize - size // 3))
        w, how = worker, "tmpfs"
    else:  # not root: the worker's writes are limited instead (RLIMIT_FSIZE), and it is the only worker
        worker.stop()
        w, how = rig.worker(prefix=["prlimit", f"--fsize={size // 3}", "--"]), "RLIMIT_FSIZE"
    try:
        assert rig.start_training() == "enqueued"
        st = rig.wait(lambda s: s["state"] == "idle" and s["error"], f"the run to fail ({how})", 90, (w,))
        assert "could not write the checkpoint" in st["error"], st["error"]
        assert rig.current() == before and st["labels_since_last_run"] == {}
        r = rig.predict()
        assert r.status_code == 200 and r.json()["model_version"] == before
        pdir = rig.model_dir / P
        assert [*pdir.glob("tmp/train-*"), *pdir.glob("tmp/.train-*"), *pdir.glob("versions/.*.tmp")] == []
    finally:
        filler.unlink(missing_ok=True)
        if w is not worker:
            w.stop()
    w = w if w is worker else rig.worker()
    assert rig.start_training() == "enqueued"
    rig.wait(_idle_at_new_version(before), "a run once there is room again", 60, (w,))


def _perturbed_copy(store: ModelStore) -> str:
    """Publish the current weights plus noise as a new version (outputs differ from the current one)."""
    ckpt = load_checkpoint(store.checkpoint_path(P), map_location="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    tmp = store.tmp_dir(P) / "perturbed.pt"
    save_checkpoint(tmp, ckpt.model, extra={"mtal": store.metadata(P)})
    return store.publish(P, tmp, {k: v for k, v in store.metadata(P).items() if k != "version"}, move=True)


def test_version_switch_during_100_concurrent_predicts(rig: FaultRig) -> None:
    store = ModelStore(rig.model_dir)
    a = rig.current()
    b = _perturbed_copy(store)
    expected = {}
    for v in (a, b):
        store.set_current(P, v)
        body = rig.predict().json()
        assert body["model_version"] == v
        expected[v] = body["results"][0]
    assert expected[a]["result"] != expected[b]["result"], "the two versions must answer differently"
    stop = time.monotonic() + 120

    def switch() -> int:
        n = 0
        while time.monotonic() < stop:
            store.set_current(P, (a, b)[n % 2])
            n += 1
            time.sleep(0.05)
        return n

    with ThreadPoolExecutor(101) as pool:
        switcher = pool.submit(switch)
        answers = list(pool.map(lambda _: rig.predict(timeout=120), range(100)))
        stop = time.monotonic()
        switches = switcher.result()
    store.set_current(P, a)
    assert [r.status_code for r in answers] == [200] * 100
    seen = set()
    for r in answers:
        body = r.json()
        (res,) = body["results"]
        assert res["model_version"] == body["model_version"]
        assert res["result"] == expected[body["model_version"]]["result"], "regions of one version, label of another"
        assert res["score"] == pytest.approx(expected[body["model_version"]]["score"], abs=1e-5)
        seen.add(body["model_version"])
    assert switches > 2 and seen == {a, b}, (switches, seen)
