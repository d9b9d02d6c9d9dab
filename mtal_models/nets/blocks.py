"""PAD-Net building blocks: task heads with MC-dropout, the multi-modal distillation, label encoders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtal_models.modalities import ModalitySpec

__all__ = ["LabelEncoder", "MultiModalDistillation", "TaskHead", "format_predictions", "label_to_map"]


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

    For every ordered pair (t <- a), SA_{t<-a}(F_a) = conv_m(F_a) * sigmoid(conv_g(F_a)). One grouped
    convolution (one group per source a, producing the message and gate maps for all K-1 targets)
    computes every pair at once, which is much faster on CPU than 2K(K-1) small convolutions.
    ``messages`` gives every pair's message; ``forward`` gives F'_t = F_t + sum_{a != t} SA_{t<-a}(F_a).
    The same class serves PAD-Net's distillation and the MTAL-WACV pairwise committee.
    ``kernel_size`` 1 (default) keeps MC-dropout cheap; spatial context comes from the 3x3 heads.
    """

    def __init__(self, names: Sequence[str], channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.names = list(names)
        self.channels = channels
        k = len(self.names)
        # pair order: source-major, i.e. the group of source a holds its messages to every t != a
        self.pairs = [(t, a) for a in self.names for t in self.names if t != a]
        self.conv = (
            nn.Conv2d(k * channels, k * (k - 1) * 2 * channels, kernel_size, padding=kernel_size // 2, groups=k)
            if k > 1
            else None
        )

    def _all_messages(self, feats: dict[str, Tensor]) -> Tensor:
        """Messages of every pair, [B, P, C, h, w] in ``self.pairs`` order."""
        assert self.conv is not None
        x = torch.cat([feats[a] for a in self.names], dim=1)
        b, _, h, w = x.shape
        y = self.conv(x).view(b, len(self.pairs), 2, self.channels, h, w)
        return y[:, :, 0] * torch.sigmoid(y[:, :, 1])

    def messages(self, feats: dict[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        """{(t, a): SA_{t<-a}(F_a) [B, C, h, w]} for every ordered pair; feats: name -> [B, C, h, w]."""
        if self.conv is None:
            return {}
        msg = self._all_messages(feats)
        return {pair: msg[:, i] for i, pair in enumerate(self.pairs)}

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """feats: name -> F_t [B, C, h, w] -> name -> F'_t [B, C, h, w]."""
        if self.conv is None:
            return dict(feats)
        msg = self._all_messages(feats)
        out = dict(feats)
        for i, (t, _) in enumerate(self.pairs):
            out[t] = out[t] + msg[:, i]
        return out


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


def format_predictions(
    specs: Mapping[str, ModalitySpec], raw: Mapping[str, Tensor], size: Sequence[int]
) -> dict[str, Tensor]:
    """Raw head outputs name -> [B, C, h, w] -> name -> [B, C, H, W] at ``size``, in each spec's format.

    One bilinear upsampling for all modalities (concatenated), then: logits as they are (segmentation,
    binary), softplus for depth (metres, always > 0), L2 normalisation along channels for normals.
    """
    if not raw:
        return {}
    names = list(raw)
    x = torch.cat([raw[n] for n in names], dim=1) if len(names) > 1 else raw[names[0]]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    parts = torch.split(x, [raw[n].shape[1] for n in names], dim=1)
    out: dict[str, Tensor] = {}
    for name, part in zip(names, parts, strict=True):
        kind = specs[name].kind
        if kind == "depth":
            part = F.softplus(part)
        elif kind == "normals":  # cheaper than F.normalize on large maps
            part = part * torch.rsqrt(part.square().sum(dim=1, keepdim=True).clamp_min(1e-12))
        out[name] = part
    return out
