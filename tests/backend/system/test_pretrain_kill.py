"""The cold start against real processes (issue 25): gunicorn, redis-server, ``python -m backend.loop.worker``
and the fake Label Studio (tests/support/fault_rig.py), with the backend's own pretrain options (no test
shrinking): ``kill -9`` of the worker mid-pretrain, then the next trigger resumes it from its checkpoint
with what is left of ``MTAL_PRETRAIN_MINUTES``, publishes a version marked pretrained and ranks it by
TypiClust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.fault_rig import PROJECT, FaultRig, kill9
from tests.support.redis_server import redis_server_path

pytestmark = [pytest.mark.redis, pytest.mark.slow]
MINUTES = 0.5


def test_a_worker_killed_mid_pretrain_resumes_on_the_next_trigger(tmp_path: Path) -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server not installed: run scripts/ensure_redis.sh")
    with FaultRig.start(tmp_path, n_tasks=40, n_labelled=0, MTAL_PRETRAIN_MINUTES=str(MINUTES)) as rig:
        worker = rig.worker()
        initial = rig.setup()  # requests the pretrain
        rig.wait(lambda s: s["state"] == "pretraining" and (s.get("step") or 0) > 30,
                 "the pretrain past its first checkpoint (step 25)", 120, (worker,))
        kill9(worker)
        pdir = rig.model_dir / str(PROJECT)
        assert (pdir / "pretrain.ckpt").is_file()
        spent = json.loads((pdir / "pretrain.json").read_text())["seconds"]
        assert rig.versions() == [initial]

        worker = rig.worker()
        rig.wait(lambda s: s["lease_expired"] or s["state"] != "pretraining", "the dead run's lease to expire", 30)
        rig.setup()  # the next trigger: the dead pretrain is taken over as a pretrain
        status = rig.wait(lambda s: s["state"] == "idle" and s["current_version"] != initial,
                          "the resumed pretrain and its ranking", 180, (worker,))
        meta = json.loads((pdir / "versions" / f"{status['current_version']}.json").read_text())
        summary = meta["pretrain"]
        assert meta["pretrained"] is True and meta["parent"] == initial
        assert summary["resumed_from"] >= 25 and summary["steps"] > summary["resumed_from"]
        assert summary["seconds_total"] <= MINUTES * 60 + 15  # the budget counts over the resume
        assert summary["seconds_total"] >= spent and summary["images"] == 40
        assert status["pretrain"]["state"] == "done" and status["pool"]["images"] == 40
        ranking = json.loads((pdir / "ranking.json").read_text())
        assert ranking["strategy"] == "typiclust" and ranking["model_version"] == status["current_version"]
        assert rig.ls.project["sampling"] == "Uncertainty sampling"
        assert not (pdir / "pretrain.ckpt").exists()
        rig.setup()  # nothing more is due: the state would say queued at once
        assert rig.status()["state"] == "idle"
