"""The rank jobs (RQ imports them by path, as ``backend.loop.jobs.<name>``; see :mod:`backend.loop.rank_fanout`).

rank_job(project)
    Enqueued when a training run published a version; owns the project's run. Lists the tasks to score
    (every labelled one, and the unlabelled ones, bounded by ``MTAL_RANK_MAX_TASKS``) and ranks them in this
    job when they fit in one chunk of ``MTAL_RANK_CHUNK_TASKS``, else fans the ranking out and hands the run
    to its merge job. Label Studio unreachable: retried with backoff (``MTAL_LS_RETRIES``).
rank_chunk_job(project, run, index)
    Scores one chunk of a fanned-out ranking, on any worker; stale chunks (the run was superseded) return at
    once. Retried by RQ up to ``CHUNK_TRIES`` times (an error, or a worker that died).
rank_merge_job(project, run, chunks)
    After every chunk: selects, pushes, switches the project's sampling, stores the ranking, ends the run; a
    chunk without results fails the run with the chunk's error (the previous ranking stays in Label Studio).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from backend.loop.coordinator import LeaseLost
from backend.loop.job_context import JobContext, project_id, retry_ls, run_job
from backend.loop.new_tasks import queue_unscored
from backend.loop.rank_fanout import (
    RankingFailed,
    RankRun,
    merge_ranking,
    score_chunk,
    start_ranking,
    unscored_of,
)
from backend.loop.rank_pass import rank_subset
from backend.serving.pool import PoolCache, PooledFetcher
from backend.serving.store import version_number

__all__ = ["rank_chunk_job", "rank_job", "rank_merge_job"]

log = logging.getLogger(__name__)


def _pooled(ctx: JobContext, project: str) -> tuple[JobContext, PooledFetcher]:
    """``ctx`` reading the images the train job's pool fill decoded from the pool, not fetching them again."""
    fetcher = PooledFetcher(PoolCache.from_settings(ctx.settings, project, None), ctx.fetcher)
    return replace(ctx, fetcher=fetcher), fetcher


def rank_job(project: Any) -> dict[str, Any]:
    """Rank every task of ``project`` with the current version (see the module docstring)."""

    left_out: set[str] = set()  # MTAL_RANK_MAX_TASKS: unlabelled tasks this ranking does not score

    def rank(ctx: JobContext, project: str) -> dict[str, Any]:
        config, schema = ctx.config_and_schema(project)
        version = ctx.store.current(project)
        labelled = {t["id"]: t for t in ctx.ls.iter_labelled_tasks(int(project))}
        tasks = list(labelled.values()) + [
            t for t in ctx.ls.iter_tasks(int(project), only_unlabelled=True) if t["id"] not in labelled
        ]
        tasks, skipped = rank_subset(tasks, set(labelled), ctx.settings.rank_max_tasks,
                                     ctx.settings.seed + (version_number(version, project) or 0))
        left_out.clear()
        left_out.update(skipped)
        pooled_ctx, fetcher = _pooled(ctx, project)
        summary = start_ranking(pooled_ctx, project, schema, config, version, tasks, set(labelled), skipped,
                                guard=lambda: ctx.check_owner(project))
        if summary["chunks"] == 1:
            log.info("project %s: ranking read %d images from the pool, fetched %d", project, fetcher.hits,
                     fetcher.misses)
        return summary

    def body(ctx: JobContext, project: str) -> dict[str, Any]:
        ctx.coordinator.progress(project, ctx.owner, state="ranking")
        summary = retry_ls(ctx, project, "ranking", lambda: rank(ctx, project))
        if summary["chunks"] == 1:  # ranked here; else the merge job owns the run now and ends it
            ctx.coordinator.finish(project, ctx.owner)
            queue_unscored(ctx.store, ctx.ls, ctx.coordinator, project, left_out)
        return summary

    return run_job("rank", project, body)


def rank_chunk_job(project: Any, run: str, index: int) -> dict[str, Any]:
    """Score chunk ``index`` of the fanned-out ranking ``run`` of ``project``; holds no lease (the merge job
    owns the run) and records no failure in the run (RQ retries it; the merge reports one that failed for good).
    Label Studio unreachable: retried in the job as :func:`retry_ls` does (``MTAL_LS_RETRIES``), then by RQ."""
    project = project_id("rank chunk", project)
    ctx, _ = _pooled(JobContext.create(), project)
    run, index = str(run), int(index)
    return retry_ls(ctx, project, f"rank chunk {index + 1}", lambda: score_chunk(ctx, project, run, index),
                    in_status=False)


def rank_merge_job(project: Any, run: str, chunks: int) -> dict[str, Any]:
    """Merge and publish the fanned-out ranking ``run`` of ``project`` (``chunks`` chunk jobs) as the run's owner.
    Running it again after it published pushes nothing; a run that was superseded returns {"stale": True}; a
    chunk without results fails the run (recorded, returned as {"failed": reason}: RQ does not retry that)."""
    run = str(run)

    def body(ctx: JobContext, project: str) -> dict[str, Any]:
        guard = lambda: ctx.check_owner(project)  # noqa: E731
        try:
            summary = retry_ls(ctx, project, "ranking", lambda: merge_ranking(ctx, project, run, int(chunks), guard))
        except RankingFailed as e:
            ctx.coordinator.fail(project, f"rank: {e}", owner=ctx.owner)
            return {"run": run, "failed": str(e)}
        if summary.get("already_published") and ctx.coordinator.run_owner(project) != ("ranking", ctx.owner):
            return summary  # ended by the merge that published it
        ctx.coordinator.finish(project, ctx.owner)
        queue_unscored(ctx.store, ctx.ls, ctx.coordinator, project, unscored_of(ctx, project, run))
        RankRun(ctx.store, project, run).remove()
        return summary

    try:
        return run_job("rank", project, body)
    except LeaseLost:  # a new run replaced this one: nothing of it was pushed after that
        return {"run": run, "stale": True}
