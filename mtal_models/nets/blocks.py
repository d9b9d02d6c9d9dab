"""PAD-Net building blocks: task heads with MC-dropout, the multi-modal distillation, label encoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtal_models.modalities import ModalitySpec

__all__ = ["LabelEncoder", "MultiModalDistillation", "TaskHead", "format_prediction", "label_to_map"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TaskHead(nn.Module):
    """One task head: 3x3 conv block -> Dropout2d -> 1x1 prediction.

    x [B, C_in, h, w] -> (features [B, C, h, w], raw prediction [B, out_channels, h, w]).
    ``mc=True`` keeps dropout on in eval mode (MC-dropout); otherwise dropout follows ``self.training``.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout}")
        self.block = conv_bn_relu(in_channels, channels)
        self.dropout = dropout
        self.pred = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor, mc: bool = False) -> tuple[Tensor, Tensor]:
        feats = F.dropout2d(self.block(x), self.dropout, training=self.training or mc)
        return feats, self.pred(feats)


class MultiModalDistillation(nn.Module):
    """Attention-gated message passing between task features (PAD-Net's distillation).

    For every ordered pair (t <- a), SA_{t<-a}(F_a) = conv_m(F_a) * sigmoid(conv_g(F_a)). All pairs are
    computed by one grouped convolution (group = pair), which is much faster on CPU than 2K(K-1)
    separate small convolutions. ``messages`` gives every pair's message; ``forward`` gives
    F'_t = F_t + sum_{a != t} SA_{t<-a}(F_a). The same class serves PAD-Net's distillation and the
    MTAL-WACV pairwise committee (which uses single messages).
    """

    def __init__(self, names: Sequence[str], channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.names = list(names)
        self.channels = channels
        self.pairs = [(t, a) for t in self.names for a in self.names if a != t]
        n = len(self.pairs)
        self.conv = (
            nn.Conv2d(n * channels, n * 2 * channels, kernel_size, padding=kernel_size // 2, groups=n)
            if n
            else None
        )

    def messages(self, feats: dict[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        """{(t, a): SA_{t<-a}(F_a) [B, C, h, w]} for every ordered pair; feats: name -> [B, C, h, w]."""
        if self.conv is None:
            return {}
        x = torch.cat([feats[a] for _, a in self.pairs], dim=1)
        b, _, h, w = x.shape
        y = self.conv(x).view(b, len(self.pairs), 2, self.channels, h, w)
        msg = y[:, :, 0] * torch.sigmoid(y[:, :, 1])  # [B, P, C, h, w]
        return {pair: msg[:, i] for i, pair in enumerate(self.pairs)}

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """feats: name -> F_t [B, C, h, w] -> name -> F'_t [B, C, h, w]."""
        if self.conv is None:
            return dict(feats)
        x = torch.cat([feats[a] for _, a in self.pairs], dim=1)
        b, _, h, w = x.shape
        k = len(self.names)
        y = self.conv(x).view(b, k, k - 1, 2, self.channels, h, w)
        summed = (y[:, :, :, 0] * torch.sigmoid(y[:, :, :, 1])).sum(dim=2)  # [B, K, C, h, w]
        return {t: feats[t] + summed[:, i] for i, t in enumerate(self.names)}


def label_to_map(spec: ModalitySpec, target: Tensor, size: Sequence[int]) -> Tensor:
    """A label batch (format of :mod:`mtal_models.modalities`) -> float map [B, spec.channels, h, w].

    Segmentation: one-hot (ignored pixels all zero); binary: {0, 1} (ignored -> 0); depth: metres
    (invalid -> 0); normals: as given (invalid is already 0). Downsizing averages areas; upsizing is
    bilinear. Raises ValueError (naming the modality) on a wrong shape, bad class ids or NaN.
    """
    name = spec.name
    if not isinstance(target, Tensor):
        raise ValueError(f"modality {name!r}: given label must be a tensor, got {type(target).__name__}")
    if spec.kind == "segmentation":
        if target.dim() != 3:
            raise ValueError(f"modality {name!r}: segmentation label must be [B, H, W], got {tuple(target.shape)}")
        t = target.long()
        valid = t != spec.ignore_index
        if ((t[valid] < 0) | (t[valid] >= spec.channels)).any():
            raise ValueError(f"modality {name!r}: class ids must be in [0, {spec.channels}) or {spec.ignore_index}")
        onehot = F.one_hot(torch.where(valid, t, 0), spec.channels) * valid.unsqueeze(-1)
        m = onehot.permute(0, 3, 1, 2).float()
    else:
        if target.dim() != 4 or target.shape[1] != spec.channels:
            raise ValueError(
                f"modality {name!r}: label must be [B, {spec.channels}, H, W], got {tuple(target.shape)}"
            )
        m = target.float()
        if torch.isnan(m).any():
            raise ValueError(f"modality {name!r}: given label contains NaN")
        if spec.kind == "binary":
            m = torch.where(m == spec.ignore_index, 0.0, m)
        elif spec.kind == "depth":
            m = m.clamp_min(0.0)
    size = (int(size[0]), int(size[1]))
    if m.shape[-2:] == size:
        return m
    if m.shape[-2] >= size[0] and m.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(m, size)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


class LabelEncoder(nn.Module):
    """Maps a label map [B, spec.channels, h, w] (see :func:`label_to_map`) into the task-feature space
    [B, C, h, w] (PartAL §3.3). No normalisation layers, so an encoded sample never depends on the
    other samples of its batch."""

    def __init__(self, spec: ModalitySpec, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(spec.channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, label_map: Tensor) -> Tensor:
        return self.net(label_map)


def format_prediction(spec: ModalitySpec, raw: Tensor, size: Sequence[int]) -> Tensor:
    """Raw head output [B, C, h, w] -> prediction [B, C, H, W] at ``size`` in ``spec``'s format.

    Bilinear upsampling, then: logits as they are (segmentation, binary), softplus for depth (metres,
    always > 0), L2 normalisation along channels for normals (unit vectors).
    """
    out = raw
    if tuple(raw.shape[-2:]) != tuple(size):
        out = F.interpolate(raw, size=tuple(size), mode="bilinear", align_corners=False)
    if spec.kind == "depth":
        return F.softplus(out)
    if spec.kind == "normals":
        return F.normalize(out, dim=1, eps=1e-6)
    return out
