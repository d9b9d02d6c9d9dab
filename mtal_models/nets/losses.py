"""Loss reduction shared by the multi-task networks (PAD-Net, det+seg)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean"]


def masked_mean(per_sample: Tensor, present: Tensor, weights: Tensor | None = None) -> Tensor:
    """Scalar mean of a per-sample loss over the samples where the label is present.

    per_sample: [B] losses (values at absent samples are ignored, even NaN); present: bool [B];
    weights: optional per-sample weights [B] (MTAL-WACV s_k), multiplied in before averaging.
    Returns ``sum_{present} w_i * l_i / #present`` (so weights scale, they do not re-normalise), or a
    0 when no sample is present.
    """
    if per_sample.dim() != 1:
        raise ValueError(f"per-sample loss must be [B], got shape {tuple(per_sample.shape)}")
    b = per_sample.shape[0]
    if tuple(present.shape) != (b,):
        raise ValueError(f"present must be [B]={b}, got shape {tuple(present.shape)}")
    mask = present.to(device=per_sample.device, dtype=torch.bool)
    values = torch.where(mask, per_sample, per_sample.new_zeros(()))  # NaN-safe, also for gradients
    if weights is not None:
        if tuple(weights.shape) != (b,):
            raise ValueError(f"per-sample weights must be [B]={b}, got shape {tuple(weights.shape)}")
        w = weights.to(per_sample.device, per_sample.dtype)
        values = values * torch.where(mask, w, w.new_zeros(()))
    return values.sum() / mask.sum().clamp_min(1)
