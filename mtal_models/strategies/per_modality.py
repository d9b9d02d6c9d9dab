"""Strategies over one score per (image, modality): PartAL (pairs or images), EquAL, RBAL.

PartAL (pairs): u_i^k = pixel-mean MC-dropout entropy; u~ = frozen min-max normalisation
(:class:`~mtal_models.strategies.uncertainty.MinMaxNormalizer`, constants from the first round's
*unlabelled* pairs, persisted through :meth:`state`); the top-B unlabelled (image, modality) pairs.
Only dense modalities are scored, so a detection modality is never requested by ``partal``.

PartAL image-level variant (``partal_image``): image score = mean of u~ over the image's unlabelled
scored modalities (a per-label average, fair to images that are already partly labelled); the image
is taken with all its unlabelled modalities.

EquAL (``equal``): the same machinery with u_i^k = flip inconsistency (see
:mod:`~mtal_models.strategies.consistency`), image-level by default.

RBAL (``rbal``): ranks of u_i^k within each modality over the pool, summed (higher = label first);
the image is labelled for all its unlabelled modalities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from mtal_models.nets.mc import MCSamples
from mtal_models.strategies.base import BatchOutputs, Needs, PoolScores, Strategy
from mtal_models.strategies.consistency import flip_inconsistency
from mtal_models.strategies.selection import Selection, check_labelled, check_scores, select_images, select_pairs
from mtal_models.strategies.uncertainty import MinMaxNormalizer, image_uncertainty, rank_sum

__all__ = ["RBAL", "EquAL", "PartAL", "check_pool_modalities"]


def check_pool_modalities(name: str, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor]) -> int:
    """Pool scores keyed by modality must be a non-empty subset of the labelled modalities. Returns N."""
    n = check_labelled(labelled)
    if not pool:
        raise ValueError(f"{name}: the pool has no per-modality scores (did collect_pool_outputs run?)")
    extra = sorted(set(pool) - set(labelled))
    if extra:
        raise ValueError(f"{name}: scores for modalities {extra} that have no labelled mask; have {sorted(labelled)}")
    check_scores(pool, n)
    for key, v in pool.items():
        if v.dim() != 1:
            raise ValueError(f"{name}: scores[{key!r}] must be [N], got {tuple(v.shape)}")
    return n


def mc_uncertainties(out: BatchOutputs) -> PoolScores:
    """{modality: [B]} pixel-mean MC-dropout entropy for every dense modality in ``out.mc``."""
    if not out.mc:
        raise ValueError("no MC-dropout samples in the batch outputs (strategy.needs.mc_samples must be > 0)")
    unknown = sorted(set(out.mc) - set(out.modalities))
    if unknown:
        raise ValueError(f"MC samples for unknown modalities {unknown}; the network has {sorted(out.modalities)}")
    if isinstance(out.mc, MCSamples):  # one image's full-size samples at a time (the same values)
        return {k: torch.cat([image_uncertainty(out.modalities[k], out.mc.image(k, i)[None])
                              for i in range(out.mc.batch)]) for k in out.mc if out.modalities[k].dense}
    return {k: image_uncertainty(out.modalities[k], v) for k, v in out.mc.items() if out.modalities[k].dense}


class PartAL(Strategy):
    """PartAL over per-pair MC-dropout uncertainties; ``unit`` "pair" (paper) or "image" (variant)."""

    name = "partal"

    def __init__(
        self,
        mc_samples: int = 10,
        unit: Literal["pair", "image"] = "pair",
        clip: bool = False,
        normalise: Literal["frozen", "per_round"] = "frozen",
    ) -> None:
        if unit not in ("pair", "image"):
            raise ValueError(f"{self.name}: unit must be 'pair' or 'image', got {unit!r}")
        if normalise not in ("frozen", "per_round"):
            raise ValueError(f"{self.name}: normalise must be 'frozen' or 'per_round', got {normalise!r}")
        self.per_round = normalise == "per_round"
        if mc_samples < 2:
            raise ValueError(f"{self.name}: needs >= 2 MC samples (Gaussian entropy), got {mc_samples}")
        self.unit = unit
        if unit == "image" and type(self) is PartAL:
            self.name = "partal_image"
        self.needs = Needs(mc_samples=mc_samples)
        self.normalizer = MinMaxNormalizer(clip=clip)

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        return mc_uncertainties(out)

    def normalise(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fit constants for modalities seen for the first time (on their unlabelled pairs; every round with
        ``normalise="per_round"``, an ablation of the paper's frozen constants), then apply."""
        for k, v in pool.items():
            if k not in self.normalizer.mins or self.per_round:
                free = ~labelled[k]
                self.normalizer.refit({k: v[free] if free.any() else v})
        return {k: v.float() for k, v in self.normalizer.transform(pool).items()}

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        check_pool_modalities(self.name, pool, labelled)
        norm = self.normalise(pool, labelled)
        if self.unit == "pair":
            return select_pairs(norm, labelled, budget)
        names = list(norm)
        table = torch.stack([norm[k] for k in names], dim=1)  # [N, K]
        free = torch.stack([~labelled[k] for k in names], dim=1).float()
        count = free.sum(dim=1)
        scores = torch.where(count > 0, (table * free).sum(dim=1) / count.clamp_min(1), float("-inf"))
        sel = select_images(scores, labelled, budget)
        sel.pair_scores = norm
        return sel

    def state(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.to_dict()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore the frozen constants; an empty state (a project's first ranking, nothing stored yet)
        keeps a fresh normaliser, which the first :meth:`select` fits."""
        if not state:
            self.normalizer = MinMaxNormalizer(clip=self.normalizer.clip)
            return
        if "normalizer" not in state:
            raise ValueError(f"{self.name}: state has no 'normalizer' entry; keys: {sorted(state)}")
        self.normalizer = MinMaxNormalizer.from_dict(state["normalizer"])


class EquAL(PartAL):
    """EquAL-style flip inconsistency per modality, normalised and selected like PartAL (image-level)."""

    name = "equal"

    def __init__(self, unit: Literal["pair", "image"] = "image", clip: bool = False) -> None:
        super().__init__(mc_samples=2, unit=unit, clip=clip)
        self.needs = Needs(flip=True, conditioned=False)

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        if not out.flipped:
            raise ValueError(f"{self.name}: no flipped predictions in the batch outputs (needs.flip)")
        return {
            k: flip_inconsistency(spec, out.final[k], out.flipped[k])
            for k, spec in out.modalities.items()
            if spec.dense and k in out.final and k in out.flipped
        }


class RBAL(Strategy):
    """Ranking-based AL: per-modality MC uncertainty ranks summed; labels all modalities of an image."""

    name = "rbal"

    def __init__(self, mc_samples: int = 10) -> None:
        if mc_samples < 2:
            raise ValueError(f"{self.name}: needs >= 2 MC samples, got {mc_samples}")
        self.needs = Needs(mc_samples=mc_samples)

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        return mc_uncertainties(out)

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        check_pool_modalities(self.name, pool, labelled)
        sel = select_images(rank_sum(pool), labelled, budget)
        sel.pair_scores = {k: v.float() for k, v in pool.items()}
        return sel
