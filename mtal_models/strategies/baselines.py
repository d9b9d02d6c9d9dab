"""Baselines the papers compare against: Random, CoreSet (k-center greedy), LL4AL (loss prediction).

All three are image-level: a chosen image is requested for all its unlabelled modalities, and the
budget counts those labels (see :mod:`~mtal_models.strategies.selection`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtal_models.strategies.base import BatchOutputs, Needs, PoolScores, Strategy
from mtal_models.strategies.diversity import kcenter_greedy
from mtal_models.strategies.lossprediction import LossPredictionModule
from mtal_models.strategies.selection import Selection, check_budget, check_labelled, check_scores, select_images

__all__ = ["LL4AL", "CoreSet", "RandomStrategy", "require"]


def require(name: str, pool: Mapping[str, Tensor], keys: list[str], labelled: Mapping[str, Tensor]) -> int:
    """Check the pool has ``keys`` with N rows and no NaN; return N."""
    n = check_labelled(labelled)
    missing = [k for k in keys if k not in pool]
    if missing:
        raise ValueError(f"{name}: pool lacks {missing} (collect it with collect_pool_outputs and this strategy)")
    check_scores({k: pool[k] for k in keys}, n)
    return n


def _masks(labelled: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(any modality labelled [N], any modality unlabelled [N], number of unlabelled modalities [N])."""
    table = torch.stack(list(labelled.values()), dim=1)
    return table.any(dim=1), (~table).any(dim=1), (~table).sum(dim=1)


class RandomStrategy(Strategy):
    """Uniform random image scores from a seeded generator (its state advances across rounds)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        n = check_labelled(labelled)
        return select_images(torch.rand(n, generator=self.generator), labelled, budget)


class CoreSet(Strategy):
    """k-center greedy on pooled backbone features; labelled images (any modality) are the centres.

    Scores: distance of each image to its nearest labelled image before selection (to the pool mean
    when nothing is labelled yet). Selection order is the greedy order, not the score order.
    """

    name = "coreset"
    needs = Needs(embeddings="pooled", labelled=True)

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        if out.pooled is None or out.pooled.dim() != 2:
            raise ValueError(f"{self.name}: needs pooled backbone features [B, D] (out.pooled)")
        return {"pooled": out.pooled.float()}

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        require(self.name, pool, ["pooled"], labelled)
        check_budget(budget)
        feats = pool["pooled"]
        if feats.dim() != 2 or not torch.isfinite(feats).all():
            raise ValueError(f"{self.name}: pooled features must be finite [N, D], got {tuple(feats.shape)}")
        centres, candidates, costs = _masks(labelled)
        initial, picks = kcenter_greedy(feats, centres, candidates, budget, costs)
        order = torch.tensor(picks, dtype=torch.long)
        return select_images(initial, labelled, budget, order=order)


class LL4AL(Strategy):
    """Images by decreasing predicted loss of a :class:`LossPredictionModule` on pooled features.

    The module is trained with the network through
    :func:`~mtal_models.strategies.lossprediction.make_ll4al_extra_loss`; pass it here (or set
    ``strategy.module``) before scoring.
    """

    name = "ll4al"
    needs = Needs(embeddings="pooled")

    def __init__(self, module: LossPredictionModule | None = None) -> None:
        self.module = module

    @torch.no_grad()
    def score_batch(self, out: BatchOutputs) -> PoolScores:
        if self.module is None:
            raise ValueError(f"{self.name}: no trained LossPredictionModule; pass module= or set strategy.module")
        if out.pooled is None:
            raise ValueError(f"{self.name}: needs pooled backbone features (out.pooled)")
        was = self.module.training
        self.module.eval()
        try:
            device = next(self.module.parameters()).device
            return {"loss": self.module(out.pooled.to(device)).float()}
        finally:
            self.module.train(was)

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        require(self.name, pool, ["loss"], labelled)
        return select_images(pool["loss"].flatten(), labelled, budget)
