"""Training: options, the loop (fit / train_one_epoch / evaluate), checkpoints and the MTPSL term."""

from mtal_models.training.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    network_name,
    save_checkpoint,
)
from mtal_models.training.config import TrainConfig, resolve_device, seed_everything
from mtal_models.training.data import SAMPLINGS, SampleDataset, draw_probabilities, make_loader, make_sampler
from mtal_models.training.loop import (
    ExtraLoss,
    Progress,
    SampleWeights,
    TrainResult,
    evaluate,
    fit,
    substitute_labels,
    train_one_epoch,
    weights_for,
)
from mtal_models.training.mtpsl import MTPSLMapper
from mtal_models.training.schedule import make_optimizer, make_scheduler

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "ExtraLoss",
    "MTPSLMapper",
    "SAMPLINGS",
    "Progress",
    "SampleDataset",
    "SampleWeights",
    "TrainConfig",
    "TrainResult",
    "draw_probabilities",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_loader",
    "make_optimizer",
    "make_sampler",
    "make_scheduler",
    "network_name",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "substitute_labels",
    "train_one_epoch",
    "weights_for",
]
