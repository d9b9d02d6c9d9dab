"""What every selection strategy shares: declared needs, one batch of model outputs, the base class.

A strategy works in two steps so that a pool of thousands of images never holds per-pixel maps:

1. :meth:`Strategy.score_batch` reduces what the model gives for one batch (:class:`BatchOutputs`)
   to per-image values, a dict of tensors whose first axis is the batch (``{modality: [B]}``
   uncertainties, ``[B, D]`` embeddings ...). :func:`concat_pool` joins the batches of a pool.
2. :meth:`Strategy.select` turns the pool's values, what is labelled and a budget counted in
   (image, modality) labels into a :class:`~mtal_models.strategies.selection.Selection`.

Orientation everywhere in this package: **higher score = more informative = label first**. Label
Studio's "low score = label first" is the backend's conversion, not ours.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from mtal_models.modalities import ModalitySpec
from mtal_models.strategies.selection import Selection

__all__ = ["BatchOutputs", "Needs", "PoolScores", "Strategy", "concat_pool"]

# What score_batch returns and select consumes: name -> tensor whose first axis is the image.
PoolScores = dict[str, Tensor]


@dataclass(frozen=True)
class Needs:
    """What a strategy needs from the model; :func:`~mtal_models.strategies.collect.collect_pool_outputs`
    gathers exactly this, so the loop never inspects a strategy's type.

    mc_samples:  number of MC-dropout passes (0 = none); filled into ``BatchOutputs.mc``.
    committee:   forward with ``committee=True`` (MTAL-WACV refined predictions).
    embeddings:  "pooled" (backbone features [B, D]), "head" (head features [B, F, h, w]) or None.
    labelled:    ``select`` uses the labelled set itself (diversity), not only to exclude candidates.
    crops:       re-segment the crop around every detected box (MTC BoxMask, det+seg net only), at
                 ``crop_size`` pixels, boxes from ``crop_source`` (None = the net's only detection modality).
    flip:        also run the horizontally flipped images (EquAL); fills ``BatchOutputs.flipped``.
    conditioned: pass the batch's labels as ``given`` (PartAL §3.3 conditioning on labelled modalities).
    """

    mc_samples: int = 0
    committee: bool = False
    embeddings: Literal["pooled", "head"] | None = None
    labelled: bool = False
    crops: bool = False
    crop_size: int = 64
    crop_source: str | None = None
    flip: bool = False
    conditioned: bool = True

    def __post_init__(self) -> None:
        if self.mc_samples < 0:
            raise ValueError(f"needs.mc_samples must be >= 0, got {self.mc_samples}")
        if self.embeddings not in ("pooled", "head", None):
            raise ValueError(f"needs.embeddings must be 'pooled', 'head' or None, got {self.embeddings!r}")
        if self.crop_size < 1:
            raise ValueError(f"needs.crop_size must be >= 1, got {self.crop_size}")


@dataclass
class BatchOutputs:
    """What the model gave for one batch of B images (fields a strategy did not ask for stay empty).

    modalities:    name -> spec of the network's modalities.
    final:         name -> raw final output (logits / metres / normals / padded detections [B, K, 6 + C]).
    initial:       name -> raw initial (pre-distillation) output.
    refined:       refined[k][j] raw committee outputs (MTAL-WACV).
    mc:            dense name -> MC-dropout raw outputs [B, D, C, H, W] (PAD-Net: an MCSamples mapping).
    flipped:       name -> raw final output for the flipped images, flipped back to the original frame.
    pooled:        [B, D] backbone features; head_features: [B, F, h, w].
    crops:         per image, segmentation logits of the crop around each detected box [N_i, C, s, s].
    """

    modalities: Mapping[str, ModalitySpec]
    final: dict[str, Tensor] = field(default_factory=dict)
    initial: dict[str, Tensor] = field(default_factory=dict)
    refined: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    mc: Mapping[str, Tensor] = field(default_factory=dict)
    flipped: dict[str, Tensor] = field(default_factory=dict)
    pooled: Tensor | None = None
    head_features: Tensor | None = None
    crops: list[Tensor] = field(default_factory=list)


class Strategy(ABC):
    """A selection strategy: a per-batch reduction plus a pool-level selection.

    ``unit`` is "pair" when the strategy picks (image, modality) pairs (PartAL), "image" when it picks
    images and requests every unlabelled modality of each (all the others).
    """

    name: str = "strategy"
    unit: Literal["image", "pair"] = "image"
    needs: Needs = Needs()

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        """Per-image values for one batch; the default (strategies needing nothing) is empty."""
        return {}

    @abstractmethod
    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        """pool: concatenated :meth:`score_batch` values ([N, ...] each); labelled: modality -> bool [N];
        budget: number of (image, modality) labels to request."""

    def state(self) -> dict[str, Any]:
        """JSON-safe state to persist across retrains (e.g. frozen normalisation constants)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (default: nothing to restore). An empty ``state`` means
        "nothing stored yet" (a project's first ranking, a simulation's first round) and must be accepted."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, unit={self.unit!r}, needs={self.needs})"


def concat_pool(parts: Sequence[Mapping[str, Tensor]]) -> PoolScores:
    """Concatenate per-batch score dicts along the image axis; every part must have the same keys."""
    if not parts:
        return {}
    keys = list(parts[0])
    for i, p in enumerate(parts):
        if set(p) != set(keys):
            raise ValueError(f"batch {i} gives keys {sorted(p)}, batch 0 gave {sorted(keys)}")
    return {k: torch.cat([p[k].detach().cpu() for p in parts], dim=0) for k in keys}
