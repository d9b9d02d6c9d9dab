"""The RQ jobs: train on every annotation in Label Studio, then rank the project's tasks.

Top-level functions taking plain ids (RQ imports them by path); the only place that joins Label
Studio (:mod:`backend.labelstudio.client`), the model core (:mod:`mtal_models`) and the model store.

train_job(project)
    Reads ALL labelled tasks from Label Studio (the source of truth: a lost webhook loses nothing),
    builds the partial-label dataset (image cache reused), continues from the current version's
    weights, holds out a validation split, trains with the strategy's training options (MTAL sample
    weights, committee, MTPSL term), publishes a new version with its metrics (atomic), then enqueues
    the rank job. A failure is recorded in the coordinator and never touches the current version.
rank_job(project)
    Scores every task with the project's strategy in one pass that also produces the
    pre-annotations, pushes one prediction per unlabelled task (score: low = label first, cluster,
    the new model version, the requested modalities ticked in the choices tag), sets the project's
    ``model_version`` and ``sampling = "Uncertainty sampling"`` so ``/next`` serves that order, and
    stores the ranking for ``/predict``. Unlabelled tasks it finds without a score afterwards (imported
    while it ran) are handed to score_new_job.
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
import re
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError
from rq import get_current_job

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAPIError
from backend.labelstudio.images import ImageFetcher
from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import prepare_tasks
from backend.logs import redact
from backend.loop.coordinator import Coordinator, LeaseLost
from backend.loop.new_tasks import NewTasks, RankingStarted, queue_unscored
from backend.loop.pretrain_round import PoolImages, pretrain_config, pretrain_version, skip_reason
from backend.loop.queue import open_queue
from backend.loop.rank_new import score_new_tasks
from backend.loop.rank_pass import NothingFetched, rank_subset, rank_tasks
from backend.loop.train_round import train_version
from backend.serving.model import MTALModel, load_schema
from backend.serving.pool import PoolCache, PooledFetcher
from backend.serving.store import ModelStore, version_number
from backend.settings import Settings
from mtal_models.training.pretrain import check_pool

__all__ = ["JobContext", "configure", "ls_unreachable", "pretrain_job", "rank_job", "score_new_job",
           "train_job"]

log = logging.getLogger(__name__)
_configured: Settings | None = None
PROGRESS_EVERY_S = 1.0  # the pretrain's step reports to /status, at most one per this many seconds


def configure(settings: Settings | None) -> None:
    """Jobs running inside the server (embedded queue) use the server's settings, not the environment."""
    global _configured
    _configured = settings


@dataclass
class JobContext:
    """Everything a job needs, built once per job from the settings."""

    settings: Settings
    store: ModelStore
    coordinator: Coordinator
    ls: LabelStudioAPI
    fetcher: ImageFetcher
    owner: str | None = None  # the RQ job id that owns the run (None outside RQ: unchecked)
    lost: threading.Event = field(default_factory=threading.Event)  # set once the run was taken over

    def check_owner(self, project: str) -> None:
        """LeaseLost when this job's run was taken over (called before every write that outlives it)."""
        self.coordinator.check_owner(project, self.owner)

    @classmethod
    def create(cls) -> JobContext:
        settings = _configured or Settings.from_env()
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise RuntimeError("training needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read annotations")
        return cls(
            settings=settings,
            store=ModelStore(settings.model_dir, device=settings.torch_device()),
            coordinator=Coordinator(open_queue(settings.redis_url, start_worker=False), lease_s=settings.lease_s),
            ls=LabelStudioAPI(settings.label_studio_url, settings.label_studio_api_key),
            fetcher=ImageFetcher(
                settings.label_studio_url,
                settings.label_studio_api_key,
                allow_hosts=settings.allow_hosts,
                cache_dir=settings.cache_dir,
            ),
        )

    def schema(self, project: str) -> ProjectSchema:
        """The project's schema from its current labeling config in Label Studio; makes sure the store
        has a version matching it (a fresh initial one if the config changed its modalities)."""
        config = self.ls.get_project(int(project))["label_config"]
        MTALModel(project, config, self.settings, self.store).setup()
        return load_schema(config, self.settings.dense_fields)


def _run(stage: str, project: Any, body: Any) -> Any:
    """Run ``body(ctx, project)``; on failure record the error (the state machine gives the label
    counts back and honours follow-ups) and re-raise so RQ keeps the traceback too."""
    project = _project_id(stage, project)
    job = get_current_job()
    owner = job.id if job is not None else None
    ctx = None
    try:
        ctx = JobContext.create()
        ctx.owner = owner
        with ctx.coordinator.hold(project, owner) as lost:  # the lease: a killed job's run is taken over
            ctx.lost = lost
            return body(ctx, project)
    except LeaseLost as e:  # another run owns the project now: leave its state, versions and ranking alone
        log.warning("%s job of project %s stopped: %s", stage, project, e)
        raise
    except Exception as e:
        if ctx is not None:
            coordinator = ctx.coordinator
        else:
            coordinator = Coordinator(open_queue((_configured or Settings.from_env()).redis_url, start_worker=False))
        try:
            coordinator.fail(project, f"{stage}: {type(e).__name__}: {e}", owner=owner)
        except LeaseLost:
            log.warning("%s job of project %s failed after its run was taken over: %s", stage, project, e)
        raise


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


def rank_job(project: Any) -> dict[str, Any]:
    """Rank every task of ``project`` with the current version and push predictions to Label Studio;
    Label Studio unreachable: the ranking is retried (see :func:`_retry_ls`)."""

    left_out: set[str] = set()  # MTAL_RANK_MAX_TASKS: unlabelled tasks this ranking does not score

    def rank(ctx: JobContext, project: str) -> dict[str, Any]:
        schema = ctx.schema(project)
        version = ctx.store.current(project)
        labelled = {t["id"]: t for t in ctx.ls.iter_labelled_tasks(int(project))}
        tasks = list(labelled.values()) + [
            t for t in ctx.ls.iter_tasks(int(project), only_unlabelled=True) if t["id"] not in labelled
        ]
        tasks, skipped = rank_subset(tasks, set(labelled), ctx.settings.rank_max_tasks,
                                     ctx.settings.seed + (version_number(version, project) or 0))
        left_out.clear()
        left_out.update(skipped)
        # Images the train job's pool fill decoded are read from the pool, not fetched and decoded again.
        fetcher = PooledFetcher(PoolCache.from_settings(ctx.settings, project, None), ctx.fetcher)
        summary = rank_tasks(replace(ctx, fetcher=fetcher), project, schema, version, tasks, set(labelled),
                             guard=lambda: ctx.check_owner(project), unscored=skipped)
        log.info("project %s: ranking read %d images from the pool, fetched %d", project, fetcher.hits,
                 fetcher.misses)
        return summary

    def body(ctx: JobContext, project: str) -> dict[str, Any]:
        ctx.coordinator.progress(project, ctx.owner, state="ranking")
        summary = _retry_ls(ctx, project, "ranking", lambda: rank(ctx, project))
        ctx.coordinator.finish(project, ctx.owner)
        queue_unscored(ctx.store, ctx.ls, ctx.coordinator, project, left_out)
        return summary

    return _run("rank", project, body)


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


def ls_unreachable(e: BaseException) -> bool:
    """Label Studio did not answer, or answered that it is down or overloaded (no response, 408, 429, 5xx),
    or not one task image could be fetched: worth another try later."""
    if isinstance(e, LabelStudioAPIError):
        return e.status is None or e.status in (408, 429) or e.status >= 500
    return isinstance(e, NothingFetched)


def _retry_ls(ctx: JobContext, project: str, what: str, step: Any) -> Any:
    """``step()``, tried again while Label Studio is unreachable: ``ls_retries`` more times after waits of
    ``ls_backoff_s`` doubling up to 60 s (the lease is renewed meanwhile); each wait is shown in /status as
    the ``error``, cleared on success. The last failure is raised (the run fails, the project goes back to
    idle with its counts)."""
    settings, attempt = ctx.settings, 0
    while True:
        try:
            result = step()
        except Exception as e:
            if not ls_unreachable(e) or attempt == settings.ls_retries:
                raise
            wait = min(60.0, settings.ls_backoff_s * 2**attempt)
            attempt += 1
            message = (f"{what}: Label Studio unreachable (try {attempt} of {settings.ls_retries + 1}, "
                       f"next in {wait:g} s): {e}")
            log.warning("project %s: %s", project, message)
            ctx.coordinator.progress(project, ctx.owner, error=message[:2000], ls_retries=attempt)
            time.sleep(wait)
            continue
        if attempt:
            ctx.coordinator.progress(project, ctx.owner, error="", ls_retries=attempt)
        return result


def _project_id(stage: str, project: Any) -> str:
    """``project`` as a Label Studio project id string; never "7\\n" (int() accepts it)."""
    project = str(project)
    if not re.fullmatch(r"[0-9]{1,20}", project):
        raise ValueError(f"{stage}: {project[:40]!r} is not a Label Studio project id")
    return project


def _in_val(sample_id: str, fraction: float) -> bool:
    """Deterministic hold-out by task id: the same tasks stay in validation across runs."""
    return fraction > 0 and (zlib.crc32(str(sample_id).encode()) % 1000) < fraction * 1000

