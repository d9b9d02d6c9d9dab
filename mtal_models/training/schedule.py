"""Optimiser and learning-rate schedule: Adam with a per-step polynomial decay."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR

from mtal_models.training.config import TrainConfig

__all__ = ["make_optimizer", "make_scheduler"]


def make_optimizer(config: TrainConfig, modules: Iterable[nn.Module]) -> Adam:
    """Adam over the trainable parameters of ``modules``, one parameter group per module (order matters
    when restoring a saved optimizer state: the network first, then auxiliary modules)."""
    groups = []
    for module in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params})
    if not groups:
        raise ValueError("make_optimizer: no trainable parameters")
    return Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: Optimizer, steps_per_epoch: int) -> LRScheduler:
    """Poly LR stepped once per iteration over ``epochs * steps_per_epoch`` iterations."""
    if steps_per_epoch < 1:
        raise ValueError(f"make_scheduler: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return PolynomialLR(optimizer, total_iters=config.epochs * steps_per_epoch, power=config.poly_power)
