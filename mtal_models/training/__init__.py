"""Training: options, the loop (fit / train_one_epoch / evaluate), checkpoints, the MTPSL and semi-supervised
terms and the step budget."""

from mtal_models.training.budget import budget_on, plan_epochs, step_budget
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
from mtal_models.training.semi import EMATeacher, SemiBranch, rampup

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "EMATeacher",
    "ExtraLoss",
    "MTPSLMapper",
    "SAMPLINGS",
    "Progress",
    "SampleDataset",
    "SampleWeights",
    "SemiBranch",
    "TrainConfig",
    "TrainResult",
    "budget_on",
    "draw_probabilities",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_loader",
    "make_optimizer",
    "make_sampler",
    "make_scheduler",
    "network_name",
    "plan_epochs",
    "rampup",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "step_budget",
    "substitute_labels",
    "train_one_epoch",
    "weights_for",
]
