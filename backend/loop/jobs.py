"""The RQ jobs: train on every annotation in Label Studio, then rank the project's tasks.

Top-level functions taking plain ids (RQ imports them by path); the only place that joins Label
Studio (:mod:`backend.labelstudio.client`), the model core (:mod:`mtal_models`) and the model store.

train_job(project)
    Reads ALL labelled tasks from Label Studio (the source of truth: a lost webhook loses nothing),
    builds the partial-label dataset (image cache reused), continues from the current version's
    weights, holds out a validation split, trains with the strategy's training options (MTAL sample
    weights, committee, MTPSL term), publishes a new version with its metrics (atomic), then enqueues
    the rank job. A failure is recorded in the coordinator and never touches the current version.
rank_job(project), rank_chunk_job(project, run, index), rank_merge_job(project, run, chunks)
    Score every task with the project's strategy (a pass that also produces the pre-annotations), push one
    prediction per unlabelled task (score: low = label first, cluster, the new model version, the
    requested modalities ticked in the choices tag), set the project's ``model_version`` and
    ``sampling = "Uncertainty sampling"`` so ``/next`` serves that order, and store the ranking for
    ``/predict``. A project of more tasks than ``MTAL_RANK_CHUNK_TASKS`` is fanned out over RQ: chunk jobs
    that any worker takes, then one merge job (:mod:`backend.loop.rank_jobs`, :mod:`backend.loop.rank_fanout`).
    Unlabelled tasks found without a score afterwards (imported while it ran) are handed to score_new_job.
pretrain_job(project)
    The cold start (``MTAL_PRETRAIN_MINUTES`` > 0; issue 25): lists the project's tasks, fills the
    unlabelled pool cache, refuses with a reason in /status when it is under the minimum, pretrains the
    current version's trunk time-boxed and resumable (:mod:`backend.loop.pretrain_round`), publishes it
    marked ``"pretrained"``, then enqueues the rank job, which ranks it by TypiClust. Tasks already
    labelled when it starts get a training run after it (the coordinator's follow-up).
score_new_job(project)
    Scores the tasks imported after the ranking (``TASKS_CREATED``, :mod:`backend.loop.new_tasks`) with the
    current version, pushing their predictions and adding them to the stored ranking
    (:mod:`backend.loop.rank_new`); no full re-rank. Outside the run state machine: no lease, and it leaves
    the tasks for the rank job while a ranking runs.

train_job, rank_job and pretrain_job run under the run's lease (:meth:`Coordinator.hold`) and as its owner
(their RQ job id): a job whose run was taken over stops with LeaseLost before it writes anything. Label
Studio unreachable while reading annotations or ranking: retried with backoff (``MTAL_LS_RETRIES``,
``MTAL_LS_BACKOFF_S``).
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

from redis.exceptions import RedisError

from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import prepare_tasks
from backend.logs import redact
from backend.loop.coordinator import LeaseLost
from backend.loop.job_context import JobContext, configure, ls_unreachable
from backend.loop.job_context import project_id as _project_id
from backend.loop.job_context import retry_ls as _retry_ls
from backend.loop.job_context import run_job as _run
from backend.loop.new_tasks import NewTasks, RankingStarted
from backend.loop.pretrain_round import PoolImages, pretrain_config, pretrain_version, skip_reason
from backend.loop.rank_jobs import rank_chunk_job, rank_job, rank_merge_job
from backend.loop.rank_new import score_new_tasks
from backend.loop.train_round import train_version
from backend.serving.pool import PoolCache
from mtal_models.training.pretrain import check_pool

__all__ = ["JobContext", "configure", "ls_unreachable", "pretrain_job", "rank_chunk_job", "rank_job",
           "rank_merge_job", "score_new_job", "train_job"]

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0  # the pretrain's step reports to /status, at most one per this many seconds


def train_job(project: Any) -> str:
    """Train a new version of ``project`` on all its annotations; enqueues ranking. Returns the version."""

    def body(ctx: JobContext, project: str) -> str:
        ctx.coordinator.begin(project, ctx.owner)
        ctx.store.remove_leftovers(project)  # a killed run's temporary checkpoints
        started = time.time()
        schema, tasks = _retry_ls(ctx, project, "reading annotations",
                                  lambda: (ctx.schema(project), list(ctx.ls.iter_labelled_tasks(int(project)))))
        samples = [p.sample for _, p in prepare_tasks(ctx, tasks, schema, ctx.settings.image_size) if p.labelled]
        if not samples:
            raise ValueError(f"project {project} has no usable labelled task yet ({len(tasks)} annotated)")
        val_fraction = ctx.settings.val_fraction if len(samples) >= 10 else 0.0
        val = [s for s in samples if _in_val(s.id, val_fraction)]
        train = [s for s in samples if not _in_val(s.id, val_fraction)]
        if not train:  # every task hashed into validation: train on all, validate on none
            train, val = samples, []
        ranking = ctx.store.ranking(project)
        last_throttle = [0.0]

        def progress(epoch: int, step: int, loss: float) -> None:
            if time.time() - last_throttle[0] >= 1.0:
                last_throttle[0] = time.time()
                try:
                    ctx.coordinator.progress(project, ctx.owner, epoch=epoch, step=step, loss=round(float(loss), 6))
                except RedisError as e:  # Redis restarting: keep training (LeaseLost still stops the run)
                    log.warning("project %s: progress not recorded: %s", project, redact(str(e)))

        pool = _fill_pool(ctx, project, schema, tasks) if ctx.settings.semi_weight > 0 else None
        version, metrics = train_version(
            ctx.store, project, schema, ctx.settings, train, val, progress, ranking.get("weights") or {},
            guard=lambda: ctx.check_owner(project), unlabelled=pool,
        )
        metrics["train_seconds"] = round(time.time() - started, 3)
        log.info("project %s: trained %s on %d tasks (%d val): %s", project, version, len(train), len(val), metrics)
        ctx.coordinator.trained(project, version, metrics, owner=ctx.owner)
        return version

    return _run("train", project, body)


def _fill_pool(ctx: JobContext, project: str, schema: ProjectSchema, labelled: list[dict[str, Any]]) -> Any:
    """The project's unlabelled pool for the semi-supervised term: its tasks without a label when the run
    starts, fetched once into the pool cache (``/status`` "pool" shows the fill; pool_done / pool_total
    while it runs; the run's state stays "training"). Returns the streaming dataset, or None when the pool is off or
    empty (the run then trains supervised only)."""
    if ctx.settings.pool_max_images <= 0:
        return None
    ids = {t["id"] for t in labelled}
    unlabelled = _retry_ls(ctx, project, "listing unlabelled tasks", lambda: [
        t for t in ctx.ls.iter_tasks(int(project), only_unlabelled=True) if t["id"] not in ids
    ])
    cache = PoolCache.from_settings(ctx.settings, project, ctx.fetcher)
    ctx.coordinator.progress(project, ctx.owner, pool_done=0, pool_total=len(unlabelled))

    def progress(done: int, total: int) -> None:
        ctx.coordinator.progress(project, ctx.owner, pool_done=done, pool_total=total)

    stats = cache.fill(labelled + unlabelled, schema, seed=ctx.settings.seed, progress=progress)
    log.info("project %s: pool of %d images (%d fetched now, %d failed)", project, stats.images, stats.fetched,
             stats.failed)
    return cache.dataset(schema.modalities) if stats.images else None


def pretrain_job(project: Any) -> dict[str, Any]:
    """The cold start of ``project`` (see the module docstring); returns what /status shows as ``pretrain``."""

    def body(ctx: JobContext, project: str) -> dict[str, Any]:
        ctx.coordinator.begin_pretrain(project, ctx.owner)
        settings, throttle = ctx.settings, [0.0]

        def report(force: bool = True, **fields: Any) -> dict[str, Any]:
            if force or time.time() - throttle[0] >= PROGRESS_EVERY_S:
                throttle[0] = time.time()
                try:
                    ctx.coordinator.progress(project, ctx.owner, **fields)
                except RedisError as e:  # Redis restarting: keep going (LeaseLost still stops the run)
                    log.warning("project %s: progress not recorded: %s", project, redact(str(e)))
            return fields

        schema = _retry_ls(ctx, project, "reading the project", lambda: ctx.schema(project))
        meta, current = ctx.store.metadata(project), ctx.store.current(project)
        if meta.get("pretrained") and ctx.store.ranking(project).get("model_version") != current:
            # published, but the run died before its ranking (a take-over): rank it now
            outcome = report(pretrain={"state": "done", "version": current})["pretrain"]
            ctx.coordinator.trained(project, current, {"pretrain": meta.get("pretrain")}, owner=ctx.owner)
            return outcome
        reason = skip_reason(meta) if settings.pretrain_minutes else "MTAL_PRETRAIN_MINUTES is 0"
        if reason:
            return _end_pretrain(ctx, project, report(pretrain={"state": "skipped", "reason": reason}))
        tasks = _retry_ls(ctx, project, "listing tasks", lambda: list(ctx.ls.iter_tasks(int(project))))
        cache = PoolCache.from_settings(settings, project, ctx.fetcher)
        fill = cache.fill(tasks, schema, seed=settings.seed, progress=lambda done, total: report(
            False, pretrain={"state": "filling the pool", "fetched": done, "to_fetch": total}))
        if fill.labelled:  # labels the webhooks may not have counted: one training run follows this one
            ctx.coordinator.request_training(project)
        config = pretrain_config(settings)
        pool = {"images": fill.images, "failed": fill.failed, "labelled": fill.labelled}
        if reason := check_pool(fill.images, config):
            log.warning("project %s: %s", project, reason)
            return _end_pretrain(ctx, project, report(pretrain={"state": "refused", "reason": reason, **pool}))
        budget = {"budget_s": config.budget_s, **pool}
        report(pretrain={"state": "pretraining", **budget})
        try:
            version, summary = pretrain_version(
                ctx.store, project, settings, PoolImages(cache.dataset(schema.modalities)), config=config,
                progress=lambda step, loss: report(False, step=step, loss=round(float(loss), 6),
                                                   pretrain={"state": "pretraining", "step": step, **budget}),
                should_stop=ctx.lost.is_set, guard=lambda: ctx.check_owner(project))
        except Exception as e:  # kept in /status "pretrain" after a follow-up training clears "error"
            if not isinstance(e, LeaseLost):
                report(pretrain={"state": "failed", "reason": f"{type(e).__name__}: {e}"[:2000], **budget})
            raise
        keys = ("steps", "resumed_from", "seconds_total", "first_loss", "last_loss", "feature_std", "stopped_by")
        outcome = {"state": "done" if version else "nothing published", "version": version, **pool,
                   **{k: summary.get(k) for k in keys}}
        last = {"step": summary["steps"], "loss": summary["last_loss"] if summary["last_loss"] is not None else ""}
        if version is None:
            return _end_pretrain(ctx, project, report(pretrain=outcome, **last))
        report(pretrain=outcome, **last)
        ctx.coordinator.trained(project, version, {"pretrain": summary}, owner=ctx.owner)  # -> rank job (TypiClust)
        return outcome

    return _run("pretrain", project, body)


def _end_pretrain(ctx: JobContext, project: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A pretrain run that publishes nothing ends here (its follow-up, if any, is enqueued)."""
    ctx.coordinator.finish(project, ctx.owner)
    return fields["pretrain"]


def score_new_job(project: Any) -> dict[str, Any]:
    """Score the pending new tasks of ``project`` (see :mod:`backend.loop.new_tasks`); never touches the run's
    state. While a ranking runs, the tasks wait for it (it hands over those it did not score)."""
    project = _project_id("score_new", project)
    ctx = JobContext.create()
    pending = NewTasks(ctx.coordinator)
    if ctx.coordinator.status(project)["state"] == "ranking":
        pending.done(project, requeue=False)
        return {"scored": 0, "reason": "a ranking is running"}
    tasks = pending.take(project)
    requeue = True
    try:
        schema = ctx.schema(project)

        def guard() -> None:
            if ctx.coordinator.status(project)["state"] == "ranking":
                raise RankingStarted(f"project {project}: a ranking started; it scores the new tasks")

        return score_new_tasks(ctx, project, schema, tasks, guard=guard)
    except RankingStarted as e:
        log.info("%s", e)
        pending.put_back(project, tasks)
        requeue = False
        return {"scored": 0, "reason": "a ranking started"}
    except Exception as e:
        if ls_unreachable(e):  # try again with the next import or ranking
            pending.put_back(project, tasks)
            requeue = False
        log.error("project %s: scoring %d new tasks failed: %s", project, len(tasks), redact(str(e)))
        raise
    finally:
        pending.done(project, requeue=requeue)


def _in_val(sample_id: str, fraction: float) -> bool:
    """Deterministic hold-out by task id: the same tasks stay in validation across runs."""
    return fraction > 0 and (zlib.crc32(str(sample_id).encode()) % 1000) < fraction * 1000

