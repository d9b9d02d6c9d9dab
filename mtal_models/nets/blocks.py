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
    The deterministic conv block and the stochastic rest are separate (``block``, ``finish``) so
    MC-dropout can run the block once and repeat only dropout + prediction.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout}")
        self.block = conv_bn_relu(in_channels, channels)
        self.dropout = dropout
        self.pred = nn.Conv2d(channels, out_channels, kernel_size=1)

    def finish(self, feats: Tensor, mc: bool = False, predict: bool = True) -> tuple[Tensor, Tensor | None]:
        """Block output [B, C, h, w] -> (dropped-out features, raw prediction or None if not ``predict``)."""
        feats = F.dropout2d(feats, self.dropout, training=self.training or mc)
        return feats, self.pred(feats) if predict else None

    def forward(self, x: Tensor, mc: bool = False) -> tuple[Tensor, Tensor]:
        feats, pred = self.finish(self.block(x), mc)
        assert pred is not None
        return feats, pred


class MultiModalDistillation(nn.Module):
    """Attention-gated message passing between task features (PAD-Net's distillation).

    For every ordered pair (t <- a), SA_{t<-a}(F_a) = conv_m(F_a) * sigmoid(conv_g(F_a)). One conv per
    source a produces the message and gate maps for all K-1 targets at once (fewer, larger convs are
    much faster on CPU than 2K(K-1) small ones). ``messages`` gives every pair's message; ``forward``
    gives F'_t = F_t + sum_{a != t} SA_{t<-a}(F_a). The same class serves PAD-Net's distillation and
    the MTAL-WACV pairwise committee. ``kernel_size`` 1 (default) keeps MC-dropout cheap; spatial
    context comes from the 3x3 head blocks.
    """

    def __init__(self, names: Sequence[str], channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.names = list(names)
        self.channels = channels
        k = len(self.names)
        self.targets = {a: [t for t in self.names if t != a] for a in self.names}
        # one conv per source, in ``names`` order (none when K = 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, (k - 1) * 2 * channels, kernel_size, padding=kernel_size // 2)
            for _ in (self.names if k > 1 else [])
        )

    def _source_messages(self, i: int, x: Tensor) -> Tensor:
        """Messages of source ``names[i]`` (F_a [B, C, h, w]) to its K-1 targets: [B, K-1, C, h, w]."""
        source = self.names[i]
        b, _, h, w = x.shape
        y = self.convs[i](x).view(b, len(self.targets[source]), 2, self.channels, h, w)
        return F.glu(y, dim=2).squeeze(2)  # message * sigmoid(gate), fused

    def messages(self, feats: dict[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        """{(t, a): SA_{t<-a}(F_a) [B, C, h, w]} for every ordered pair; feats: name -> [B, C, h, w]."""
        out: dict[tuple[str, str], Tensor] = {}
        for i, a in enumerate(self.names[: len(self.convs)]):
            msg = self._source_messages(i, feats[a])
            out.update({(t, a): msg[:, j] for j, t in enumerate(self.targets[a])})
        return out

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """feats: name -> F_t [B, C, h, w] -> name -> F'_t [B, C, h, w]."""
        out = dict(feats)
        for i, a in enumerate(self.names[: len(self.convs)]):
            msg = self._source_messages(i, feats[a])
            for j, t in enumerate(self.targets[a]):
                out[t] = out[t] + msg[:, j]
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

    Bilinear upsampling, then: logits as they are (segmentation, binary), softplus for depth (metres,
    always > 0), L2 normalisation along channels for normals (unit vectors). Outputs are contiguous.
    """
    out: dict[str, Tensor] = {}
    for name, x in raw.items():
        fresh = tuple(x.shape[-2:]) != tuple(size)
        if fresh:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        kind = specs[name].kind
        if kind == "depth":
            x = F.softplus(x)
        elif kind == "normals":  # cheaper than F.normalize on large maps; in place when no graph is kept
            scale = torch.rsqrt(x.square().sum(dim=1, keepdim=True).clamp_min(1e-12))
            x = x.mul_(scale) if fresh and not torch.is_grad_enabled() else x * scale
        out[name] = x
    return out
