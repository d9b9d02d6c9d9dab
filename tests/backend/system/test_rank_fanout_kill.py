"""A fanned-out ranking (issue #24) against real processes: redis-server, the backend under gunicorn and two
``python -m backend.loop.worker`` processes, one of them killed with SIGKILL in the middle of a rank chunk. RQ
finds the chunk abandoned (its registry heartbeat stops: :func:`backend.loop.rank_fanout.registry_heartbeat`)
and retries it on the other worker; the ranking completes and is pushed once."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker
from rq.job import Job

from tests.support.fault_rig import FaultRig, kill9

pytestmark = pytest.mark.redis
N_TASKS, N_LABELLED, CHUNK = 40, 8, 4  # 10 chunk jobs


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[FaultRig]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    with FaultRig.start(tmp_path, n_tasks=N_TASKS, n_labelled=N_LABELLED, MTAL_RANK_CHUNK_TASKS=str(CHUNK)) as rig:
        rig.setup()
        yield rig


def _chunk_of(conn: redis.Redis, worker_name: str) -> str | None:
    """The rank chunk job ``worker_name`` is running now, if any."""
    for w in Worker.all(connection=conn):
        if w.name == worker_name and (job_id := w.get_current_job_id()) and "-chunk-" in job_id:
            return job_id
    return None


def test_a_worker_killed_mid_chunk_the_ranking_completes_and_pushes_once(rig: FaultRig) -> None:
    rig.ls.image_delay_s = 0.5  # each chunk takes a while: long enough to be caught in the middle
    victim, survivor = rig.worker(MTAL_TRAIN_EPOCHS="1"), rig.worker(MTAL_TRAIN_EPOCHS="1")
    conn = redis.Redis.from_url(rig.redis.url)
    assert rig.start_training() == "enqueued"
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline:
        killed = _chunk_of(conn, "fault-worker-1")
        time.sleep(0.05)
    assert killed, f"worker 1 never ran a chunk\n{victim.log_tail()}\n{survivor.log_tail()}"
    kill9(victim)

    def ranked(s: dict[str, Any]) -> bool:
        return s["state"] == "idle" and bool(s["ranking"]) and s["ranking"]["state"] in ("done", "failed")

    status = rig.wait(ranked, "the ranking after the kill", 180, procs=(survivor,))
    assert not status["error"] and status["ranking"]["state"] == "done", status
    ranking = status["ranking"]
    assert (ranking["chunks_done"], ranking["chunks_total"]) == (N_TASKS // CHUNK, N_TASKS // CHUNK)
    assert ranking["tasks_scored"] == N_TASKS and killed.startswith(ranking["run"])
    job = Job.fetch(killed, connection=conn)
    assert job.get_status() == "finished" and job.retries_left == 1  # abandoned once, run again by RQ
    assert job.worker_name == "fault-worker-2"
    version = rig.current()
    pushed = Counter(str(p["task"]) for p in rig.ls.predictions if p["model_version"] == version)
    assert pushed == Counter({str(t): 1 for t in range(N_LABELLED + 1, N_TASKS + 1)})  # every task, once
