"""One training round of a project: continue the current version on the labelled tasks, evaluate it,
gate it against its parent (:func:`quality_gate`) and publish it to the store.

Driven by the train job (:mod:`backend.loop.jobs`, which owns the Label Studio / coordinator plumbing)
and directly by tests and benchmarks.
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from backend.labelstudio.label_config import ProjectSchema
from backend.serving.prefill import config_from, prefill_thresholds
from backend.serving.store import ModelStore
from backend.serving.strategy import strategy_for
from backend.settings import Settings
from mtal_models.data.sample import Sample
from mtal_models.metrics import mdsq_score
from mtal_models.training import TrainConfig, evaluate, fit, load_checkpoint, make_loader, save_checkpoint

__all__ = ["quality_gate", "train_version"]

log = logging.getLogger(__name__)
_VERSION_KEYS = ("version", "number", "parent", "created", "checkpoint_sha256", "project", "current")


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
    unlabelled: Sequence[Sample] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Continue the current version's weights on ``train`` (a fresh optimizer and poly schedule per
    round), evaluate on ``val`` (with the edit cost of the prefill), publish the new version atomically with
    the display thresholds chosen on ``val`` (none without ``val``: 0.3). ``guard()`` runs under the store's
    write lock right before the version is written, and may raise to stop it (a run that lost its lease).
    ``unlabelled``: image-only samples (the project's pool) for the semi-supervised term when
    ``settings.semi_weight`` > 0 (streamed, never held). Returns (version, metrics)."""
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
        semi_weight=settings.semi_weight,
    )
    ids = {s.id for s in train}
    sample_weights = {k: dict(v) for k, v in (weights or {}).items() if k in ids} or None
    pool = unlabelled if settings.semi_weight > 0 and unlabelled is not None and len(unlabelled) else None
    result = fit(model, list(train), config, progress=progress, sample_weights=sample_weights, unlabelled=pool)
    metrics: dict[str, Any] = {"train_loss": result.history[-1] if result.history else None,
                               "n_train": len(train), "n_val": len(val), "n_unlabelled": result.unlabelled,
                               "epochs": result.epochs_run}
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
