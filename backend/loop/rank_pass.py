"""One ranking pass over a project's tasks: score every task with the project's strategy, select, push one
prediction per unlabelled task to Label Studio, store the ranking (and prune older versions' predictions).

Driven by the rank jobs (:mod:`backend.loop.rank_jobs`, which own the Label Studio / coordinator plumbing):
:func:`rank_tasks` in one job; a ranking fanned out over RQ (:mod:`backend.loop.rank_fanout`) runs
:func:`_score_tasks` per chunk job and :func:`select_and_push` in its merge job. Also driven directly by tests
and benchmarks.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import torch

from backend.labelstudio.convert import predictions_to_results
from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import prepare_tasks
from backend.loop.rank_fields import kmeans_clusters, ls_scores, requested_modalities
from backend.loop.result_spool import ResultSpool
from backend.serving.predict import FORWARD_PIXELS, task_scores
from backend.serving.prefill import Prefill
from backend.serving.store import ModelStore, version_number
from backend.serving.strategy import strategy_for
from backend.settings import Settings
from mtal_models.data.sample import collate
from mtal_models.strategies import Strategy, batch_outputs, concat_pool
from mtal_models.strategies.collect import crop_outputs
from mtal_models.training import load_checkpoint

__all__ = ["NothingFetched", "Progress", "RankContext", "load_ranker", "loss_weights", "prune_predictions",
           "rank_subset", "rank_tasks", "select_and_push"]

log = logging.getLogger(__name__)
_CHUNK = 64  # tasks fetched and held in memory at once while ranking
_PUSH_CHUNK = 500  # predictions built and sent to Label Studio at once


Progress = Callable[[int, int], None]  # (tasks scored so far, tasks whose image failed so far)


class NothingFetched(ValueError):
    """Not one task image of a ranking could be fetched (Label Studio or the image store is down)."""


class RankContext(Protocol):
    """What :func:`rank_tasks` needs of a job context."""

    settings: Settings
    store: ModelStore
    ls: Any
    fetcher: Any


def rank_subset(tasks: Sequence[Mapping[str, Any]], labelled_ids: Collection[Any], limit: int,
                seed: int) -> tuple[list[Mapping[str, Any]], set[str]]:
    """``MTAL_RANK_MAX_TASKS``: every labelled task (diversity strategies need them) and a random subset of
    ``limit`` unlabelled ones, drawn with ``seed`` (the rank job: MTAL_SEED + the version number, so that
    consecutive rankings score different tasks), in the input order. Returns (tasks to score, ids (str) of
    the unlabelled tasks left out). ``limit`` 0, or no more unlabelled tasks than ``limit``: all of them."""
    unlabelled = [i for i, t in enumerate(tasks) if t["id"] not in labelled_ids]
    if limit <= 0 or len(unlabelled) <= limit:
        return list(tasks), set()
    drawn = set(random.Random(seed).sample(unlabelled, limit))
    left = {str(tasks[i]["id"]) for i in unlabelled if i not in drawn}
    return [t for i, t in enumerate(tasks) if t["id"] in labelled_ids or i in drawn], left


def rank_tasks(
    ctx: RankContext,
    project: str,
    schema: ProjectSchema,
    version: str,
    tasks: Sequence[Mapping[str, Any]],
    labelled_ids: set[Any],
    guard: Callable[[], None] | None = None,
    unscored: Collection[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score ``tasks`` (labelled ones too: diversity needs them) with the project's strategy (TypiClust for
    a version marked pretrained: :func:`backend.serving.strategy.strategy_for`), push one
    prediction per unlabelled task, point the project at ``version``, store the ranking. ``guard()`` runs
    before every write to Label Studio or the store and may raise to stop them (a run that lost its lease).
    ``unscored``: ids of unlabelled tasks this ranking leaves out (:func:`rank_subset`): they keep their
    entry of the previous stored ranking, and no older version's predictions are deleted (theirs among them).
    ``progress(done, failed)``: see :func:`_score_tasks`. One chunk of :mod:`backend.loop.rank_fanout` in one
    call: a fanned-out ranking runs :func:`load_ranker` and :func:`_score_tasks` per chunk job and
    :func:`select_and_push` in its merge job."""
    model, strategy, prefill, previous = load_ranker(ctx, project, schema, version)
    with ResultSpool(ctx.store.tmp_dir(project)) as spool:
        rows, parts, pooled = _score_tasks(ctx, model, strategy, schema, tasks, labelled_ids, spool, prefill,
                                           progress=progress)
        return select_and_push(ctx, project, schema, version, strategy, previous, rows, parts, pooled, spool.get,
                               guard or (lambda: None), set(unscored))


def load_ranker(ctx: RankContext, project: str, schema: ProjectSchema,
                version: str) -> tuple[Any, Strategy, Prefill, dict[str, Any]]:
    """(network of ``version`` on the settings' device in eval mode, the project's strategy with its stored
    state, the version's prefill, the previous stored ranking)."""
    settings, store = ctx.settings, ctx.store
    model = load_checkpoint(store.checkpoint_path(project, version), map_location="cpu").model
    model = model.to(settings.torch_device()).eval()
    meta = store.metadata(project, version)
    strategy = strategy_for(settings, schema, meta)  # a pretrained version (cold start): TypiClust
    previous = store.ranking(project)
    strategy.load_state((previous.get("strategy_state") or {}).get(strategy.name, {}))
    return model, strategy, Prefill.for_version(settings, meta), previous


def _score_tasks(ctx: RankContext, model: Any, strategy: Strategy, schema: ProjectSchema,
                 tasks: Sequence[Mapping[str, Any]], labelled_ids: set[Any],
                 spool: ResultSpool, prefill: Prefill | None = None, progress: Progress | None = None,
                 ) -> tuple[list[dict[str, Any]], list[Any], list[torch.Tensor]]:
    """One pass over ``tasks`` in chunks: per-batch strategy scores, pooled features [B, D] (CPU), and
    per fetched task a row {id, labelled modalities, size, "spooled": spool key of its pre-annotations,
    "certainty": its ``1 - u`` as /predict computes it (:func:`backend.serving.predict.task_scores`); both
    None for labelled tasks}. A task whose image fails has no row (its reason is logged). ``progress(done,
    failed)`` after every 64 tasks: tasks scored so far, tasks whose image failed so far."""
    prefill = prefill or Prefill()
    settings, size, device = ctx.settings, ctx.settings.image_size, ctx.settings.torch_device()
    rows: list[dict[str, Any]] = []
    parts, pooled = [], []
    failed = 0
    for start in range(0, len(tasks), _CHUNK):
        prepared = prepare_tasks(ctx, tasks[start:start + _CHUNK], schema, size)
        failed += len(tasks[start:start + _CHUNK]) - len(prepared)
        # inputs of one shape and one image size inside it batched together (portrait and landscape photos
        # would pad each other), so that the strategy scores each batch without its padding
        prepared.sort(key=lambda tp: _shape_key(tp[1]))
        for (shape, inside), same in itertools.groupby(prepared, key=lambda tp: _shape_key(tp[1])):
            same = list(same)
            n = max(1, min(settings.predict_batch_size, FORWARD_PIXELS // (shape[0] * shape[1])))  # /predict's bound
            for group in (same[b:b + n] for b in range(0, len(same), n)):
                batch = collate([p.sample for _, p in group], schema.modalities).to(device)
                given = batch.labels if strategy.needs.conditioned else None
                out = batch_outputs(model, batch.images, given, strategy.needs)
                parts.append(strategy.score_batch(out if inside == shape else crop_outputs(out, *inside)))
                pooled.append(out.pooled.detach().cpu())
                for i, (task, p) in enumerate(group):
                    key, certainty = None, None
                    if task["id"] not in labelled_ids:
                        preds = _activated(out.final, i, model)
                        certainty = _certainty(preds, model, p)
                        key = spool.add(prefill.results(preds, schema, p.height, p.width, requested=None, fit=p.fit))
                    rows.append({"id": task["id"], "spooled": key, "labelled": p.labelled,
                                 "size": (p.height, p.width), "certainty": certainty})
        if progress is not None:
            progress(len(rows), failed)
    return rows, parts, pooled


def _shape_key(p: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input shape, the image's own size inside it) of a prepared task (no fit: the whole input)."""
    shape = tuple(p.sample.image.shape[:2])
    return shape, tuple(p.fit.resized) if p.fit is not None else shape


def select_and_push(ctx: RankContext, project: str, schema: ProjectSchema, version: str, strategy: Strategy,
                    previous: Mapping[str, Any], rows: list[dict[str, Any]], parts: list[Any],
                    pooled: list[torch.Tensor], spooled: Callable[[Any], list[dict[str, Any]]],
                    guard: Callable[[], None], unscored: set[str], run: str | None = None) -> dict[str, Any]:
    """Select over the scored pool (``rows``, ``parts``, ``pooled`` as :func:`_score_tasks` gives them, of one
    or more chunks in task order), push one prediction per candidate in chunks of 500 (pre-annotations
    read back with ``spooled(row["spooled"])``), point the project at ``version``, store the ranking (with
    the previous entries of the ``unscored`` tasks, and ``run``: the fanned-out ranking that stored it).
    NothingFetched when ``rows`` is empty."""
    settings, store = ctx.settings, ctx.store
    if not rows:
        raise NothingFetched(f"project {project}: no task image could be fetched; nothing to rank")

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
        pred = {"task": int(rows[i]["id"]), "result": spooled(rows[i]["spooled"]) + choices, "score": scores[i],
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
    if not unscored:  # a subset ranking: the tasks left out keep their last prediction, of an older version
        prune_predictions(ctx.ls, project, version, settings.keep_prediction_versions)
    ids = [str(r["id"]) for r in rows]
    held, kept_weights = previous.get("tasks") or {}, previous.get("weights") or {}
    guard()
    store.save_ranking(project, {
        "model_version": version,
        **({"run": run} if run else {}),
        "strategy": strategy.name,
        "tasks": {**{t: held[t] for t in unscored if t in held},
                  **{str(rows[i]["id"]): {"score": scores[i], "requested": requested.get(i, []),
                                          "certainty": rows[i]["certainty"],
                                          "strategy_score": _finite(selection.scores[i])} for i in candidates}},
        "weights": {**{t: kept_weights[t] for t in unscored if t in kept_weights},
                    **loss_weights(kept_weights, selection.sample_weights(ids), ids, [ids[i] for i in candidates])},
        "strategy_state": {**(previous.get("strategy_state") or {}), strategy.name: strategy.state()},
    })
    log.info("project %s: ranked %d tasks (%d candidates, %d unlabelled left out) with %s, pushed %d predictions",
             project, n, len(candidates), len(unscored), strategy.name, pushed)
    return {"version": version, "strategy": strategy.name, "tasks": n, "candidates": len(candidates),
            "pushed": pushed, "unscored": len(unscored)}


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


def _activated(final: Mapping[str, torch.Tensor], i: int, model: Any) -> dict[str, Any]:
    """Image ``i`` of the batch's raw outputs -> activated arrays (dense [C, H, W], detection [K, 6 + C])."""
    preds = {}
    for name, value in final.items():
        spec = model.modalities[name]
        preds[name] = (spec.activate(value[i : i + 1])[0] if spec.dense else value[i]).float().cpu().numpy()
    return preds


def _certainty(preds: Mapping[str, Any], model: Any, p: Any) -> float:
    """The image's ``1 - u`` on /predict's scale (its own pixels only), stored with the ranking so that
    /predict can place a task the ranking does not hold (:mod:`backend.serving.task_score`)."""
    batch = {name: torch.as_tensor(v)[None] for name, v in preds.items()}
    size = p.fit.resized if p.fit is not None else tuple(p.sample.image.shape[:2])
    return task_scores(batch, model.modalities, [size])[0]


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
