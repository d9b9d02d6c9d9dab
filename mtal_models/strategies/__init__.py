"""Selection strategies of PartAL, MTAL-WACV and MTC, plus the baselines they compare against.

Layers (baal/modAL style): pure scoring functions on tensors (:mod:`.uncertainty`, :mod:`.diversity`,
:mod:`.consistency`, :mod:`.mtc`, :mod:`.lossprediction`); strategies as small classes with a per-batch
reduction and a pool-level ``select`` (:mod:`.per_modality`, :mod:`.baselines`, :mod:`.multitask`);
selection under a budget counted in (image, modality) labels (:mod:`.selection`); one driver that runs a
network over a pool (:mod:`.collect`); the registry (:mod:`.registry`). Higher score = label first.

Typical use::

    strategy = get_strategy("partal", mc_samples=10)
    pool = collect_pool_outputs(model, batches, strategy)
    selection = strategy.select(pool, labelled, budget=240)   # labelled: {modality: bool [N]}
    selection.pairs  # [(image index, modality), ...]
"""

from mtal_models.strategies.base import BatchOutputs, Needs, PoolScores, Strategy, concat_pool
from mtal_models.strategies.baselines import LL4AL, CoreSet, RandomStrategy
from mtal_models.strategies.collect import batch_outputs, collect_pool_outputs
from mtal_models.strategies.lossprediction import LossPredictionModule, make_ll4al_extra_loss, margin_ranking_loss
from mtal_models.strategies.multitask import MTAL, BoxMask
from mtal_models.strategies.per_modality import RBAL, EquAL, PartAL
from mtal_models.strategies.registry import STRATEGIES, get_strategy
from mtal_models.strategies.selection import Selection, select_images, select_pairs
from mtal_models.strategies.uncertainty import MinMaxNormalizer

__all__ = [
    "LL4AL",
    "MTAL",
    "RBAL",
    "STRATEGIES",
    "BatchOutputs",
    "BoxMask",
    "CoreSet",
    "EquAL",
    "LossPredictionModule",
    "MinMaxNormalizer",
    "Needs",
    "PartAL",
    "PoolScores",
    "RandomStrategy",
    "Selection",
    "Strategy",
    "batch_outputs",
    "collect_pool_outputs",
    "concat_pool",
    "get_strategy",
    "make_ll4al_extra_loss",
    "margin_ranking_loss",
    "select_images",
    "select_pairs",
]
