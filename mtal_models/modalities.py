"""Modalities: one frozen spec per prediction target, and the per-kind behaviour behind it.

A *modality* is one thing the network predicts for an image. Its *kind* fixes the tensor formats,
the loss, the metric and the per-pixel uncertainty:

===============  ==========================  =================================  ======================
kind             prediction (network output)  label (target)                     uncertainty per pixel
===============  ==========================  =================================  ======================
segmentation     logits   [B, C, H, W]        int64 [B, H, W], ``ignore_index``   Shannon entropy
binary           logits   [B, 1, H, W]        float [B, 1, H, W] in {0, 1};       binary entropy
                                              ``ignore_index`` = unlabelled pixel
depth            metres   [B, 1, H, W]        float [B, 1, H, W]; <= 0 = invalid  Gaussian diff. entropy
normals          unit vec [B, 3, H, W]        float [B, 3, H, W]; zero = invalid  Gaussian diff. entropy
detection        [B, K, 6 + C] (see below)    list of {"boxes": [N, 4] xyxy px,   none (use MTC scores)
                                                       "labels": int64 [N]}
===============  ==========================  =================================  ======================

Detection predictions are padded to a fixed ``K`` rows per image: columns 0-3 box ``x1, y1, x2, y2``
in input pixels, 4 the score, 5 the class id (as float), ``6:`` the class distribution (sums to 1).
Padding rows have score 0 and class -1 (see :func:`unpack_detections`).

Losses are per sample (shape ``[B]``) and computed only on samples whose ``present`` flag is set:
absent samples get 0 and their label content is never read, so garbage (even NaN) there changes
nothing. Detection losses come from the detection network itself (torchvision's FCOS losses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KINDS",
    "Kind",
    "ModalitySpec",
    "build_modalities",
    "gaussian_entropy",
    "shannon_entropy",
    "unpack_detections",
]

Kind = Literal["segmentation", "binary", "depth", "normals", "detection"]
KINDS: tuple[str, ...] = ("segmentation", "binary", "depth", "normals", "detection")
DENSE_KINDS: tuple[str, ...] = ("segmentation", "binary", "depth", "normals")
_DEFAULT_METRIC = {
    "segmentation": "miou",
    "binary": "f1",
    "depth": "rmse",
    "normals": "mean_angle",
    "detection": "map",
}
_METRICS = {"miou", "f1", "odsf", "rmse", "mean_angle", "map"}
_EPS = 1e-8


@dataclass(frozen=True)
class ModalitySpec:
    """One prediction target.

    ``channels`` is the number of classes for segmentation (background included) and detection
    (background excluded), 1 for binary and depth, 3 for normals. ``weight`` is w_t in the
    multi-task loss; ``metric`` names the evaluation metric (defaults per kind).
    """

    name: str
    kind: str
    channels: int
    ignore_index: int = 255
    weight: float = 1.0
    metric: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"modality name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r}; valid kinds: {KINDS}")
        expected = {"binary": 1, "depth": 1, "normals": 3}.get(self.kind)
        if expected is not None and self.channels != expected:
            raise ValueError(
                f"modality {self.name!r}: kind {self.kind} has {expected} channel(s), got {self.channels}"
            )
        if self.kind == "segmentation" and self.channels < 2:
            raise ValueError(f"modality {self.name!r}: segmentation needs >= 2 classes, got {self.channels}")
        if self.kind == "detection" and self.channels < 1:
            raise ValueError(f"modality {self.name!r}: detection needs >= 1 class, got {self.channels}")
        if not self.metric:
            object.__setattr__(self, "metric", _DEFAULT_METRIC[self.kind])
        if self.metric not in _METRICS:
            raise ValueError(f"modality {self.name!r}: unknown metric {self.metric!r}; valid: {sorted(_METRICS)}")

    # ---- description -------------------------------------------------------------------------
    @property
    def dense(self) -> bool:
        """True for per-pixel modalities (everything but detection)."""
        return self.kind in DENSE_KINDS

    @property
    def categorical(self) -> bool:
        """True where uncertainty is Shannon entropy (segmentation, binary)."""
        return self.kind in ("segmentation", "binary")

    @property
    def head_channels(self) -> int:
        """Output channels of a dense head (detection: number of classes)."""
        return self.channels

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModalitySpec:
        return cls(**dict(d))

    # ---- validation --------------------------------------------------------------------------
    def check_prediction(self, pred: Tensor) -> None:
        """Raise ValueError (naming this modality) unless ``pred`` is a dense prediction [B, C, H, W]."""
        if not self.dense:
            raise ValueError(f"modality {self.name!r}: detection predictions are not dense maps")
        if not isinstance(pred, Tensor) or pred.dim() != 4:
            raise ValueError(f"modality {self.name!r}: prediction must be a [B, C, H, W] tensor")
        if pred.shape[0] == 0:
            raise ValueError(f"modality {self.name!r}: empty batch")
        if pred.shape[1] != self.channels:
            raise ValueError(
                f"modality {self.name!r}: prediction has {pred.shape[1]} channels, expected {self.channels}"
            )

    def check_target(self, target: Tensor, pred: Tensor) -> None:
        """Raise ValueError unless a (present-only) dense target matches ``pred`` [B, C, H, W]."""
        if not isinstance(target, Tensor):
            raise ValueError(f"modality {self.name!r}: label must be a tensor, got {type(target).__name__}")
        want = (pred.shape[0], *pred.shape[2:]) if self.kind == "segmentation" else tuple(pred.shape)
        if tuple(target.shape) != want:
            raise ValueError(f"modality {self.name!r}: label shape {tuple(target.shape)}, expected {want}")
        if target.is_floating_point() and torch.isnan(target).any():
            raise ValueError(f"modality {self.name!r}: label contains NaN")
        if self.kind == "segmentation":
            valid = target != self.ignore_index
            if ((target[valid] < 0) | (target[valid] >= self.channels)).any():
                raise ValueError(
                    f"modality {self.name!r}: class ids must be in [0, {self.channels}) or {self.ignore_index}"
                )

    # ---- loss --------------------------------------------------------------------------------
    def loss(self, pred: Tensor, target: Tensor, present: Tensor) -> Tensor:
        """Per-sample loss [B]: the mean over the sample's valid pixels; 0 where ``present`` is False.

        pred: [B, C, H, W] (see module table); target: label in this kind's format, [B, ...];
        present: bool [B]. Labels of absent samples are never read.
        """
        self.check_prediction(pred)
        if present.shape != (pred.shape[0],):
            raise ValueError(f"modality {self.name!r}: present must be [B]={pred.shape[0]}, got {tuple(present.shape)}")
        out = pred.new_zeros(pred.shape[0])
        idx = present.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return out
        p, t = pred[idx], target[idx.to(target.device)].to(pred.device)
        self.check_target(t, p)
        return out.index_put((idx,), _LOSSES[self.kind](self, p, t))

    def pseudo_target(self, pred: Tensor, confidence: float = 0.0) -> Tensor:
        """A label in this kind's target format made from a prediction (pseudo-labels for training).

        pred: [B, C, H, W] raw network output. Segmentation -> argmax class ids int64 [B, H, W];
        binary -> {0, 1} float [B, 1, H, W]; for both, pixels whose predicted class has a probability
        below ``confidence`` get ``ignore_index``. Depth, normals -> the prediction itself, detached
        (depth <= 0 and zero normals count as invalid pixels, as in real labels).
        """
        if not self.dense:
            raise ValueError(f"modality {self.name!r}: detection has no dense pseudo-label")
        self.check_prediction(pred)
        pred = pred.detach()
        if self.kind == "segmentation":
            top, target = pred.softmax(dim=1).max(dim=1)
        elif self.kind == "binary":
            p = pred.sigmoid()
            top, target = torch.maximum(p, 1 - p), (p > 0.5).float()
        else:
            return pred.clone()
        return target.masked_fill(top < confidence, self.ignore_index)

    # ---- uncertainty -------------------------------------------------------------------------
    def activate(self, pred: Tensor) -> Tensor:
        """Logits -> probabilities for categorical kinds; identity for regression. [..., C, H, W]."""
        if self.kind == "segmentation":
            return pred.softmax(dim=-3)
        if self.kind == "binary":
            return pred.sigmoid()
        return pred

    def uncertainty(self, samples: Tensor) -> Tensor:
        """Per-pixel uncertainty [B, H, W] from MC samples [B, D, C, H, W] (raw network outputs).

        Categorical: Shannon entropy (nats) of the mean probability over D. Regression: Gaussian
        differential entropy with the per-channel variance over D (diagonal covariance).
        """
        if not self.dense:
            raise ValueError(f"modality {self.name!r}: detection has no per-pixel uncertainty")
        if samples.dim() != 5 or samples.shape[2] != self.channels:
            raise ValueError(
                f"modality {self.name!r}: MC samples must be [B, D, {self.channels}, H, W], "
                f"got {tuple(samples.shape)}"
            )
        if self.categorical:
            probs = self.activate(samples).mean(dim=1)
            if self.kind == "binary":
                probs = torch.cat([1 - probs, probs], dim=1)
            return shannon_entropy(probs, dim=1)
        if samples.shape[1] < 2:
            raise ValueError(f"modality {self.name!r}: Gaussian entropy needs >= 2 MC samples")
        return gaussian_entropy(samples.var(dim=1), dim=1)


def shannon_entropy(probs: Tensor, dim: int = 1) -> Tensor:
    """H(p) = -sum p log p along ``dim`` (nats); 0·log 0 taken as 0."""
    return -(probs * probs.clamp_min(_EPS).log()).sum(dim=dim)


def gaussian_entropy(var: Tensor, dim: int = 1) -> Tensor:
    """Differential entropy of a Gaussian with diagonal covariance ``var`` along ``dim``.

    h = N/2·log(2π) + ½·log det Σ + N/2 with N = var.shape[dim]; variances are floored at 1e-8.
    """
    n = var.shape[dim]
    return 0.5 * n * math.log(2 * math.pi) + 0.5 * var.clamp_min(_EPS).log().sum(dim=dim) + 0.5 * n


def _seg_loss(spec: ModalitySpec, p: Tensor, t: Tensor) -> Tensor:
    per_pixel = F.cross_entropy(p, t.long(), ignore_index=spec.ignore_index, reduction="none")
    valid = (t != spec.ignore_index).float()
    return (per_pixel * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def _binary_loss(spec: ModalitySpec, p: Tensor, t: Tensor) -> Tensor:
    valid = (t != spec.ignore_index).float()
    target = torch.where(valid.bool(), t.float(), torch.zeros_like(p))
    per_pixel = F.binary_cross_entropy_with_logits(p, target, reduction="none")
    return (per_pixel * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def _depth_loss(spec: ModalitySpec, p: Tensor, t: Tensor) -> Tensor:
    valid = (t > 0).float()
    per_pixel = (p - t).abs() * valid
    return per_pixel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def _normals_loss(spec: ModalitySpec, p: Tensor, t: Tensor) -> Tensor:
    valid = (t.abs().sum(1) > 0).float()  # [B, H, W]
    cos = F.cosine_similarity(p, t, dim=1, eps=_EPS)
    return ((1 - cos) * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


_LOSSES = {
    "segmentation": _seg_loss,
    "binary": _binary_loss,
    "depth": _depth_loss,
    "normals": _normals_loss,
}


def build_modalities(items: Iterable[tuple[Any, ...] | ModalitySpec]) -> dict[str, ModalitySpec]:
    """Build an ordered ``{name: spec}`` dict from ``(name, kind, channels[, options])`` tuples.

    ``options`` is a dict of further ModalitySpec fields, e.g. ``{"metric": "odsf"}`` for edges.
    Example: ``build_modalities([("semantic", "segmentation", 5), ("depth", "depth", 1)])``.
    """
    specs: dict[str, ModalitySpec] = {}
    for item in items:
        if isinstance(item, ModalitySpec):
            spec = item
        else:
            if not 3 <= len(item) <= 4:
                raise ValueError(f"modality entry must be (name, kind, channels[, options]), got {item!r}")
            spec = ModalitySpec(item[0], item[1], int(item[2]), **(item[3] if len(item) == 4 else {}))
        if spec.name in specs:
            raise ValueError(f"duplicate modality name {spec.name!r}")
        specs[spec.name] = spec
    if not specs:
        raise ValueError("at least one modality is required")
    return specs


def unpack_detections(dets: Tensor) -> list[dict[str, Tensor]]:
    """Padded detections [B, K, 6 + C] -> per image {"boxes" [N, 4], "scores" [N], "labels" [N],
    "probs" [N, C]}, padding rows (class < 0) dropped."""
    if dets.dim() != 3 or dets.shape[-1] < 7:
        raise ValueError(f"detections must be [B, K, 6 + C], got {tuple(dets.shape)}")
    out = []
    for d in dets:
        keep = d[:, 5] >= 0
        d = d[keep]
        out.append({"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].long(), "probs": d[:, 6:]})
    return out
