"""LL4AL (Yoo & Kweon, "Learning Loss for Active Learning"): a loss-prediction module trained with the
network through a pairwise margin ranking loss, and the hook that plugs it into training.

How it plugs in: ``mtal_models.training.fit(..., extra_loss=hook)`` adds ``hook(out, batch)`` to each
step's loss and, because the hook returned by :func:`make_ll4al_extra_loss` is an ``nn.Module``,
optimises its parameters (the loss-prediction module) together with the network's. At selection time
pass the same module to the ``ll4al`` strategy: ``get_strategy("ll4al", module=hook.module)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtal_models.data.sample import Batch
from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import MultiTaskOutput

__all__ = [
    "LL4ALExtraLoss",
    "LossPredictionModule", "make_ll4al_extra_loss", "margin_ranking_loss", "multitask_sample_losses"]

Features = Tensor | Sequence[Tensor]


class LossPredictionModule(nn.Module):
    """Predicts a sample's loss [B] from one or several feature tensors.

    in_channels: channels of each input; inputs are [B, C_i] (already pooled) or [B, C_i, h, w]
    (globally average pooled here). Each goes through Linear(C_i, hidden) + ReLU; the concatenation
    through Linear(len * hidden, 1) (the LL4AL architecture over multi-scale features).
    """

    def __init__(self, in_channels: int | Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        chans = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        if not chans or any(c < 1 for c in chans):
            raise ValueError(f"loss prediction: in_channels must be positive, got {in_channels!r}")
        self.in_channels = chans
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(c, hidden), nn.ReLU()) for c in chans)
        self.out = nn.Linear(hidden * len(chans), 1)

    def forward(self, features: Features) -> Tensor:
        feats = [features] if isinstance(features, Tensor) else list(features)
        if len(feats) != len(self.branches):
            raise ValueError(f"loss prediction: expected {len(self.branches)} feature tensors, got {len(feats)}")
        parts = []
        for f, c, branch in zip(feats, self.in_channels, self.branches, strict=True):
            if f.dim() == 4:
                f = f.mean(dim=(2, 3))
            if f.dim() != 2 or f.shape[1] != c:
                raise ValueError(f"loss prediction: features must be [B, {c}] or [B, {c}, h, w], got {tuple(f.shape)}")
            parts.append(branch(f))
        return self.out(torch.cat(parts, dim=1)).squeeze(1)


def margin_ranking_loss(predicted: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """LL4AL's pairwise loss: the batch is split into pairs (i, B-1-i); for each pair
    max(0, -sign(l_i - l_j)·(l^_i - l^_j) + margin), averaged. Targets are detached. B < 2 -> 0."""
    if predicted.shape != target.shape or predicted.dim() != 1:
        raise ValueError(f"margin ranking loss: predicted and target must be [B], got "
                         f"{tuple(predicted.shape)} and {tuple(target.shape)}")
    half = predicted.shape[0] // 2
    if half == 0:
        return predicted.sum() * 0.0
    target = target.detach()
    p1, p2 = predicted[:half], predicted.flip(0)[:half]
    t1, t2 = target[:half], target.flip(0)[:half]
    return F.margin_ranking_loss(p1, p2, torch.sign(t1 - t2), margin=margin)


def multitask_sample_losses(modalities: Mapping[str, ModalitySpec]) -> Callable[[MultiTaskOutput, Batch], Tensor]:
    """Per-sample true loss [B] = Σ_k w_k L_k(final_k) over dense modalities (0 where absent)."""

    def losses(out: MultiTaskOutput, batch: Batch) -> Tensor:
        total: Tensor | None = None
        for name, spec in modalities.items():
            if not spec.dense or name not in out.final:
                continue
            present = batch.labels.is_present(name, batch.images.shape[0]).to(out.final[name].device)
            target = batch.labels.values.get(name)
            if target is None:
                continue
            l_k = spec.weight * spec.loss(out.final[name], target, present)
            total = l_k if total is None else total + l_k
        if total is None:
            raise ValueError(f"ll4al: no dense modality among {sorted(modalities)} to compute true losses from")
        return total

    return losses


class LL4ALExtraLoss(nn.Module):
    """The trainer hook ``extra_loss(out, batch) -> scalar`` as an ``nn.Module`` holding the
    :class:`LossPredictionModule`, so ``fit`` optimises the module's parameters with the network's:
    weight · margin ranking loss between ``module(out.pooled)`` and the true per-sample losses, over the
    samples with at least one label."""

    def __init__(
        self,
        module: LossPredictionModule,
        sample_losses: Callable[[MultiTaskOutput, Batch], Tensor],
        weight: float = 1.0,
        margin: float = 1.0,
        detach_features: bool = True,
    ) -> None:
        super().__init__()
        self.module = module
        self.sample_losses = sample_losses
        self.weight, self.margin, self.detach_features = weight, margin, detach_features

    def forward(self, out: MultiTaskOutput, batch: Batch) -> Tensor:
        if out.pooled is None:
            raise ValueError("ll4al: the network output has no pooled features (out.pooled is None)")
        feats = out.pooled.detach() if self.detach_features else out.pooled
        predicted = self.module(feats)
        true = self.sample_losses(out, batch)
        labelled = torch.zeros(true.shape[0], dtype=torch.bool, device=true.device)
        for name, present in batch.labels.present.items():
            if name in batch.labels.values:
                labelled |= present.to(true.device).bool()
        return self.weight * margin_ranking_loss(predicted[labelled], true[labelled], self.margin)


def make_ll4al_extra_loss(
    module: LossPredictionModule,
    modalities: Mapping[str, ModalitySpec] | None = None,
    sample_losses: Callable[[MultiTaskOutput, Batch], Tensor] | None = None,
    weight: float = 1.0,
    margin: float = 1.0,
    detach_features: bool = True,
) -> LL4ALExtraLoss:
    """Build the ``extra_loss`` for ``fit``. True losses come from ``sample_losses`` or, by default,
    :func:`multitask_sample_losses` of ``modalities``. ``detach_features`` stops the ranking loss from
    reaching the backbone (LL4AL detaches late in training; detaching throughout is the safe default)."""
    if sample_losses is None:
        if modalities is None:
            raise ValueError("ll4al: give the modalities (or a sample_losses function) to compute true losses")
        sample_losses = multitask_sample_losses(modalities)
    return LL4ALExtraLoss(module, sample_losses, weight, margin, detach_features)
