"""The strategy registry: a plain dict name -> factory, and :func:`get_strategy`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from mtal_models.strategies.base import Strategy
from mtal_models.strategies.baselines import LL4AL, CoreSet, RandomStrategy
from mtal_models.strategies.multitask import MTAL, BoxMask
from mtal_models.strategies.per_modality import RBAL, EquAL, PartAL
from mtal_models.strategies.typiclust import TypiClust

__all__ = ["STRATEGIES", "get_strategy"]

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "random": RandomStrategy,
    "rbal": RBAL,
    "coreset": CoreSet,
    "ll4al": LL4AL,
    "equal": EquAL,
    "partal": partial(PartAL, unit="pair"),
    "partal_image": partial(PartAL, unit="image"),
    "mtal": partial(MTAL, mode="combined"),
    "mtal_unweighted": partial(MTAL, mode="combined", loss_weights="none"),
    "mtal_inconsistency": partial(MTAL, mode="inconsistency"),
    "mtal_diversity": partial(MTAL, mode="diversity"),
    "boxmask": BoxMask,
    "typiclust": TypiClust,
}


def get_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered under ``name`` with keyword ``options`` (e.g. ``mc_samples=10``).

    Unknown names raise ValueError listing the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {name!r}; valid: {', '.join(sorted(STRATEGIES))}")
    try:
        return STRATEGIES[name](**options)
    except TypeError as e:  # an option the strategy does not take
        raise ValueError(f"strategy {name!r}: bad options {sorted(options)}: {e}") from e
