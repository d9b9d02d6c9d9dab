"""A tiny multi-task conv net honouring the MultiTaskNet contract, and learnable synthetic samples."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import Tensor, nn

from mtal_models.data.sample import Sample
from mtal_models.modalities import ModalitySpec, build_modalities
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput
from mtal_models.nets.config import NetConfig, get_config
from mtal_models.nets.losses import masked_mean

MODALITIES = build_modalities([("sem", "segmentation", 3), ("depth", "depth", 1), ("normals", "normals", 3)])
SIZE = 16


class TinyNet(MultiTaskNet):
    """conv -> relu -> conv features [B, 8, H, W]; a 1x1 head per modality; no BatchNorm (samples stay
    independent, which the weight tests rely on)."""

    name = "tiny_test"

    def __init__(self, modalities: Mapping[str, ModalitySpec], config: NetConfig | str = "tiny") -> None:
        super().__init__(modalities)
        self.config = get_config(config)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head_convs = nn.ModuleDict({n: nn.Conv2d(8, s.channels, 1) for n, s in self.modalities.items()})

    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        """images [B, 3, H, W] -> final [B, C_t, H, W] per modality; pooled [B, 8]."""
        feats = self.body(images)
        final = {n: head(feats) for n, head in self.head_convs.items()}
        return MultiTaskOutput(final=final, head_features=feats, pooled=feats.mean(dim=(2, 3)))

    def losses(
        self, out: MultiTaskOutput, labels: Labels, weights: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        result = {}
        for n, spec in self.modalities.items():
            pred = out.final[n]
            present = labels.is_present(n, pred.shape[0]).to(pred.device)
            per_sample = spec.loss(pred, labels.values.get(n, pred), present)
            result[n] = masked_mean(per_sample, present, None if weights is None else weights.get(n))
        return result

    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> dict[str, Tensor]:
        out = self(images)
        return {k: v[:, None].expand(-1, n, -1, -1, -1) for k, v in out.final.items()}


def build_tiny(name: str, modalities: Mapping[str, ModalitySpec], config: NetConfig) -> TinyNet:
    """A ``builder`` for load_checkpoint."""
    assert name == TinyNet.name
    return TinyNet(modalities, config)


def make_samples(
    n: int, present: Mapping[str, bool] | None = None, seed: int = 0, size: int = SIZE
) -> list[Sample]:
    """Samples whose labels are simple functions of the image (learnable by a conv net):
    sem = brightest channel, depth = 1 + mean intensity, normals = tilted by the red channel."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        x = image.astype(np.float32) / 255
        normals = np.stack([x[..., 0] - 0.5, np.zeros_like(x[..., 0]), np.ones_like(x[..., 0])], -1)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        labels = {"sem": x.argmax(-1).astype(np.int64), "depth": 1 + x.mean(-1), "normals": normals.astype(np.float32)}
        flags = {k: True for k in labels} if present is None else {k: bool(present.get(k, False)) for k in labels}
        out.append(Sample(f"s{i}", image, labels, flags))
    return out
