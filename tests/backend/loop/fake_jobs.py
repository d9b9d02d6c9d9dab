"""Job functions for the coordinator tests: importable by path, like the real ones in backend.loop.jobs.

They drive the Coordinator through a run exactly as the real jobs do, and log every call in Redis so
tests can count runs. ``HOOK`` lets a test act in the middle of a training run (e.g. fire webhooks).
"""

from __future__ import annotations

from collections.abc import Callable

from rq import get_current_job

from backend.loop.coordinator import Coordinator

HOOK: list[Callable[[Coordinator, str], None]] = []


def _coordinator() -> Coordinator:
    return Coordinator.on_connection(
        get_current_job().connection, train_job=f"{__name__}.train_job", rank_job=f"{__name__}.rank_job",
        pretrain_job=f"{__name__}.pretrain_job",
    )


def train_job(project: str) -> str:
    coord = _coordinator()
    coord.begin(project)
    coord.redis.rpush(f"test:{project}:runs", "train")
    for hook in HOOK:
        hook(coord, project)
    coord.progress(project, epoch=1, step=3, loss=0.5)
    n = coord.redis.llen(f"test:{project}:runs")
    coord.trained(project, f"v{n}", {"loss": 0.5})
    return f"v{n}"


def rank_job(project: str) -> None:
    coord = _coordinator()
    coord.redis.rpush(f"test:{project}:runs", "rank")
    coord.finish(project)


def failing_train_job(project: str) -> None:
    coord = _coordinator()
    coord.begin(project)
    coord.fail(project, "boom: out of labels")


def pretrain_job(project: str) -> str:
    """A cold-start run as the real one drives it: begin_pretrain, progress, then ``trained`` (-> rank)."""
    coord = _coordinator()
    coord.begin_pretrain(project)
    coord.redis.rpush(f"test:{project}:runs", "pretrain")
    for hook in HOOK:
        hook(coord, project)
    coord.progress(project, step=3, loss=-0.5, pretrain={"state": "pretraining", "step": 3})
    n = coord.redis.llen(f"test:{project}:runs")
    coord.trained(project, f"v{n}", {"pretrain": {"steps": 3}})
    return f"v{n}"
