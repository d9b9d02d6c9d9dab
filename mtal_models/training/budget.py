"""How long a run trains: a step budget that grows with the labelled set, with a floor and a cap.

A fixed number of epochs makes a run over 10 images a few dozen steps and one over 400 images thousands;
a fixed number of steps stops small sets short of convergence or over-trains them. The rule here:

    steps(N) = min(max_steps, max(min_steps, ceil(steps_per_label · N)))     (max_steps 0 = no cap)

for N labelled images, rounded up to whole epochs of ``ceil(N / batch_size)`` steps. docs/training.md
gives the values measured to converge.
"""

from __future__ import annotations

import math

from mtal_models.training.config import TrainConfig

__all__ = ["budget_on", "plan_epochs", "step_budget"]


def budget_on(config: TrainConfig) -> bool:
    """True when ``config`` sets a step budget (``min_steps`` or ``steps_per_label`` > 0)."""
    return config.min_steps > 0 or config.steps_per_label > 0


def step_budget(n_labelled: int, min_steps: int, steps_per_label: float, max_steps: int = 0) -> int:
    """Optimiser steps for ``n_labelled`` images: max(min_steps, ceil(steps_per_label · N)), capped at
    ``max_steps`` when that is > 0; at least 1."""
    if n_labelled < 0:
        raise ValueError(f"step_budget: n_labelled must be >= 0, got {n_labelled}")
    steps = max(min_steps, math.ceil(steps_per_label * n_labelled))
    if max_steps > 0:
        steps = min(steps, max_steps)
    return max(1, steps)


def plan_epochs(config: TrainConfig, n_labelled: int, steps_per_epoch: int) -> int:
    """Epochs to run: ``config.epochs`` without a budget, else the budget's steps in whole epochs."""
    if not budget_on(config):
        return config.epochs
    if steps_per_epoch < 1:
        raise ValueError(f"plan_epochs: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    steps = step_budget(n_labelled, config.min_steps, config.steps_per_label, config.max_steps)
    return max(1, math.ceil(steps / steps_per_epoch))
