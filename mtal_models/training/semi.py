"""Semi-supervised training on the unlabelled pool: a Mean Teacher with FixMatch-style strong views.

Each training step also draws a batch of unlabelled images. The **teacher**, an exponential moving
average of the network's weights (Mean Teacher, Tarvainen & Valpola 2017; as in CutMix-Seg, French et
al. 2020), predicts on the weak view (the images as loaded), in eval mode and without gradients. The
**student** (the network being trained) sees a strong view of the same images (mirror, CutMix between
the unlabelled images, colour jitter, greyscale, blur: :mod:`mtal_models.data.augment`), with the
teacher's targets moved by the same geometric transforms, and learns:

- categorical maps (segmentation, binary): the teacher's class where its probability is at least
  ``semi_threshold`` (FixMatch, Sohn et al. 2020), other pixels ignored; a sample's loss is weighted by
  its share of confident pixels, i.e. the cross-entropy is summed over confident pixels and divided by
  all pixels, as FixMatch does, so an unsure teacher asks for little;
- regression maps (depth, normals): consistency with the teacher's map, through the modality's own loss
  (L1 on depth, 1 - cos on normals);
- detection: nothing (see docs/training.md: pseudo-boxes from a teacher trained on a few images are
  mostly wrong, and a detection network's dense modalities already train its shared trunk here).

All of it goes through the network's own ``losses`` with :meth:`ModalitySpec.pseudo_target` (the
targets PartAL's pseudo-labels use, :mod:`mtal_models.training.pseudo`), at weight
``semi_weight · rampup(share of training done)``. The teacher follows the student after every optimiser
step with decay ``min(ema_decay, (1 + t) / (10 + t))`` at update t (Mean Teacher's warm-up: early on the
teacher tracks the still-random student closely).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mtal_models.data.augment import cutmix, hflip_maps, photometric
from mtal_models.data.sample import Batch, Sample, collate
from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels, MultiTaskNet
from mtal_models.training.config import TrainConfig
from mtal_models.training.data import SampleDataset

__all__ = [
    "EMATeacher", "SemiBranch", "class_balanced_keep", "frozen_bn_stats",
    "rampup", "teacher_targets", "unlabelled_loader",
]

Unlabelled = Sequence[Sample] | Dataset | DataLoader
"""The pool ``fit`` draws unlabelled batches from (see :func:`unlabelled_loader`)."""


def rampup(share: float, length: float) -> float:
    """Weight multiplier in (0, 1] after ``share`` of the training: exp(-5 (1 - share/length)^2) until
    ``share`` reaches ``length``, then 1 (the sigmoid-shaped ramp-up of Laine & Aila 2017 and Mean
    Teacher). ``length`` 0 = full weight from the first step."""
    if length <= 0 or share >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - max(share, 0.0) / length) ** 2)


class EMATeacher:
    """A frozen copy of a network whose state follows the student's: t <- d·t + (1 - d)·s for every
    floating-point parameter and buffer (BatchNorm statistics too), a plain copy for the others (counters,
    flags). ``model`` stays in eval mode with gradients off."""

    def __init__(self, student: MultiTaskNet, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMATeacher: decay must be in [0, 1), got {decay}")
        self.model = copy.deepcopy(student)
        self.model.eval()
        self.model.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses: ``min(decay, (1 + t) / (10 + t))`` with t updates done."""
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, student: MultiTaskNet) -> None:
        d = self.current_decay()
        source = student.state_dict()
        for name, t in self.model.state_dict().items():
            s = source[name].detach()
            if t.is_floating_point():
                t.mul_(d).add_(s.to(t.dtype), alpha=1.0 - d)
            else:
                t.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and ints (what a checkpoint's ``extra`` may hold)."""
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def class_balanced_keep(confidence: Tensor, classes: Tensor, threshold: float, share: float) -> Tensor:
    """Which pixels keep their pseudo-label: bool, the shape of ``confidence`` (the teacher's probability of
    its class, any shape) and ``classes`` (its class ids, same shape).

    A pixel is kept when its confidence reaches its class's threshold min(``threshold``, q_c), q_c being the
    (1 - ``share``) quantile of the confidences of the pixels the teacher gives class c in this batch: every
    class the teacher predicts keeps at least its ``share`` most confident pixels (class-balanced
    self-training, Zou et al. ECCV 2018), where one global threshold keeps only the frequent classes, the
    ones a teacher trained on a few images is sure of. ``share`` 0 = the global threshold alone."""
    keep = confidence >= threshold
    if share <= 0:
        return keep
    for c in classes.unique().tolist():
        members = classes == c
        values = confidence[members].float()
        if values.numel() > 16_000_000:  # torch.quantile's limit: a strided subsample decides
            values = values[:: values.numel() // 16_000_000 + 1]
        cut = torch.quantile(values, 1.0 - share)
        keep |= members & (confidence >= torch.clamp(cut, max=threshold))
    return keep


@torch.no_grad()
def teacher_targets(
    teacher: MultiTaskNet, images: Tensor, threshold: float, class_share: float = 0.0
) -> dict[str, Tensor]:
    """Targets of the dense modalities from ``teacher`` on images [B, 3, H, W] (eval mode, no grad):
    categorical pixels below their threshold get ``ignore_index`` (``threshold``, lowered per class to keep
    each predicted class's ``class_share`` most confident pixels: :func:`class_balanced_keep`); regression
    maps are taken whole."""
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher(images)
    finally:
        teacher.train(was_training)
    targets = {}
    for n, s in teacher.modalities.items():
        if not s.dense:
            continue
        pred = out.final[n].float()
        target = s.pseudo_target(pred, 0.0)
        if s.categorical:
            prob = s.activate(pred)
            confidence = prob.max(dim=1).values if s.kind == "segmentation" else torch.maximum(prob, 1 - prob)
            keep = class_balanced_keep(confidence, target, threshold, class_share)
            target = target.masked_fill(~keep, s.ignore_index)
        targets[n] = target
    return targets


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with the batch's statistics as usual but leaves its running statistics as they
    were (momentum 0 for the duration; the batch counter put back): the strong views (jitter, greyscale,
    blur) must not become the statistics the network predicts with, which they would, the unlabelled
    forward coming last in a step. USB/TorchSSL's ``Bn_Controller`` does the same for FixMatch when the
    labelled and unlabelled batches are not concatenated."""
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        for m, _, _ in saved:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def unlabelled_loader(
    unlabelled: Unlabelled,
    modalities: Mapping[str, ModalitySpec],
    batch_size: int,
    num_workers: int,
    generator: torch.Generator,
) -> DataLoader:
    """A shuffling DataLoader of Batches over ``unlabelled``: a list of Samples, or any map-style Dataset
    of Samples, read lazily (e.g. :class:`mtal_models.data.unlabelled.ImageFiles`). A DataLoader is
    returned as it is. Only the ``present`` flags of the Batches are used (see :class:`SemiBranch`). A pool
    whose size leaves a last batch of one image drops that batch (BatchNorm cannot train on one image)."""
    if isinstance(unlabelled, DataLoader):
        return unlabelled
    dataset = SampleDataset(unlabelled) if isinstance(unlabelled, list | tuple) else unlabelled
    # A last batch of one image would make BatchNorm raise in training mode ("Expected more than 1 value per
    # channel") at the network's 1x1 bottleneck: drop it (the next pass reshuffles, so no image is left out).
    drop_last = len(dataset) % batch_size == 1 and len(dataset) > 1  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,  # type: ignore[arg-type]
                      collate_fn=partial(collate, modalities=dict(modalities)), generator=generator,
                      drop_last=drop_last)


class SemiBranch:
    """The unlabelled half of a training step, owned by ``fit``: the pool's loader, the EMA teacher and
    the strong views. A pool image learns every dense modality it has no label of (``present`` False):
    image-only samples learn them all, and a partly labelled image may sit in both ``train`` and the pool.
    Per epoch, :meth:`start_epoch` re-seeds the pool's shuffling and the augmentations
    (so a resumed run draws what the uninterrupted one drew); per step, :meth:`loss` gives the weighted
    term to add, and :meth:`after_step` moves the teacher."""

    def __init__(self, student: MultiTaskNet, unlabelled: Unlabelled, config: TrainConfig) -> None:
        self.config = config
        self.shuffle = torch.Generator()
        self.augment = torch.Generator()
        self.loader = unlabelled_loader(unlabelled, student.modalities, config.semi_batch_size or config.batch_size,
                                        config.num_workers, self.shuffle)
        self.teacher = EMATeacher(student, config.ema_decay)
        self.dense = [n for n, s in student.modalities.items() if s.dense]
        self._batches: Iterator[Batch] | None = None
        self.last: dict[str, Any] = {}
        """The last step's views, for inspection (scripts/semi_inspect.py): weak images [B, 3, H, W] (what
        the teacher saw), strong images (what the student learnt on), teacher targets (moved with the
        strong view), the same targets before the geometric moves (aligned with the weak images), batch ids."""

    def start_epoch(self, epoch: int) -> None:
        self.shuffle.manual_seed(self.config.seed + epoch + 7919)
        self.augment.manual_seed(self.config.seed + epoch + 104729)
        self._batches = iter(self.loader)

    def _next_batch(self) -> Batch:
        if self._batches is None:
            raise RuntimeError("SemiBranch.start_epoch was not called")
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def loss(self, student: MultiTaskNet, share: float) -> Tensor:
        """semi_weight · rampup(share) · Σ_t w_t L_t(student(strong view), teacher targets): a scalar.
        ``share``: the part of the training done, in (0, 1]. Call inside the step's autocast."""
        device = next(student.parameters()).device
        batch = self._next_batch()
        images = batch.images.to(device)
        targets = teacher_targets(self.teacher.model, images, self.config.semi_threshold, self.config.semi_class_share)
        weak_targets = targets
        images, targets = hflip_maps(images, targets, student.modalities, self.augment)
        if self.config.semi_cutmix > 0:
            images, targets = cutmix(images, targets, self.augment, self.config.semi_cutmix)
        images = photometric(images, self.augment)
        b = images.shape[0]
        self.last = {"weak": batch.images, "weak_targets": weak_targets, "strong": images.detach(),
                     "targets": targets, "ids": batch.ids}
        weights = {}
        for n in self.dense:
            spec = student.modalities[n]
            if spec.categorical:
                weights[n] = (targets[n] != spec.ignore_index).flatten(1).float().mean(dim=1)
        present = {n: ~batch.labels.is_present(n, b).to(device) for n in targets}
        with frozen_bn_stats(student):
            out = student(images)
        losses = student.losses(out, Labels(targets, present), weights)
        term = sum(student.modalities[n].weight * losses[n] for n in self.dense)
        return self.config.semi_weight * rampup(share, self.config.semi_ramp) * term  # type: ignore[return-value]

    def after_step(self, student: MultiTaskNet) -> None:
        self.teacher.update(student)
