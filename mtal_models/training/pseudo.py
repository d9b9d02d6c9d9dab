"""PartAL pseudo-labels: the missing modalities of a partially labelled image, predicted with its labels given.

PartAL (§1, §3.1) uses the labels an image has to guess the ones it lacks: PAD-Net's label encoders take
the given ground truth, so the prediction of a missing modality is conditioned on it (depth given, normals
follow). ``fit`` adds these guesses as extra, down-weighted targets (``TrainConfig.pseudo_label_weight``);
the network's other paths (initial predictions, and final ones without the labels given) learn from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtal_models.nets.base import Labels, MultiTaskNet

__all__ = ["pseudo_labels", "ramp"]


@torch.no_grad()
def pseudo_labels(
    model: MultiTaskNet, images: Tensor, labels: Labels, names: Sequence[str], confidence: float = 0.0
) -> Labels | None:
    """Targets for the dense modalities a sample lacks, when it has at least one label among ``names``.

    images: [B, 3, H, W]; labels: the batch's (partial) labels; names: the modalities the network takes as
    ``given`` (:func:`mtal_models.training.loop.substitutable`). For the samples with at least one present
    label in ``names`` and at least one missing dense modality, the network runs in eval mode with all of
    their present ``names`` labels given, and each missing modality's final prediction becomes its target
    (:meth:`ModalitySpec.pseudo_target`; categorical pixels less likely than ``confidence`` are left
    unlabelled). Returns Labels over the whole batch whose present flags [B] mark
    exactly the pseudo-labelled (sample, modality) pairs, or None when there are none. Fully labelled and
    unlabelled samples get none.
    """
    b = images.shape[0]
    dense = [n for n, s in model.modalities.items() if s.dense]
    present = {n: labels.is_present(n, b).to(images.device) for n in dense}
    anchors = [present[n] for n in names if n in present]
    if not anchors:
        return None
    anchored = torch.stack(anchors).any(dim=0)
    missing = {n: anchored & ~present[n] for n in dense}
    idx = torch.stack(list(missing.values())).any(dim=0).nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return None
    given_names = [n for n in names if n in labels.values and present[n][idx].any()]
    given = Labels(
        {n: labels.values[n][idx.to(labels.values[n].device)] for n in given_names},
        {n: present[n][idx] for n in given_names},
    )
    was_training = model.training
    model.eval()
    try:
        out = model(images[idx], given=given)
    finally:
        model.train(was_training)
    values: dict[str, Tensor] = {}
    flags: dict[str, Tensor] = {}
    for n, m in missing.items():
        if not m.any():
            continue
        guess = model.modalities[n].pseudo_target(out.final[n], confidence)
        target = guess.new_zeros((b, *guess.shape[1:]))
        target[idx] = guess
        values[n], flags[n] = target, m
    return Labels(values, flags)


def ramp(epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Share of the training done after ``step`` (from 1) of ``epoch`` (from 1): (0, 1], linear in steps.

    Pseudo-labels weigh ``pseudo_label_weight · ramp``: the early network guesses badly, so its guesses
    start near 0 weight and reach full weight at the last step.
    """
    return min(1.0, ((epoch - 1) * steps_per_epoch + step) / max(1, epochs * steps_per_epoch))

