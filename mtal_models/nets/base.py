"""The contract every multi-task network honours (PAD-Net, det+seg).

Images enter as float tensors in [0, 1], shape [B, 3, H, W] (networks normalise internally).
Labels travel as :class:`Labels`: per-modality targets in the formats of
:mod:`mtal_models.modalities` plus a bool presence flag [B] per modality (partial labels).
Every network returns a :class:`MultiTaskOutput` whose fields are dicts keyed by modality name —
the same type whatever the configuration; fields a network does not produce are empty.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtal_models.modalities import ModalitySpec

__all__ = ["Labels", "MultiTaskNet", "MultiTaskOutput", "Target"]

# Dense modalities: a tensor [B, ...]; detection: a list of B dicts {"boxes": [N, 4], "labels": [N]}.
Target = Tensor | list[dict[str, Tensor]]


@dataclass
class Labels:
    """A batch of (partial) labels.

    values:  modality -> target for the whole batch (rows of absent samples may hold anything).
    present: modality -> bool [B], True where that sample's label for that modality is real.
    A modality missing from ``values`` counts as absent for every sample.
    """

    values: dict[str, Target]
    present: dict[str, Tensor]

    def is_present(self, name: str, batch_size: int) -> Tensor:
        """bool [B] presence of ``name`` (all False when the modality is not in the batch)."""
        if name not in self.values:
            return torch.zeros(batch_size, dtype=torch.bool)
        return self.present[name].bool()

    def to(self, device: torch.device | str) -> Labels:
        def move(v: Target) -> Target:
            if isinstance(v, Tensor):
                return v.to(device)
            return [{k: t.to(device) for k, t in d.items()} for d in v]

        return Labels(
            {k: move(v) for k, v in self.values.items()},
            {k: v.to(device) for k, v in self.present.items()},
        )


@dataclass
class MultiTaskOutput:
    """What a forward pass gives.

    final:   modality -> final prediction (formats in :mod:`mtal_models.modalities`), at input size.
    initial: modality -> initial (pre-distillation) prediction, same formats; empty if the net has none.
    refined: committee outputs ``refined[k][j]`` = modality k refined with modality j (MTAL-WACV);
             only filled when the forward was asked for the committee.
    head_features: [B, F, h, w] concatenated last feature maps of all task heads (diversity).
    pooled:  [B, D] globally pooled backbone features (CoreSet).
    extras:  network-private tensors its ``losses`` needs (e.g. raw FCOS head outputs).
    """

    final: dict[str, Tensor]
    initial: dict[str, Tensor] = field(default_factory=dict)
    refined: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    head_features: Tensor | None = None
    pooled: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class MultiTaskNet(nn.Module, ABC):
    """Base class: holds the modality specs and fixes the method signatures.

    ``substitutable`` names the modalities whose ground truth ``forward(given=...)`` uses (PartAL GT
    substitution); networks that ignore ``given`` leave it empty. ``conditionable`` is the subset whose
    label encoders have been trained, i.e. where conditioning at inference means something.
    """

    modalities: dict[str, ModalitySpec]
    substitutable: tuple[str, ...] = ()

    @property
    def conditionable(self) -> tuple[str, ...]:
        """Modalities whose ``given`` labels change the outputs after training (default: none)."""
        return ()

    def __init__(self, modalities: Mapping[str, ModalitySpec]) -> None:
        super().__init__()
        self.modalities = dict(modalities)

    @abstractmethod
    def forward(
        self, images: Tensor, given: Labels | None = None, committee: bool = False
    ) -> MultiTaskOutput:
        """images [B, 3, H, W] in [0, 1]. ``given``: ground truth of already-labelled modalities,
        substituted for their initial predictions where present (PartAL §3.3)."""

    @abstractmethod
    def losses(
        self, out: MultiTaskOutput, labels: Labels, weights: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Scalar loss per modality, averaged over the samples where it is present (0 if none).
        ``weights``: optional per-sample weights [B] per modality (MTAL-WACV s_k)."""

    @abstractmethod
    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> Mapping[str, Tensor]:
        """MC-dropout: run the backbone once and the heads ``n`` times with dropout on.
        Returns, per dense modality, raw outputs stacked as [B, n, C, H, W]."""

    @torch.no_grad()
    def predict(self, images: Tensor, given: Labels | None = None) -> dict[str, Tensor]:
        """Inference outputs, activated: segmentation/binary probabilities [B, C, H, W], depth
        [B, 1, H, W], unit normals [B, 3, H, W], detection padded [B, K, 6 + C]. Eval mode."""
        was_training = self.training
        self.eval()
        try:
            out = self(images, given)
        finally:
            self.train(was_training)
        return {k: self.modalities[k].activate(v) if self.modalities[k].dense else v for k, v in out.final.items()}

    # ---- split inference (interactive pre-annotation: the trunk once per image, the heads per click) ----
    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def trunk(self, images: Tensor) -> Any:
        """The part of ``predict`` that ``given`` does not change, for images [B, 3, H, W] in [0, 1]; what
        :meth:`heads` takes. Networks that do not split return the images (``heads`` then runs it all)."""
        return images

    @torch.no_grad()
    def heads(self, trunk: Any, size: tuple[int, int], given: Labels | None = None) -> dict[str, Tensor]:
        """``predict``'s outputs (same formats, at ``size`` = the input's (H, W)) from :meth:`trunk`'s:
        ``heads(trunk(x), x.shape[-2:], given) == predict(x, given)``. Eval mode."""
        return self.predict(trunk, given)

    def _activated(self, final: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.modalities[k].activate(v) if self.modalities[k].dense else v for k, v in final.items()}

