"""A tiny fake MultiTaskNet for the strategy driver tests (not a real network)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtal_models.modalities import ModalitySpec, build_modalities
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput

DENSE = build_modalities(
    [("semantic", "segmentation", 3), ("edges", "binary", 1), ("depth", "depth", 1), ("normals", "normals", 3)]
)
DETSEG = build_modalities([("boxes", "detection", 2), ("semantic", "segmentation", 3)])


class FakeNet(MultiTaskNet):
    """1x1 convs: features [B, 8, H, W]; a head per modality; committee = heads on perturbed features;
    detection: two fixed boxes per image; segment_crops: the segmentation head on resized crops."""

    def __init__(self, modalities: Mapping[str, ModalitySpec] = DENSE, seed: int = 0) -> None:
        super().__init__(modalities)
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 1)
        self.head_convs = nn.ModuleDict({k: nn.Conv2d(8, s.channels, 1) for k, s in self.modalities.items() if s.dense})
        self.n_det = next((s.channels for s in self.modalities.values() if s.kind == "detection"), 0)

    def _features(self, images: Tensor) -> Tensor:
        return F.relu(self.stem(images))

    def _heads(self, feat: Tensor) -> dict[str, Tensor]:
        out = {k: h(feat) for k, h in self.head_convs.items()}
        if "normals" in out:
            out["normals"] = F.normalize(out["normals"], dim=1)
        return out

    def _detections(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        det = torch.zeros(b, 3, 6 + self.n_det)
        det[:, :, 5] = -1
        for i in range(b):
            for r, (x1, y1, x2, y2, c) in enumerate([(2, 2, w // 2, h // 2, 0), (w // 2, h // 2, w - 1, h - 1, 1)]):
                det[i, r, :4] = torch.tensor([x1, y1, x2, y2], dtype=torch.float)
                det[i, r, 4], det[i, r, 5] = 0.9, float(c)
                det[i, r, 6 + c] = 1.0
        return det

    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        feat = self._features(images)
        final = self._heads(feat)
        initial = self._heads(feat * 0.5)
        refined = {}
        if committee:
            refined = {k: {j: self._heads(feat + 0.1 * (n + 1))[k] for n, j in enumerate(final) if j != k}
                       for k in final}
        if self.n_det:
            final["boxes"] = self._detections(images)
        return MultiTaskOutput(final, initial, refined, head_features=feat, pooled=feat.mean(dim=(2, 3)))

    def losses(self, out: MultiTaskOutput, labels: Labels, weights: Mapping[str, Tensor] | None = None):
        return {k: out.final[k].mean() * 0 for k in out.final}

    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> dict[str, Tensor]:
        feat = self._features(images)
        passes = [self._heads(F.dropout(feat, 0.5, training=True)) for _ in range(n)]
        return {k: torch.stack([p[k] for p in passes], dim=1) for k in passes[0]}

    def segment_crops(self, images: Tensor, boxes: list[Tensor], size: int) -> list[Tensor]:
        """Probabilities [N_i, C, size, size], like DetSegNet.segment_crops."""
        out = []
        for img, bx in zip(images, boxes, strict=True):
            crops = []
            for x1, y1, x2, y2 in bx.round().long().tolist():
                crop = img[:, y1:y2, x1:x2][None]
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
                crops.append(self.head_convs["semantic"](self._features(crop))[0].softmax(0))
            out.append(torch.stack(crops) if crops else torch.zeros(0, 3, size, size))
        return out
