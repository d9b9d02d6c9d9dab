"""The simulator's cold start (issue #25), on the backend's code paths: each seed's trunk pretrained on the
whole pool first (:func:`mtal_models.training.pretrain.pretrain`, steps instead of the backend's minutes so
runs repeat), and round 0's images chosen by TypiClust on the network's pooled features instead of the
seeded random draw."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mtal_models.data import LabelPool
from mtal_models.nets.base import MultiTaskNet
from mtal_models.simulate.config import SimConfig
from mtal_models.simulate.sim_data import SimData
from mtal_models.strategies import collect_pool_outputs, get_strategy
from mtal_models.training import load_checkpoint, make_loader, save_checkpoint
from mtal_models.training.pretrain import PretrainConfig, pretrain

__all__ = ["pretrained_start", "typical_images"]


def pretrained_start(config: SimConfig, data: SimData, model: MultiTaskNet, seed: int, out: Path,
                     key: Mapping[str, Any]) -> None:
    """``model``'s trunk pretrained on every pool image (``config.pretrain_steps`` steps, no time limit), in
    place; computed once per seed and settings ``key`` and shared by every strategy
    (``out/pretrain/seed<seed>.pt``)."""
    path = out / "pretrain" / f"seed{seed}.pt"
    if path.is_file():
        ck = load_checkpoint(path)
        if ck.extra.get("settings") == key:
            model.load_state_dict(ck.model_state)
            return
    images = [s.image for s in data.pool]
    pretrain(model, images, PretrainConfig(steps=config.pretrain_steps, budget_s=0, seed=seed,
                                           min_images=min(32, max(2, len(images)))))
    save_checkpoint(path, model, epoch=0, extra={"settings": dict(key)})


def typical_images(config: SimConfig, data: SimData, model: MultiTaskNet, seed: int) -> list[int]:
    """Round 0's images by TypiClust on ``model``'s pooled features of the pool (sorted indices)."""
    count = config.initial_count(len(data.pool))
    strategy = get_strategy("typiclust", batch=count, seed=seed)
    pool = LabelPool(len(data.pool), list(data.modalities))
    samples = [pool.apply(s, i) for i, s in enumerate(data.pool)]  # images only: nothing is labelled yet
    loader = make_loader(samples, data.modalities, config.batch_size * 2)
    scores = collect_pool_outputs(model, loader, strategy, device=next(model.parameters()).device)
    labelled = {m: torch.zeros(len(data.pool), dtype=torch.bool) for m in data.modalities}
    selection = strategy.select(scores, labelled, count * len(data.modalities))
    return sorted(int(i) for i in selection.by_image())
