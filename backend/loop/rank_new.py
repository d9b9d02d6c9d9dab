"""Score tasks the current ranking does not hold (imported after it), without re-ranking the project.

The incremental counterpart of :func:`backend.loop.rank_pass.rank_tasks`, run by
:func:`backend.loop.jobs.score_new_job` for the tasks :class:`backend.loop.new_tasks.NewTasks` collected. With
the current version and the project's strategy (its stored state loaded, as a full ranking would), each new
unlabelled task gets one prediction pushed (pre-annotations, the requested modalities ticked, a score, the
version), and an entry in the stored ranking, so /predict answers it from there and the next import does
not push it again.

**Score scale.** A full ranking gives its ``M`` candidates ``r / M`` by rank ``r`` of their strategy score
(:mod:`backend.loop.rank_fields`) and stores each raw score (``strategy_score``). A new task of raw score
``s`` goes after the ``k`` ranked tasks that score higher (ties count half): ``max(0, (k - 0.5) / M)``,
between its two ranked neighbours (:func:`placed_scores`). A ranking stored without raw scores (before
#31) has nothing to compare with: the new tasks get 0.5 until the next ranking. For strategies whose image
score depends on the pool (``coreset``, ``mtal_diversity``, MTAL's diversity factor), the new tasks are
scored as a pool of their own, which only approximates their place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from backend.labelstudio.convert import predictions_to_results
from backend.labelstudio.label_config import ProjectSchema
from backend.loop.rank_fields import requested_modalities
from backend.loop.rank_pass import RankContext, _score_tasks
from backend.loop.result_spool import ResultSpool
from backend.loop.served import PUSH, ServedTasks
from backend.serving.prefill import Prefill
from backend.serving.strategy import strategy_for
from backend.serving.task_score import UNLABELLED_MAX, is_labelled, placed_score
from mtal_models.strategies import concat_pool
from mtal_models.training import load_checkpoint

__all__ = ["UNPLACED_SCORE", "is_labelled", "placed_scores", "score_new_tasks"]

log = logging.getLogger(__name__)
UNPLACED_SCORE = 0.5  # a new task's score when the ranking stored no raw scores to place it among


def placed_scores(raw: Sequence[float | None], ranked: Sequence[float | None] | None) -> list[float]:
    """LS scores of new tasks of strategy scores ``raw`` (higher = label first; None = not finite, last)
    among a ranking's ``ranked`` raw scores (M of them, at scores 0, 1/M, ...; None = ranked last): a task
    after ``k`` ranked ones scoring higher (ties half) gets ``max(0, (k - 0.5) / M)``. ``ranked`` None (not
    stored): :data:`UNPLACED_SCORE` for all; empty (no unlabelled task was ranked): 0."""
    if ranked is None:
        return [UNPLACED_SCORE] * len(raw)
    if not ranked:
        return [0.0] * len(raw)
    # negated raw scores, ascending: placed_score's certainty order (higher raw score = less certain)
    ascending = sorted(-v for v in ranked if v is not None)
    m = len(ranked)
    last = min((m - 0.5) / m, UNLABELLED_MAX)  # not finite: after every ranked task
    return [last if s is None else placed_score(-s, ascending, total=m) if ascending else 0.0 for s in raw]


def _stored_raw(held: Mapping[str, Mapping[str, Any]]) -> list[float | None] | None:
    """The ranking's raw strategy scores (None entries: stored as not finite), or None if it stored none."""
    if held and not any("strategy_score" in e for e in held.values() if isinstance(e, Mapping)):
        return None
    return [e.get("strategy_score") if isinstance(e, Mapping) else None for e in held.values()]


def _served(ctx: Any) -> ServedTasks | None:
    """The claims of the job's queue Redis (``ctx.coordinator``), None for a context without one."""
    coordinator = getattr(ctx, "coordinator", None)
    return None if coordinator is None else ServedTasks(coordinator.redis)


def score_new_tasks(ctx: RankContext, project: str, schema: ProjectSchema, tasks: Sequence[Mapping[str, Any]],
                    guard: Callable[[], None] | None = None) -> dict[str, Any]:
    """Score and push the ``tasks`` (LS task dicts with ``id`` and ``data``) that are unlabelled and not in
    the current version's ranking; add them to it; a task a /predict answered already is ranked but not
    pushed (:mod:`backend.loop.served`, on ``ctx.coordinator``'s Redis when the context has one). ``guard()``
    runs before the push and the ranking write and may raise to stop them (a full ranking started). Returns a
    summary {"version", "scored", "pushed", "skipped", "reason"?}."""
    guard = guard or (lambda: None)
    store, settings = ctx.store, ctx.settings
    version = store.current(project)
    ranking = store.ranking(project)
    if version is None or ranking.get("model_version") != version:
        log.info("project %s: %d new tasks wait for the first ranking of %s", project, len(tasks), version)
        return {"version": version, "scored": 0, "pushed": 0, "skipped": len(tasks),
                "reason": "no ranking of the current version yet"}
    held = ranking.get("tasks") or {}
    unique = {str(t["id"]): t for t in tasks}
    fresh = [t for key, t in unique.items() if key not in held and not is_labelled(t)]
    if not fresh:
        return {"version": version, "scored": 0, "pushed": 0, "skipped": len(tasks)}
    model = load_checkpoint(store.checkpoint_path(project, version), map_location="cpu").model
    model = model.to(settings.torch_device()).eval()
    strategy = strategy_for(settings, schema)
    strategy.load_state((ranking.get("strategy_state") or {}).get(strategy.name, {}))
    prefill = Prefill.for_version(settings, store.metadata(project, version))
    with ResultSpool(store.tmp_dir(project)) as spool:
        rows, parts, _ = _score_tasks(ctx, model, strategy, schema, fresh, set(), spool, prefill)
        if not rows:
            return {"version": version, "scored": 0, "pushed": 0, "skipped": len(tasks),
                    "reason": "no image could be fetched"}
        sensor = [m for m in schema.modalities if m not in schema.annotatable]
        labelled = {m: torch.tensor([m in r["labelled"] or m in sensor for r in rows]) for m in schema.modalities}
        everyone = list(range(len(rows)))
        selection = strategy.select(concat_pool(parts), labelled, budget=len(rows))
        raw = [v if math.isfinite(v) else None for v in selection.scores.double().tolist()]
        scores = placed_scores(raw, _stored_raw(held))
        requested = requested_modalities(selection, strategy.unit, labelled, everyone, schema.annotatable)

        guard()
        latest = store.ranking(project)  # a ranking may have been stored meanwhile: never push twice
        if latest.get("model_version") != version:
            return {"version": version, "scored": 0, "pushed": 0, "skipped": len(tasks),
                    "reason": "a new ranking replaced the current one"}
        now_held = latest.get("tasks") or {}
        keep = [i for i in everyone if str(rows[i]["id"]) not in now_held]
        served = _served(ctx)  # tasks a /predict answered meanwhile have their prediction: not pushed again
        mine = None if served is None else served.claim(project, version, [rows[i]["id"] for i in keep], PUSH)
        predictions = []
        for i in (keep if mine is None else [i for i in keep if str(rows[i]["id"]) in mine]):
            choices = predictions_to_results({}, schema, *rows[i]["size"], requested=requested.get(i) or None)
            predictions.append({"task": int(rows[i]["id"]), "result": spool.get(rows[i]["spooled"]) + choices,
                                "score": scores[i], "model_version": version})
    try:
        pushed = ctx.ls.create_predictions_bulk(int(project), predictions) if predictions else 0
    except Exception:
        if served is not None:  # not pushed: a /predict may serve them until the job tries again
            served.release(project, version, [p["task"] for p in predictions], PUSH)
        raise
    guard()
    entries = {str(rows[i]["id"]): {"score": scores[i], "requested": requested.get(i, []),
                                    "strategy_score": raw[i], "added": True} for i in keep}
    latest = store.ranking(project)
    if latest.get("model_version") == version:
        store.save_ranking(project, {**latest, "tasks": {**entries, **(latest.get("tasks") or {})}})
    log.info("project %s: scored %d new tasks with %s (%s), pushed %d predictions", project, len(keep), version,
             strategy.name, pushed)
    return {"version": version, "scored": len(keep), "pushed": pushed, "skipped": len(tasks) - len(keep)}
