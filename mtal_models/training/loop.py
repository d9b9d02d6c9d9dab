"""The training loop as plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``.

Partial labels: each network's ``losses`` averages a modality's loss over the samples where it is
present (0 when none is), so absent labels are never read; the total is Σ_t spec.weight · loss_t, plus
``mtpsl_weight`` · MTPSL term, plus ``extra_loss(out, batch)`` when given.
See docs/training.md for the options and the GT-substitution rule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from mtal_models.data.augment import photometric
from mtal_models.data.sample import Batch, Sample
from mtal_models.metrics import MetricSet
from mtal_models.nets.base import MultiTaskNet, MultiTaskOutput
from mtal_models.training.budget import budget_on, plan_epochs
from mtal_models.training.checkpoint import Checkpoint, save_checkpoint
from mtal_models.training.config import TrainConfig, resolve_device, seed_everything
from mtal_models.training.data import make_loader
from mtal_models.training.health import BoxHealth
from mtal_models.training.mtpsl import MTPSLMapper, feature_target
from mtal_models.training.pseudo import pseudo_labels, ramp
from mtal_models.training.schedule import make_optimizer, make_scheduler
from mtal_models.training.semi import EMATeacher, SemiBranch, Unlabelled
from mtal_models.training.substitution import substitutable, substitute_labels, without_conditioned

__all__ = [
    "ExtraLoss",
    "Progress",
    "SampleWeights",
    "TrainResult",
    "evaluate",
    "fit",
    "substitute_labels",
    "train_one_epoch",
    "weights_for",
    "without_conditioned",
]

Progress = Callable[[int, int, float], None]
"""progress(epoch, step, loss): epoch from 1, step from 1 within the epoch, the step's total loss."""
ExtraLoss = Callable[[MultiTaskOutput, Batch], Tensor]
"""extra_loss(out, batch) -> scalar added to the loss (e.g. LL4AL's loss-prediction module)."""
SampleWeights = Mapping[str, Mapping[str, float]]
"""sample id -> {modality: weight}; missing entries weigh 1."""


def weights_for(
    ids: Sequence[str], modalities: Sequence[str], sample_weights: SampleWeights, device: torch.device
) -> dict[str, Tensor]:
    """Per-modality weights [B] for the batch ``ids`` (1 where ``sample_weights`` has no entry)."""
    out = {}
    for name in modalities:
        w = [float(sample_weights.get(i, {}).get(name, 1.0)) for i in ids]
        if any(not math.isfinite(v) or v < 0 for v in w):
            raise ValueError(f"sample weights for modality {name!r} must be finite and >= 0, got {w}")
        out[name] = torch.tensor(w, dtype=torch.float32, device=device)
    return out


def total_loss(model: MultiTaskNet, losses: Mapping[str, Tensor]) -> Tensor:
    """Σ_t spec.weight · loss_t over the network's modalities."""
    missing = [n for n in model.modalities if n not in losses]
    if missing:
        raise ValueError(f"the network's losses() gave no value for modalities {missing}")
    return sum(model.modalities[n].weight * losses[n] for n in model.modalities)  # type: ignore[return-value]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_one_epoch(
    model: MultiTaskNet,
    loader: DataLoader,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    config: TrainConfig,
    scaler: torch.amp.GradScaler,
    epoch: int,
    weights_fn: Callable[[Batch], Mapping[str, Tensor] | None] | None = None,
    progress: Progress | None = None,
    extra_loss: ExtraLoss | None = None,
    mtpsl: MTPSLMapper | None = None,
    generator: torch.Generator | None = None,
    teacher: MultiTaskNet | None = None,
    health: BoxHealth | None = None,
    semi: SemiBranch | None = None,
    augment: torch.Generator | None = None,
) -> float:
    """One pass over ``loader`` (yielding :class:`Batch`); returns the mean step loss.

    The scheduler is stepped once per iteration. ``weights_fn(batch)`` gives per-modality sample weights
    [B] for ``model.losses``. ``generator`` drives GT substitution (``config.substitution_prob``).
    With ``config.pseudo_label_weight`` > 0, partially labelled samples also learn their missing dense
    modalities from the network's own predictions with their labels given (:mod:`.pseudo`), weighted
    ``pseudo_label_weight`` x the share of training done; with a ``teacher`` network (already trained,
    e.g. the previous round's), the teacher guesses at the full weight from the first step.
    ``health`` counts each step's degenerate predicted boxes (collapse detection).
    ``semi`` adds the unlabelled term of each step and moves its EMA teacher after the optimiser step
    (:mod:`.semi`; its ``start_epoch`` must have been called). ``augment`` draws the labelled batches'
    photometric strong views when ``config.strong_aug`` (default: a generator seeded ``config.seed + epoch``).
    """
    device = _device_of(model)
    amp = config.use_amp(device)
    names = substitutable(model) if config.substitution_prob > 0 else []
    guesser = model if teacher is None else teacher
    anchors = substitutable(guesser) if config.pseudo_label_weight > 0 else []
    if config.strong_aug and augment is None:
        augment = torch.Generator().manual_seed(config.seed + epoch)
    model.train()
    for aux in (mtpsl, extra_loss):
        if isinstance(aux, nn.Module):
            aux.train()
    losses_seen: list[float] = []
    for step, batch in enumerate(loader, start=1):
        if not isinstance(batch, Batch):
            raise ValueError(f"the DataLoader must yield mtal_models Batch objects, got {type(batch).__name__}")
        batch = batch.to(device)
        given, loss_labels = substitute_labels(batch.labels, names, config.substitution_prob, generator)
        weights = weights_fn(batch) if weights_fn is not None else None
        pseudo = None
        if anchors:
            pseudo = pseudo_labels(guesser, batch.images, batch.labels, anchors, config.pseudo_label_confidence)
        images = photometric(batch.images, augment) if config.strong_aug else batch.images
        with torch.autocast(device_type=device.type, enabled=amp):
            out = model(images, given=given, committee=config.committee)
            loss = total_loss(model, model.losses(out, loss_labels, weights))
            if pseudo is not None:
                share = ramp(epoch, step, len(loader), config.epochs) if teacher is None else 1.0
                loss = loss + config.pseudo_label_weight * share * total_loss(model, model.losses(out, pseudo))
            if mtpsl is not None and config.mtpsl_weight > 0:
                loss = loss + config.mtpsl_weight * mtpsl.loss(out, batch.labels)
            if extra_loss is not None:
                loss = loss + extra_loss(out, batch if given is None else without_conditioned(batch, given))
            if semi is not None:
                loss = loss + semi.loss(model, ramp(epoch, step, len(loader), config.epochs))
        if health is not None:
            health.update(out.final)
        if not amp and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if semi is not None:
            semi.after_step(model)
        if scheduler is not None:
            scheduler.step()
        value = float(loss.detach())
        losses_seen.append(value)
        if progress is not None:
            progress(epoch, step, value)
    if not losses_seen:
        raise ValueError("train_one_epoch: the DataLoader yielded no batch")
    return sum(losses_seen) / len(losses_seen)


@torch.no_grad()
def evaluate(model: MultiTaskNet, loader: DataLoader, **binary_options: Any) -> dict[str, Any]:
    """``{modality: {metric: value}, "multi_task_loss": ..., "total_loss": ...}`` in eval mode.

    ``multi_task_loss`` is the papers' figure: mean per sample of Σ_t w_t L_t on the **final** predictions.
    ``total_loss`` is what training minimises (PAD-Net adds the initial heads' losses, about twice as much).
    Metrics use the final predictions without any ``given`` labels; see :mod:`mtal_models.metrics`.
    ``binary_options`` (``tolerance``, ``n_thresholds``) go to the binary/odsF accumulators.
    """
    device = _device_of(model)
    was_training = model.training
    model.eval()
    metrics = MetricSet(model.modalities, **binary_options)
    try:
        for batch in loader:
            batch = batch.to(device)
            out = model(batch.images)
            total = total_loss(model, model.losses(out, batch.labels))
            final_only = MultiTaskOutput(final=out.final, pooled=out.pooled, extras=out.extras)
            loss = total_loss(model, model.losses(final_only, batch.labels))
            metrics.update(out.final, batch.labels.values, batch.labels.present, float(loss), len(batch.ids),
                           total_loss=float(total))
    finally:
        model.train(was_training)
    return metrics.compute()


@dataclass
class TrainResult:
    """What ``fit`` did. ``history``: mean train loss per epoch run; ``val``: evaluate() per epoch run
    (empty without validation data); ``epoch``: last completed epoch (what a checkpoint stores);
    ``box_health``: per detection modality, the degenerate boxes among those predicted on the training
    steps of the last epoch (:func:`mtal_models.metrics.box_collapse`; {} without detection);
    ``epochs``: the run's planned length (``config.epochs``, or the step budget's epochs);
    ``teacher``: the EMA teacher of the semi-supervised term (None when off); ``unlabelled``: the number
    of unlabelled images it drew from (0 when off)."""

    history: list[float]
    val: list[dict[str, Any]]
    epochs_run: int
    epoch: int
    optimizer: Optimizer
    scheduler: LRScheduler
    mtpsl: MTPSLMapper | None = None
    step_losses: list[float] = field(default_factory=list)
    box_health: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs: int = 0
    teacher: EMATeacher | None = None
    unlabelled: int = 0

    def save(self, path: str | Path, model: MultiTaskNet, extra: Mapping[str, Any] | None = None) -> Path:
        """save_checkpoint with this run's optimizer, scheduler, epoch (and MTPSL mapper, EMA teacher states)."""
        extra = dict(extra or {})
        if self.mtpsl is not None:
            extra["mtpsl_state"] = self.mtpsl.state_dict()
        if self.teacher is not None:
            extra["ema_state"] = self.teacher.state_dict()
        return save_checkpoint(path, model, self.optimizer, self.scheduler, epoch=self.epoch, extra=extra)


def _as_loader(
    data: Sequence[Sample] | DataLoader, model: MultiTaskNet, config: TrainConfig, shuffle: bool, gen: torch.Generator
) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return make_loader(data, model.modalities, config.batch_size, shuffle, config.num_workers, gen,
                       sampling=config.sampling)


def _probe_feature_dim(model: MultiTaskNet, loader: DataLoader) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = next(iter(loader))
            return int(feature_target(model(batch.images[:1].to(_device_of(model)))).shape[1])
    finally:
        model.train(was_training)


def _semi_branch(
    model: MultiTaskNet, unlabelled: Unlabelled | None, config: TrainConfig, start: Checkpoint | None
) -> SemiBranch | None:
    """The semi-supervised branch of a run, or None when off (no pool, an empty one, ``semi_weight`` 0, or
    no dense modality to learn from it: detection takes no unlabelled term)."""
    if unlabelled is None or config.semi_weight <= 0:
        return None
    size = len(unlabelled.dataset) if isinstance(unlabelled, DataLoader) else len(unlabelled)  # type: ignore[arg-type]
    if size == 0:
        return None
    if size == 1:
        warnings.warn("one unlabelled image: BatchNorm cannot train on a batch of one; no semi-supervised term",
                      stacklevel=3)
        return None
    if not any(s.dense for s in model.modalities.values()):
        warnings.warn("unlabelled images given but the network has no dense modality: no semi-supervised term",
                      stacklevel=3)
        return None
    semi = SemiBranch(model, unlabelled, config)
    if start is not None and "ema_state" in start.extra:
        semi.teacher.load_state_dict(start.extra["ema_state"])
    return semi


def fit(
    model: MultiTaskNet,
    train: Sequence[Sample] | DataLoader,
    config: TrainConfig,
    val: Sequence[Sample] | DataLoader | None = None,
    start: Checkpoint | None = None,
    progress: Progress | None = None,
    sample_weights: SampleWeights | None = None,
    extra_loss: ExtraLoss | None = None,
    until_epoch: int | None = None,
    teacher: MultiTaskNet | None = None,
    unlabelled: Unlabelled | None = None,
) -> TrainResult:
    """Train ``model`` (in place) on samples or a DataLoader of Batch; returns a :class:`TrainResult`.

    start:          a loaded checkpoint: model, optimizer and scheduler states and the epoch count are
                    restored and training continues at ``start.epoch + 1`` up to ``config.epochs``.
    sample_weights: sample id -> {modality: weight} (MTAL-WACV s_k(x)·w_k), passed as ``weights`` to
                    ``model.losses``; 0 removes a sample's influence on that modality.
    extra_loss:     callable(out, batch) -> scalar added to each step's loss; when it is an
                    ``nn.Module`` its parameters are optimised too (after the network's, and the MTPSL
                    mapper's when on). Resume with the same set of modules.
    until_epoch:    stop after this epoch (default ``config.epochs``); the LR schedule still spans
                    ``config.epochs``, so a run cut in two and resumed equals one uninterrupted run.
    teacher:        with ``config.pseudo_label_weight`` > 0, the network whose guesses (its labels given)
                    train the missing modalities of partially labelled samples; default: the network
                    being trained, ramped in (:mod:`mtal_models.training.pseudo`). Moved to the device,
                    never trained.
    unlabelled:     images without labels (Samples, whose labels are ignored, or a DataLoader of Batch) for
                    the semi-supervised term (:mod:`mtal_models.training.semi`; ``config.semi_weight`` 0 or
                    an empty pool = off). On resume, the EMA teacher comes from ``start.extra["ema_state"]``
                    (else from the restored network).
    With a step budget (``config.min_steps`` / ``steps_per_label``) the run's length comes from the number
    of labelled samples (:mod:`mtal_models.training.budget`) instead of ``config.epochs``.
    Each epoch re-seeds torch and the shuffling generator with ``config.seed + epoch``, so on CPU a
    resumed run reproduces the uninterrupted one exactly.
    """
    device = resolve_device(config.device)
    generator = seed_everything(config.seed)
    model.to(device)
    loader = _as_loader(train, model, config, True, generator)
    if budget_on(config):
        config = replace(config, epochs=plan_epochs(config, len(loader.dataset), len(loader)))  # type: ignore[arg-type]
    val_loader = None if val is None else _as_loader(val, model, replace(config, num_workers=0), False, generator)
    mtpsl = None
    if config.mtpsl_weight > 0 and sum(s.dense for s in model.modalities.values()) < 2:
        warnings.warn("mtpsl_weight > 0 but fewer than 2 dense modalities: MTPSL has no pairs, off", stacklevel=2)
    elif config.mtpsl_weight > 0:
        mtpsl = MTPSLMapper(model.modalities, _probe_feature_dim(model, loader)).to(device)
        if start is not None and "mtpsl_state" in start.extra:
            mtpsl.load_state_dict(start.extra["mtpsl_state"])
    aux = [m for m in (mtpsl, extra_loss) if isinstance(m, nn.Module)]
    for m in aux:
        m.to(device)
    if teacher is not None:
        teacher.to(device)
    optimizer = make_optimizer(config, [model, *aux])
    scheduler = make_scheduler(config, optimizer, len(loader))
    first = 1
    if start is not None:
        model.load_state_dict(start.model_state)
        if start.optimizer_state is not None:
            if len(start.optimizer_state["param_groups"]) != len(optimizer.param_groups):
                raise ValueError(
                    f"checkpoint optimizer has {len(start.optimizer_state['param_groups'])} parameter groups, "
                    f"this run {len(optimizer.param_groups)}: resume with the same mtpsl/extra_loss setup"
                )
            optimizer.load_state_dict(start.optimizer_state)
        if start.scheduler_state is not None:
            scheduler.load_state_dict(start.scheduler_state)
            scheduler.total_iters = config.epochs * len(loader)
        first = start.epoch + 1
    semi = _semi_branch(model, unlabelled, config, start)
    last = config.epochs if until_epoch is None else min(until_epoch, config.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=config.use_amp(device))
    weights_fn = None
    if sample_weights is not None:
        names = list(model.modalities)
        weights_fn = lambda b: weights_for(b.ids, names, sample_weights, device)  # noqa: E731
    result = TrainResult([], [], 0, first - 1, optimizer, scheduler, mtpsl, epochs=config.epochs,
                         teacher=None if semi is None else semi.teacher,
                         unlabelled=0 if semi is None else len(semi.loader.dataset))  # type: ignore[arg-type]
    augment = torch.Generator()

    def record(epoch: int, step: int, loss: float) -> None:
        result.step_losses.append(loss)
        if progress is not None:
            progress(epoch, step, loss)

    for epoch in range(first, last + 1):
        torch.manual_seed(config.seed + epoch)
        generator.manual_seed(config.seed + epoch)
        augment.manual_seed(config.seed + epoch + 65537)
        if semi is not None:
            semi.start_epoch(epoch)
        health = BoxHealth(model.modalities)
        mean = train_one_epoch(
            model, loader, optimizer, scheduler, config, scaler, epoch,
            weights_fn=weights_fn, progress=record, extra_loss=extra_loss, mtpsl=mtpsl, generator=generator,
            teacher=teacher, health=health, semi=semi, augment=augment,
        )  # fmt: skip
        result.history.append(mean)
        result.box_health = health.report()
        if val_loader is not None:
            result.val.append(evaluate(model, val_loader))
        result.epochs_run += 1
        result.epoch = epoch
    for name in [n for n, r in result.box_health.items() if r["collapsed"]]:
        r = result.box_health[name]
        warnings.warn(
            f"box regression of {name!r} collapsed: {r['degenerate']} of {r['predicted']} boxes predicted in the "
            f"last epoch are under 1 px wide or high (lower the learning rate?)", stacklevel=2,
        )
    return result
