"""The work inside the jobs: one training round, and one ranking pass over a project's tasks.

Kept apart from :mod:`backend.jobs` (which owns the Label Studio / coordinator plumbing) so the two
steps can be driven directly by tests and benchmarks.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch

from backend.convert import predictions_to_results
from backend.labeling import ProjectSchema
from backend.predict import prepare_task
from backend.prefill import Prefill, config_from, prefill_thresholds
from backend.ranking import kmeans_clusters, ls_scores, requested_modalities
from backend.settings import Settings
from backend.spool import ResultSpool
from backend.store import ModelStore, version_number
from backend.strategy_choice import boxmask_modalities, strategy_for
from mtal_models.data.sample import Sample, collate
from mtal_models.metrics import mdsq_score
from mtal_models.strategies import Strategy, batch_outputs, concat_pool
from mtal_models.strategies.collect import crop_outputs
from mtal_models.training import TrainConfig, evaluate, fit, load_checkpoint, make_loader, save_checkpoint

__all__ = ["NothingFetched", "RankContext", "boxmask_modalities", "loss_weights", "prepare_tasks", "prune_predictions",
           "quality_gate", "rank_tasks", "strategy_for", "train_version"]

log = logging.getLogger(__name__)
_CHUNK = 64  # tasks fetched and held in memory at once while ranking
_PUSH_CHUNK = 500  # predictions built and sent to Label Studio at once
_VERSION_KEYS = ("version", "number", "parent", "created", "checkpoint_sha256", "project", "current")


class NothingFetched(ValueError):
    """Not one task image of a ranking could be fetched (Label Studio or the image store is down)."""


def train_version(
    store: ModelStore,
    project: str,
    schema: ProjectSchema,
    settings: Settings,
    train: Sequence[Sample],
    val: Sequence[Sample],
    progress: Callable[[int, int, float], None] | None = None,
    weights: Mapping[str, Mapping[str, float]] | None = None,
    guard: Callable[[], None] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Continue the current version's weights on ``train`` (a fresh optimizer and poly schedule per
    round), evaluate on ``val`` (with the edit cost of the prefill), publish the new version atomically with
    the display thresholds chosen on ``val`` (none without ``val``: 0.3). ``guard()`` runs under the store's
    write lock right before the version is written, and may raise to stop it (a run that lost its lease).
    Returns (version, metrics)."""
    current = store.current(project)
    if current is None:
        raise ValueError(f"project {project} has no version to continue from (call /setup first)")
    meta = store.metadata(project, current)
    model = load_checkpoint(store.checkpoint_path(project, current), map_location="cpu").model
    strategy = strategy_for(settings, schema)
    config = TrainConfig(
        epochs=settings.train_epochs,
        batch_size=max(1, min(settings.train_batch_size, len(train))),
        lr=settings.train_lr,
        device=settings.torch_device(),
        seed=settings.seed + int(meta.get("number", 0)),
        substitution_prob=0.3 if schema.network == "padnet" else 0.0,
        committee=strategy.needs.committee and schema.network == "padnet",
        mtpsl_weight=settings.mtpsl_weight if schema.network == "padnet" and len(schema.modalities) > 1 else 0.0,
    )
    ids = {s.id for s in train}
    sample_weights = {k: dict(v) for k, v in (weights or {}).items() if k in ids} or None
    result = fit(model, list(train), config, progress=progress, sample_weights=sample_weights)
    metrics: dict[str, Any] = {"train_loss": result.history[-1] if result.history else None,
                               "n_train": len(train), "n_val": len(val), "epochs": result.epochs_run}
    if result.box_health:  # degenerate boxes on the last epoch's training steps: a collapse shows in /status
        metrics["box_health"] = _json_safe(result.box_health)
    if val:
        loader = make_loader(list(val), model.modalities, config.batch_size)
        metrics["val"] = _json_safe(evaluate(model, loader, prefill=config_from(settings)))
        parent_val = (meta.get("metrics") or {}).get("val")
        if parent_val and (dsq := _mdsq_or_none(metrics["val"], parent_val, model.modalities)) is not None:
            metrics["mdsq_vs_parent"] = dsq  # MTC's mDSQ with the parent version as the reference (> 1: better)
        if settings.quality_gate > 0:
            parent = load_checkpoint(store.checkpoint_path(project, current), map_location="cpu").model
            metrics["quality_gate"] = quality_gate(metrics["val"], evaluate(parent.to(config.device), loader),
                                                   settings.quality_gate)
    passed = (metrics.get("quality_gate") or {}).get("passed", True)
    new_meta = {k: v for k, v in meta.items() if k not in _VERSION_KEYS}
    new_meta.update(initial=False, source=f"trained on {len(train)} tasks", metrics=metrics, strategy=strategy.name,
                    prefill_thresholds=prefill_thresholds(metrics.get("val"), schema), candidate=not passed)
    if not passed:
        log.warning("project %s: new version stays a candidate: %s", project, metrics["quality_gate"]["reason"])
    tmp = store.tmp_dir(project) / f"train-{uuid.uuid4().hex}.pt"
    try:
        try:
            save_checkpoint(tmp, model.cpu(), epoch=result.epoch, extra={"mtal": new_meta})
        except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as "unexpected pos"
            free = shutil.disk_usage(tmp.parent).free
            raise OSError(f"could not write the checkpoint ({free // 1024} KiB free in {tmp.parent}; disk full?): "
                          f"{str(e).splitlines()[0][:300]}") from e
        return store.publish(project, tmp, new_meta, move=True, check=guard, make_current=passed), metrics
    finally:
        tmp.unlink(missing_ok=True)  # still there when publish refused


def quality_gate(val: Mapping[str, Any], parent_val: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """Whether a new version may become current: its validation multi-task loss ``val`` must be finite and
    at most the parent's on the same validation tasks divided by ``threshold`` (0.5: twice the parent's).
    Returns {"passed", "val_loss", "parent_val_loss", "threshold", "reason"}."""
    loss, parent_loss = val.get("multi_task_loss"), parent_val.get("multi_task_loss")
    limit = parent_loss / threshold if isinstance(parent_loss, float | int) and math.isfinite(parent_loss) else None
    if limit is None:
        passed, reason = True, "the parent has no finite validation loss to compare with"
    elif not isinstance(loss, float | int) or not math.isfinite(loss):
        passed, reason = False, f"validation loss is not finite ({loss}); the parent's is {parent_loss:.4g}"
    else:
        passed = loss <= limit
        reason = (f"validation loss {loss:.4g} vs the parent's {parent_loss:.4g} on the same tasks "
                  f"({'within' if passed else 'above'} the limit {limit:.4g} = parent / {threshold:g})")
    return {"passed": passed, "val_loss": _json_safe(loss), "parent_val_loss": _json_safe(parent_loss),
            "threshold": threshold, "reason": reason}


class RankContext(Protocol):
    """What :func:`rank_tasks` needs of a job context."""

    settings: Settings
    store: ModelStore
    ls: Any
    fetcher: Any


def rank_tasks(
    ctx: RankContext,
    project: str,
    schema: ProjectSchema,
    version: str,
    tasks: Sequence[Mapping[str, Any]],
    labelled_ids: set[Any],
    guard: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Score ``tasks`` (labelled ones too: diversity needs them) with the project's strategy, push one
    prediction per unlabelled task, point the project at ``version``, store the ranking. ``guard()`` runs
    before every write to Label Studio or the store and may raise to stop them (a run that lost its lease)."""
    settings, store = ctx.settings, ctx.store
    device = settings.torch_device()
    model = load_checkpoint(store.checkpoint_path(project, version), map_location="cpu").model.to(device).eval()
    strategy = strategy_for(settings, schema)
    previous = store.ranking(project)
    strategy.load_state((previous.get("strategy_state") or {}).get(strategy.name, {}))
    prefill = Prefill.for_version(settings, store.metadata(project, version))
    with ResultSpool(store.tmp_dir(project)) as spool:
        rows, parts, pooled = _score_tasks(ctx, model, strategy, schema, tasks, labelled_ids, spool, prefill)
        if not rows:
            raise NothingFetched(f"project {project}: no task image could be fetched; nothing to rank")
        return _select_and_push(ctx, project, schema, version, strategy, previous, rows, parts, pooled, spool,
                                guard or (lambda: None))


def _score_tasks(ctx: RankContext, model: Any, strategy: Strategy, schema: ProjectSchema,
                 tasks: Sequence[Mapping[str, Any]], labelled_ids: set[Any],
                 spool: ResultSpool, prefill: Prefill | None = None,
                 ) -> tuple[list[dict[str, Any]], list[Any], list[torch.Tensor]]:
    """One pass over ``tasks`` in chunks: per-batch strategy scores, pooled features [B, D] (CPU), and
    per fetched task a row {id, labelled modalities, size, "spooled": spool key of its pre-annotations, None
    for labelled tasks}."""
    prefill = prefill or Prefill()
    settings, size, device = ctx.settings, ctx.settings.image_size, ctx.settings.torch_device()
    rows: list[dict[str, Any]] = []
    parts, pooled = [], []
    for start in range(0, len(tasks), _CHUNK):
        prepared = prepare_tasks(ctx, tasks[start:start + _CHUNK], schema, size)
        # inputs of one shape and one image size inside it batched together (portrait and landscape photos
        # would pad each other), so that the strategy scores each batch without its padding
        prepared.sort(key=lambda tp: _shape_key(tp[1]))
        n = settings.predict_batch_size
        for (shape, inside), same in itertools.groupby(prepared, key=lambda tp: _shape_key(tp[1])):
            same = list(same)
            for group in (same[b:b + n] for b in range(0, len(same), n)):
                batch = collate([p.sample for _, p in group], schema.modalities).to(device)
                given = batch.labels if strategy.needs.conditioned else None
                out = batch_outputs(model, batch.images, given, strategy.needs)
                parts.append(strategy.score_batch(out if inside == shape else crop_outputs(out, *inside)))
                pooled.append(out.pooled.detach().cpu())
                for i, (task, p) in enumerate(group):
                    key = None if task["id"] in labelled_ids else spool.add(
                        _results(out.final, i, model, schema, p, prefill))
                    rows.append({"id": task["id"], "spooled": key, "labelled": p.labelled,
                                 "size": (p.height, p.width)})
    return rows, parts, pooled


def _shape_key(p: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input shape, the image's own size inside it) of a prepared task (no fit: the whole input)."""
    shape = tuple(p.sample.image.shape[:2])
    return shape, tuple(p.fit.resized) if p.fit is not None else shape


def _select_and_push(ctx: RankContext, project: str, schema: ProjectSchema, version: str, strategy: Strategy,
                     previous: Mapping[str, Any], rows: list[dict[str, Any]], parts: list[Any],
                     pooled: list[torch.Tensor], spool: ResultSpool, guard: Callable[[], None]) -> dict[str, Any]:
    """Select over the scored pool, push one prediction per candidate in chunks of 500 (pre-annotations
    read back from ``spool``), point the project at ``version``, store the ranking."""
    settings, store = ctx.settings, ctx.store

    n = len(rows)
    sensor = [m for m in schema.modalities if m not in schema.annotatable]  # depth/normals: not requestable
    labelled = {m: torch.tensor([m in r["labelled"] or m in sensor for r in rows]) for m in schema.modalities}
    candidates = [i for i, r in enumerate(rows) if r["spooled"] is not None]  # the unlabelled tasks
    selection = strategy.select(concat_pool(parts), labelled, budget=max(1, len(candidates)))
    scores = ls_scores(selection.scores, candidates)
    requested = requested_modalities(selection, strategy.unit, labelled, candidates, schema.annotatable)
    push_clusters = settings.clusters > 0 and len(candidates) <= settings.cluster_push_limit
    clusters = kmeans_clusters(torch.cat(pooled), k=min(settings.clusters, n)) if push_clusters else None

    def prediction(i: int) -> dict[str, Any]:
        choices = predictions_to_results({}, schema, *rows[i]["size"], requested=requested.get(i) or None)
        pred = {"task": int(rows[i]["id"]), "result": spool.get(rows[i]["spooled"]) + choices, "score": scores[i],
                "model_version": version}
        if clusters is not None:
            pred["cluster"] = int(clusters[i])
        return pred

    pushed = 0
    for b in range(0, len(candidates), _PUSH_CHUNK):
        guard()
        pushed += ctx.ls.create_predictions_bulk(int(project), [prediction(i) for i in candidates[b:b + _PUSH_CHUNK]])
    guard()
    if settings.set_sampling and candidates:
        ctx.ls.set_project_ranking(int(project), version)
    prune_predictions(ctx.ls, project, version, settings.keep_prediction_versions)
    ids = [str(r["id"]) for r in rows]
    guard()
    store.save_ranking(project, {
        "model_version": version,
        "strategy": strategy.name,
        "tasks": {str(rows[i]["id"]): {"score": scores[i], "requested": requested.get(i, [])} for i in candidates},
        "weights": loss_weights(previous.get("weights") or {}, selection.sample_weights(ids), ids,
                                [ids[i] for i in candidates]),
        "strategy_state": {**(previous.get("strategy_state") or {}), strategy.name: strategy.state()},
    })
    log.info("project %s: ranked %d tasks (%d candidates) with %s, pushed %d predictions",
             project, n, len(candidates), strategy.name, pushed)
    return {"version": version, "strategy": strategy.name, "tasks": n, "candidates": len(candidates),
            "pushed": pushed}


def loss_weights(previous: Mapping[str, Mapping[str, float]], fresh: Mapping[str, Mapping[str, float]],
                 ids: Sequence[str], candidates: Sequence[str]) -> dict[str, dict[str, float]]:
    """MTAL's per-sample loss weights (s_k(x), eq. 5) to store with a ranking of tasks ``ids``: every
    unlabelled task (``candidates``) takes this ranking's weight, and a labelled task keeps the weight it
    had in the last ranking before it was labelled (tasks labelled before any ranking have none: weight 1).
    Rescoring labelled tasks with the current model would give the ones it already fits weights near 0
    and drop them from training."""
    labelled = set(ids) - set(candidates)
    kept = {t: dict(w) for t, w in previous.items() if t in labelled}
    return {**kept, **{t: dict(fresh[t]) for t in candidates if t in fresh}}


def prune_predictions(ls: Any, project: str, current: str, keep: int) -> list[str]:
    """Delete from Label Studio the predictions of MTAL's older versions of ``project``: every
    ``mtal-<project>-v<N>-*`` version except ``current`` and the ``keep - 1`` newest others (``keep`` 0:
    nothing). Versions of other backends or imports are never touched. Returns the deleted versions; a
    failure is logged, never raised (the ranking is already pushed)."""
    if keep <= 0:
        return []
    try:
        ours = {v: n for v in ls.model_versions(int(project)) if (n := version_number(v, project)) is not None}
        others = sorted((v for v in ours if v != current), key=lambda v: ours[v], reverse=True)
        stale = others[keep - 1:]
        for v in stale:
            ls.delete_predictions(int(project), v)
    except Exception as e:  # pruning is housekeeping: the new ranking is in place either way
        log.warning("project %s: could not delete the predictions of older versions: %s", project, e)
        return []
    if stale:
        log.info("project %s: deleted the predictions of %d older version(s): %s", project, len(stale), stale)
    return stale


def prepare_tasks(ctx: RankContext, tasks: Sequence[Mapping[str, Any]], schema: ProjectSchema, size: int) -> list:
    """[(task, PreparedTask)] for every task whose image could be fetched, in order; images fetched by a
    thread pool (and kept in the on-disk cache for the next run) and decoded to the network input
    through the image geometry (shorter side ``size``, longer side at most ``image_max_size``); a bad
    image is logged and skipped."""
    cap = getattr(getattr(ctx, "settings", None), "image_max_size", None)
    max_size = None if cap is None else max(size, cap)  # None: prepare_task's default, max(1024, size)

    def one(task: Mapping[str, Any]) -> Any:
        try:
            return prepare_task(task, schema, ctx.fetcher, size, max_size)
        except Exception as e:  # one bad image must not stop the run
            log.error("task %s skipped: %s", task.get("id"), e)
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [(t, _finite(p, schema)) for t, p in zip(tasks, pool.map(one, tasks), strict=True) if p is not None]


def _finite(p: Any, schema: ProjectSchema) -> Any:
    """Mask non-finite pixels of the float maps (depth [H, W], normals [H, W, 3] from task data) of a
    prepared task as invalid (0: the losses skip depth <= 0 and zero normals; NaN * 0 is still NaN, so
    one NaN pixel would make every loss of the run NaN). A map with no finite pixel left is dropped. Each
    case is logged with the task id."""
    sample = p.sample
    for name in list(sample.labels):
        arr = sample.labels[name]
        if not (isinstance(arr, np.ndarray) and arr.dtype.kind == "f"):
            continue
        bad = ~np.isfinite(arr)
        if schema.modalities[name].kind == "normals" and arr.ndim == 3:
            bad = np.broadcast_to(bad.any(axis=-1, keepdims=True), arr.shape)  # a vector is valid as a whole
        if not bad.any():
            continue
        n_bad = int(bad.any(axis=-1).sum() if bad.ndim == 3 else bad.sum())
        if bad.all():
            log.warning("task %s: %s map dropped: no finite value (NaN/Inf)", p.task_id, name)
            del sample.labels[name]
            sample.present[name] = False
            p.labelled.discard(name)
            continue
        log.warning("task %s: %s map: %d non-finite pixels (NaN/Inf) masked as invalid", p.task_id, name, n_bad)
        sample.labels[name] = np.where(bad, np.float32(0), arr).astype(arr.dtype, copy=False)
    return p


def _results(final: Mapping[str, torch.Tensor], i: int, model: Any, schema: ProjectSchema, p: Any,
             prefill: Prefill) -> list[dict[str, Any]]:
    """Pre-annotations of image ``i`` of the batch at its original size through its Fit (no choices item)."""
    preds = {}
    for name, value in final.items():
        spec = model.modalities[name]
        preds[name] = (spec.activate(value[i : i + 1])[0] if spec.dense else value[i]).float().cpu().numpy()
    return prefill.results(preds, schema, p.height, p.width, requested=None, fit=p.fit)


def _mdsq_or_none(val: Mapping[str, Any], reference: Mapping[str, Any], modalities: Mapping[str, Any]) -> float | None:
    """mDSQ of ``val`` against ``reference`` metrics for a det+seg network; None when not det+seg or a
    figure is missing or zero (an untrained parent has mAP 0)."""
    dsq = mdsq_score(val, reference, modalities)
    return dsq if dsq is not None and math.isfinite(dsq) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
