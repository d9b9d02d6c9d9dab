"""The cold start's pretrain round (issue 25): train the current version's trunk on the project's unlabelled
pool with :func:`mtal_models.training.pretrain.pretrain`, then publish it as a version marked ``"pretrained"``.

Driven by the pretrain job (:func:`backend.loop.jobs.pretrain_job`, which owns the Label Studio / coordinator
plumbing and the pool fill) and directly by tests.

Files under the project's store directory (``MODEL_DIR/<project>/``)::

    pretrain.ckpt    the resume state (trunk, SimSiam heads, optimizer, step), written every
                     ``save_every`` steps and when the call ends; removed once the version is published
    pretrain.json    {"version": the version it started from, "seconds": pretraining time spent so far}

A worker killed mid-pretrain leaves both; the next pretrain of the project resumes from the checkpoint (when
it was started from the same version and fits the network) with what is left of ``MTAL_PRETRAIN_MINUTES``:
the budget counts over resumes, so a kill never buys more time.

What is pretrained: only a version trained on no label, from random weights (:func:`skip_reason`). With
ImageNet (or other) start weights the pretrain is skipped: docs/training.md expects a short SimSiam run at
a constant 1e-3 to erode them, and no measurement says otherwise yet.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.loop.train_round import _json_safe
from backend.serving.store import ModelStore, atomic_write_json
from backend.settings import Settings
from mtal_models.training import load_checkpoint, save_checkpoint
from mtal_models.training.pretrain import PretrainConfig, pretrain, trunk_of

__all__ = ["CHECKPOINT", "SIDECAR", "PoolImages", "pretrain_config", "pretrain_due", "pretrain_version",
           "skip_reason"]

log = logging.getLogger(__name__)
CHECKPOINT = "pretrain.ckpt"
SIDECAR = "pretrain.json"
_NOT_INHERITED = ("version", "number", "parent", "created", "checkpoint_sha256", "project", "current")
_STEPS = 1_000_000  # the time box, not a step count, ends a backend pretrain


def pretrain_config(settings: Settings) -> PretrainConfig:
    """The backend's pretrain options: ``MTAL_PRETRAIN_MINUTES`` as the budget (over resumes), ``MTAL_SEED``;
    the rest are the core's defaults (batch 8, 96 x 128 views, at least 32 pool images)."""
    return PretrainConfig(steps=_STEPS, budget_s=settings.pretrain_minutes * 60.0, seed=settings.seed)


def skip_reason(meta: Mapping[str, Any]) -> str | None:
    """Why the version with metadata ``meta`` is not pretrained on (a sentence for /status), or None."""
    if meta.get("pretrained"):
        return "the current version is already pretrained"
    if not meta.get("initial"):
        return "the current version was trained on labels: training runs continue from it"
    weights = (meta.get("start") or {}).get("weights")
    if weights != "random":
        return (f"the network does not start from random weights ({weights or meta.get('source')}): a short "
                "self-supervised run would erode them (docs/training.md), so it is skipped")
    return None


def pretrain_due(store: ModelStore, project: str) -> bool:
    """True while ``project`` has a current version and no version trained on labels or pretrained: the
    triggers (/setup, "Start Training" before any label) request a pretrain only then."""
    if store.current(project) is None:
        return False
    return all(meta.get("initial") and not meta.get("pretrained") for meta in store.list_versions(project))


class PoolImages(Sequence[np.ndarray]):
    """The pool's images as :func:`pretrain` reads them: ``images[i]`` is ``dataset[i].image`` (uint8
    [H, W, 3]), read from disk per item (:class:`backend.serving.pool.PoolDataset`)."""

    def __init__(self, dataset: Sequence[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self.dataset[index].image


def pretrain_version(
    store: ModelStore,
    project: str,
    settings: Settings,
    images: Sequence[Any],
    *,
    config: PretrainConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    guard: Callable[[], None] | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """Pretrain the current version's trunk on ``images`` (uint8 [H, W, 3] arrays, lazy is fine), resuming
    from the project's checkpoint when there is a usable one, and publish the result as a new current
    version with ``"pretrained": True`` and the run's summary under ``"pretrain"``. ``progress(step, loss)``:
    after every step (steps count over resumes). ``should_stop()``: polled before every step; when it
    stops the run, ``guard()`` (which runs again under the store's write lock right before the version is
    written) is expected to raise. Raises PretrainRefused for a pool under ``config.min_images``.

    Returns (version, summary); version None (nothing published) when no step fitted in the budget."""
    config = config or pretrain_config(settings)
    current = store.current(project)
    if current is None:
        raise ValueError(f"project {project} has no version to pretrain (call /setup first)")
    meta = store.metadata(project, current)
    device = settings.torch_device()
    model = load_checkpoint(store.checkpoint_path(project, current), map_location="cpu").model.to(device)
    pdir = store.project_dir(project, create=True)
    ckpt, sidecar = pdir / CHECKPOINT, pdir / SIDECAR
    start, spent = _resume_state(ckpt, sidecar, current, model)
    resumed_from = int(start["step"]) if start is not None else 0
    left = config.budget_s - spent
    run_config = config  # no budget (0): the steps end it
    if config.budget_s and left < 1.0:  # the budget is spent: publish what the checkpoint holds, no more steps
        run_config = replace(config, steps=resumed_from)
    elif config.budget_s:
        run_config = replace(config, budget_s=left)
    began = time.monotonic()

    def record(step: int) -> None:
        atomic_write_json(sidecar, {"version": current, "seconds": spent + time.monotonic() - began, "step": step})

    def on_step(step: int, loss: float) -> None:
        if step % config.save_every == 0:  # the checkpoint of this step is written right after
            record(step)
        if progress is not None:
            progress(step, loss)

    if start is None:
        record(0)
    result = pretrain(model, images, run_config, progress=on_step, start=start, checkpoint=ckpt,
                      should_stop=should_stop, device=device)
    record(result.steps)
    summary = {**result.summary(), "resumed_from": resumed_from, "seconds_total": round(spent + result.seconds, 1),
               "budget_s": config.budget_s, "parent": current}
    summary["config"] = {k: v for k, v in summary["config"].items() if k != "steps"}  # the budget ends it
    if result.stopped_by == "stop" and guard is not None:
        guard()  # the run was taken over: raises before anything is published
    if result.steps == 0:
        log.warning("project %s: no pretrain step fitted in the budget; nothing published", project)
        for path in (ckpt, sidecar):  # the next trigger starts afresh
            path.unlink(missing_ok=True)
        return None, summary
    new_meta = {k: v for k, v in meta.items() if k not in _NOT_INHERITED}
    new_meta.update(pretrained=True, pretrain=_json_safe(summary), initial=True,
                    source=f"self-supervised pretraining on {result.images} pool images ({result.steps} steps)")
    tmp = store.tmp_dir(project) / f"pretrain-{uuid.uuid4().hex}.pt"
    try:
        save_checkpoint(tmp, model.cpu(), extra={"mtal": new_meta})
        version = store.publish(project, tmp, new_meta, move=True, check=guard)
    finally:
        tmp.unlink(missing_ok=True)
    for path in (ckpt, sidecar):  # published: a later pretrain (none is due now) starts afresh
        path.unlink(missing_ok=True)
    log.info("project %s: pretrained %s from %s: %s", project, version, current,
             {k: summary[k] for k in ("steps", "resumed_from", "seconds_total", "first_loss", "last_loss")})
    return version, summary


def _resume_state(ckpt: Path, sidecar: Path, current: str, model: torch.nn.Module) -> tuple[Any, float]:
    """(resume state or None, seconds already spent) from the checkpoint a killed run left, when it was
    started from ``current`` and its trunk fits ``model``; anything else is discarded with a warning."""
    if not ckpt.is_file():
        return None, 0.0
    try:
        side = json.loads(sidecar.read_text(encoding="utf-8"))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        want = trunk_of(model).state(model)  # type: ignore[arg-type]
        got = state["trunk"]
        if side.get("version") != current:
            raise ValueError(f"it was started from version {side.get('version')}, the current one is {current}")
        if any(k not in got or tuple(got[k].shape) != tuple(v.shape) for k, v in want.items()):
            raise ValueError("its trunk does not fit the current network")
        spent = float(side.get("seconds", 0.0))
        return state, spent if math.isfinite(spent) and spent >= 0 else 0.0
    except Exception as e:  # a foreign, torn or stale checkpoint: start afresh rather than fail the run
        log.warning("pretrain checkpoint %s not resumed: %s", ckpt, e)
        ckpt.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return None, 0.0

