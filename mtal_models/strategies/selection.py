"""Turning scores into a selection, apart from any scoring: validation, top-k, pairs, ties, budget.

Conventions (documented behaviour, tested):

- Higher score = more informative. Ties keep pool order: the lower image index first, then the
  modality order of ``labelled`` (a stable descending sort).
- The budget counts (image, modality) labels so that methods compare at equal annotation cost.
  A pair strategy takes the top-``budget`` unlabelled pairs. An image strategy walks images by
  decreasing score; taking an image costs its number of unlabelled modalities; an image that does
  not fit in what is left of the budget is skipped and the walk goes on (smaller ones may still fit).
- A budget larger than what is unlabelled selects everything unlabelled (no error). Budget 0 selects
  nothing. An empty pool (N = 0), a negative budget, NaN scores, or score keys that do not match the
  labelled modalities raise ValueError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "Selection",
    "check_budget",
    "check_labelled",
    "check_scores",
    "merge_weights",
    "select_images",
    "select_pairs",
    "stable_order",
]


@dataclass
class Selection:
    """The result of a strategy.

    scores:      [N] float image scores, higher = more informative (pair strategies: the best pair of
                 each image among its unlabelled modalities, -inf where all are labelled).
    pairs:       chosen (image index, modality) pairs in priority order; ``len(pairs)`` is the cost.
    pair_scores: modality -> [N] per-pair scores (pair-scoring strategies; empty otherwise).
    weights:     modality -> [N] per-sample training weights (MTAL-WACV s_k(x); empty otherwise).
    """

    scores: Tensor
    pairs: list[tuple[int, str]]
    pair_scores: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, Tensor] = field(default_factory=dict)

    @property
    def images(self) -> list[int]:
        """Chosen image indices, unique, in priority order."""
        return list(dict.fromkeys(i for i, _ in self.pairs))

    @property
    def cost(self) -> int:
        """Number of (image, modality) labels requested."""
        return len(self.pairs)

    def sample_weights(self, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``weights`` as sample id -> {modality: weight} (the trainer's ``sample_weights`` format)."""
        if self.weights and any(len(ids) != w.shape[0] for w in self.weights.values()):
            raise ValueError(f"sample_weights: {len(ids)} ids for a pool of {self.scores.shape[0]} images")
        return {i: {m: float(w[n]) for m, w in self.weights.items()} for n, i in enumerate(ids)} if self.weights else {}

    def by_image(self) -> dict[int, list[str]]:
        """image index -> modalities requested for it (priority order of images kept)."""
        out: dict[int, list[str]] = {}
        for i, m in self.pairs:
            out.setdefault(i, []).append(m)
        return out


def check_labelled(labelled: Mapping[str, Tensor]) -> int:
    """Validate modality -> bool [N] masks; return N. Raises ValueError on an empty pool or bad shapes."""
    if not isinstance(labelled, Mapping) or not labelled:
        raise ValueError("labelled must be a non-empty dict modality -> bool [N]")
    sizes = {}
    for name, mask in labelled.items():
        if not isinstance(mask, Tensor) or mask.dim() != 1:
            raise ValueError(f"labelled[{name!r}] must be a 1-D bool tensor [N], got {_describe(mask)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"labelled[{name!r}] must have dtype bool, got {mask.dtype}")
        sizes[name] = mask.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"labelled masks have different pool sizes: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("empty pool: labelled masks have N = 0 images")
    return n


def check_scores(scores: Mapping[str, Tensor], n: int, modalities: Sequence[str] | None = None) -> None:
    """Validate per-image score tensors [N, ...]: size, NaN, and (if given) the exact modality keys."""
    if modalities is not None and set(scores) != set(modalities):
        missing, extra = sorted(set(modalities) - set(scores)), sorted(set(scores) - set(modalities))
        raise ValueError(f"score modalities do not match the labelled modalities: missing {missing}, extra {extra}")
    for name, s in scores.items():
        if not isinstance(s, Tensor) or s.dim() == 0:
            raise ValueError(f"scores[{name!r}] must be a tensor [N, ...], got {_describe(s)}")
        if s.shape[0] != n:
            raise ValueError(f"scores[{name!r}] has {s.shape[0]} images, the pool has {n}")
        if s.is_floating_point() and torch.isnan(s).any():
            raise ValueError(f"scores[{name!r}] contains {int(torch.isnan(s).sum())} NaN value(s)")


def check_budget(budget: int) -> int:
    """Budget must be a non-negative integer (bool rejected)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget must be a non-negative int of (image, modality) labels, got {budget!r}")
    return budget


def stable_order(scores: Tensor) -> Tensor:
    """Indices of a 1-D score tensor by decreasing score; ties keep the lower index first."""
    return torch.sort(scores, descending=True, stable=True).indices


def select_pairs(pair_scores: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
    """Top-``budget`` unlabelled (image, modality) pairs.

    pair_scores: modality -> [N] float; only modalities present here are candidates (a modality of
    ``labelled`` without scores, e.g. detection for PartAL, is never requested).
    """
    n = check_labelled(labelled)
    check_budget(budget)
    for name in pair_scores:
        if name not in labelled:
            raise ValueError(f"scores for modality {name!r} but no labelled mask for it; have {sorted(labelled)}")
    check_scores(pair_scores, n)
    names = [m for m in labelled if m in pair_scores]
    table = torch.stack([pair_scores[m].double().flatten() for m in names], dim=1)  # [N, K]
    free = torch.stack([~labelled[m] for m in names], dim=1)
    masked = torch.where(free, table, torch.full_like(table, float("-inf")))
    free_flat = free.flatten().nonzero(as_tuple=True)[0]  # row-major: ties -> lower image, then modality
    chosen = free_flat[stable_order(table.flatten()[free_flat])][:budget]
    pairs = [(int(f) // len(names), names[int(f) % len(names)]) for f in chosen]
    return Selection(
        scores=masked.max(dim=1).values.float(),
        pairs=pairs,
        pair_scores={m: pair_scores[m].float() for m in names},
    )


def select_images(
    scores: Tensor,
    labelled: Mapping[str, Tensor],
    budget: int,
    order: Tensor | None = None,
) -> Selection:
    """Pick images by decreasing ``scores`` [N] (or in a given ``order``), each with all its unlabelled
    modalities, while the budget allows (see the module docstring for skipping and ties)."""
    n = check_labelled(labelled)
    check_budget(budget)
    check_scores({"scores": scores}, n)
    if scores.dim() != 1:
        raise ValueError(f"image scores must be [N], got {tuple(scores.shape)}")
    names = list(labelled)
    free = torch.stack([~labelled[m] for m in names], dim=1)  # [N, K]
    cost = free.sum(dim=1)
    order = stable_order(scores) if order is None else order
    pairs: list[tuple[int, str]] = []
    left = budget
    for i in order.tolist():
        c = int(cost[i])
        if c == 0 or c > left:
            continue
        pairs.extend((i, names[k]) for k in range(len(names)) if free[i, k])
        left -= c
        if left == 0:
            break
    return Selection(scores=scores.float(), pairs=pairs)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} ({x.dtype})"
    return type(x).__name__


def merge_weights(
    old: Mapping[str, dict[str, float]] | None, new: Mapping[str, dict[str, float]], chosen: list[str]
) -> dict[str, dict[str, float]]:
    """MTAL-WACV loss weights (eq. 5) after a selection: each image keeps the s_k(x) of the round that
    selected it. ``new`` holds this round's scores for the whole pool; only the ``chosen`` images take
    theirs. Images labelled earlier keep their weights, and the initial set (never selected) has none,
    i.e. weight 1; rescoring them with the current model would give images it already fits (low
    inconsistency) weights near 0 and drop them from training."""
    merged = {k: dict(v) for k, v in (old or {}).items()}
    for i in chosen:
        merged.setdefault(i, dict(new[i]))
    return merged
