"""Training health: detect a collapsed box regression while a det+seg network trains.

A collapsed FCOS regression predicts boxes of zero size (x1 = x2, y1 = y2 at the anchor points) with
high scores: mAP is 0 although every loss looks finite. ``fit`` counts, over each epoch's training
steps, the predicted boxes narrower or lower than 1 px (the detections are computed in every forward
pass anyway), reports them in ``TrainResult.box_health`` and warns when most of them are degenerate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mtal_models.metrics import box_collapse, count_degenerate
from mtal_models.modalities import ModalitySpec

__all__ = ["BoxHealth"]


class BoxHealth:
    """Counts degenerate predicted boxes per detection modality over a run of steps."""

    def __init__(self, modalities: Mapping[str, ModalitySpec]) -> None:
        self.names = [n for n, s in modalities.items() if s.kind == "detection"]
        self._counts = {n: [0, 0] for n in self.names}

    def update(self, final: Mapping[str, Tensor]) -> None:
        """final: the network's ``final`` outputs; detection entries are padded [B, K, 6 + C]."""
        for name in self.names:
            degenerate, predicted = count_degenerate(final[name].detach())
            self._counts[name][0] += degenerate
            self._counts[name][1] += predicted

    def report(self) -> dict[str, dict[str, Any]]:
        """{detection modality: box_collapse(...)} ({} for a network without detection)."""
        return {n: box_collapse(d, p) for n, (d, p) in self._counts.items()}
