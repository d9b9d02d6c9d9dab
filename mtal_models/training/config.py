"""Training options (one frozen dataclass), device resolution and seeding."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from mtal_models.training.data import SAMPLINGS

__all__ = ["TrainConfig", "resolve_device", "seed_everything"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    epochs:           total epochs (a resumed run continues up to this number).
    batch_size:       samples per step (when ``fit`` builds the DataLoader itself).
    lr, weight_decay: Adam settings; the LR decays as ``lr * (1 - it / total_its) ** poly_power`` per step.
    amp:              mixed precision; ``None`` = on exactly when the device is CUDA (never on CPU).
    device:           "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    seed:             seeds torch, numpy, random and the DataLoader's shuffling generator.
    substitution_prob: PartAL GT substitution (PAD-Net): per sample and dense modality, with this
                      probability a present label is passed to ``forward`` as ``given`` and that
                      (sample, modality) drops out of the loss (no reward for copying; see docs/training.md).
    committee:        ask ``forward`` for the pairwise committee outputs (MTAL-WACV) so they train.
    mtpsl_weight:     weight of the MTPSL cross-task consistency term (0 = off).
    grad_clip:        max global gradient norm (0 = no clipping).
    num_workers:      DataLoader workers (0 = load in the training process).
    sampling:         how ``fit`` draws partially labelled samples when it builds the DataLoader itself
                      (:func:`mtal_models.training.data.draw_probabilities`): "modality" (default: each
                      modality in an equal share of the draws), "label" or "image" (uniform). Fully
                      labelled sets are shuffled as usual whatever this says.
    pseudo_label_weight: PartAL pseudo-labels (0 = off): a sample with some labels learns its missing
                      dense modalities from the network's predictions with those labels given
                      (:mod:`mtal_models.training.pseudo`), at this weight times the share of training
                      done (a linear ramp from 0). Needs ``substitution_prob`` > 0, which trains the label
                      encoders the guesses come from.
    pseudo_label_confidence: categorical pseudo-labels keep only the pixels whose guessed class has at
                      least this probability (the others are ignored); regression guesses are kept whole.

    Semi-supervised training on unlabelled images (:mod:`mtal_models.training.semi`; only when ``fit`` is
    given ``unlabelled`` images):
    semi_weight:      weight of the unlabelled term (0 = off: ``fit`` trains exactly as without the pool).
    semi_threshold:   categorical pseudo-labels keep the pixels where the teacher's class is this likely.
    semi_class_share: per class the teacher predicts, its most confident share of pixels in the batch keeps its
                      pseudo-label even below ``semi_threshold`` (class-balanced self-training; 0 = off;
                      0.5 measured better than 0 on CamVid: docs/results/pool.md).
    semi_ramp:        share of the run over which the weight ramps up (exp(-5 (1 - x)^2)); 0 = no ramp.
    ema_decay:        the EMA teacher's decay (warm-up: ``min(ema_decay, (1 + t) / (10 + t))``).
    semi_cutmix:      probability that a strong view gets a CutMix box from another unlabelled image.
    semi_batch_size:  unlabelled images per step (0 = ``batch_size``).
    strong_aug:       photometric strong augmentation (jitter, greyscale, blur) of the labelled batches too.

    Run length (:mod:`mtal_models.training.budget`; off while ``min_steps`` and ``steps_per_label`` are 0):
    min_steps, steps_per_label, max_steps: the run takes ``max(min_steps, steps_per_label · N)`` optimiser
                      steps for N labelled images (capped at ``max_steps`` when > 0), rounded up to whole
                      epochs; ``epochs`` is then ignored.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    amp: bool | None = None
    device: str = "auto"
    seed: int = 0
    substitution_prob: float = 0.0
    committee: bool = False
    mtpsl_weight: float = 0.0
    grad_clip: float = 0.0
    num_workers: int = 0
    sampling: str = "modality"
    pseudo_label_weight: float = 0.0
    pseudo_label_confidence: float = 0.9
    semi_weight: float = 1.0
    semi_threshold: float = 0.95
    semi_class_share: float = 0.5
    semi_ramp: float = 0.2
    ema_decay: float = 0.99
    semi_cutmix: float = 0.5
    semi_batch_size: int = 0
    strong_aug: bool = False
    min_steps: int = 0
    steps_per_label: float = 0.0
    max_steps: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("poly_power", self.poly_power >= 0, "must be >= 0"),
            ("substitution_prob", 0.0 <= self.substitution_prob <= 1.0, "must be in [0, 1]"),
            ("mtpsl_weight", self.mtpsl_weight >= 0, "must be >= 0"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("sampling", self.sampling in SAMPLINGS, f"must be one of {SAMPLINGS}"),
            ("pseudo_label_weight", self.pseudo_label_weight >= 0, "must be >= 0"),
            ("pseudo_label_confidence", 0 <= self.pseudo_label_confidence <= 1, "must be in [0, 1]"),
            ("pseudo_label_weight", self.pseudo_label_weight == 0 or self.substitution_prob > 0,
             "needs substitution_prob > 0 (the label encoders that condition the guesses train with it)"),
            ("semi_weight", self.semi_weight >= 0, "must be >= 0"),
            ("semi_threshold", 0 <= self.semi_threshold <= 1, "must be in [0, 1]"),
            ("semi_class_share", 0 <= self.semi_class_share <= 1, "must be in [0, 1]"),
            ("semi_ramp", 0 <= self.semi_ramp <= 1, "must be in [0, 1]"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1)"),
            ("semi_cutmix", 0 <= self.semi_cutmix <= 1, "must be in [0, 1]"),
            ("semi_batch_size", self.semi_batch_size >= 0, "must be >= 0"),
            ("min_steps", self.min_steps >= 0, "must be >= 0"),
            ("steps_per_label", self.steps_per_label >= 0, "must be >= 0"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {why}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)

    def use_amp(self, device: torch.device) -> bool:
        """AMP only ever on CUDA; ``amp=None`` means "on when CUDA"."""
        return device.type == "cuda" and (self.amp is None or self.amp)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"TrainConfig.device: invalid device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device: {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator (for DataLoader shuffling) seeded alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
