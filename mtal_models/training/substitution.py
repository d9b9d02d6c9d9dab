"""PartAL GT substitution for a training batch: which labels go to ``forward`` as ``given`` and leave the loss.

See docs/training.md ("GT substitution"). Used by :func:`mtal_models.training.loop.train_one_epoch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtal_models.data.sample import Batch
from mtal_models.nets.base import Labels, MultiTaskNet

__all__ = ["substitutable", "substitute_labels", "without_conditioned"]


def substitutable(model: MultiTaskNet) -> list[str]:
    """Modalities whose ground truth the network takes as ``given`` (``model.substitutable``: PAD-Net's
    label encoders). Networks without any ignore substitution."""
    return [n for n in model.modalities if n in model.substitutable and model.modalities[n].dense]


def substitute_labels(
    labels: Labels, names: Sequence[str], prob: float, generator: torch.Generator | None = None
) -> tuple[Labels | None, Labels]:
    """PartAL GT substitution for one batch.

    Per sample and modality in ``names``, a present label is chosen with probability ``prob``. Chosen
    labels go to ``forward`` as ``given`` and are removed from the loss labels (their final prediction
    could otherwise be learnt by copying the input). A sample keeps at least one present modality in the
    loss: if every present label of a sample was chosen, one of them (at random) is put back.
    Returns (given or None, labels for the loss).
    """
    if prob <= 0 or not names:
        return None, labels
    some = next(iter(labels.present.values()), None)
    if some is None:
        return None, labels
    b = some.shape[0]
    present = {n: labels.is_present(n, b).cpu() for n in labels.values}
    chosen = {n: present[n] & (torch.rand(b, generator=generator) < prob) for n in names if n in present}
    if not chosen:
        return None, labels
    kept = sum((present[n] & ~chosen.get(n, torch.zeros(b, dtype=torch.bool))).int() for n in present)
    for i in (kept == 0).nonzero(as_tuple=True)[0].tolist():
        options = [n for n in chosen if chosen[n][i]]
        if options:
            pick = options[int(torch.randint(len(options), (1,), generator=generator))]
            chosen[pick][i] = False
    chosen = {n: m for n, m in chosen.items() if m.any()}
    if not chosen:
        return None, labels
    device = some.device
    given = Labels({n: labels.values[n] for n in chosen}, {n: m.to(device) for n, m in chosen.items()})
    loss_present = {n: (p & ~chosen[n].to(p.device)) if n in chosen else p for n, p in labels.present.items()}
    return given, Labels(dict(labels.values), loss_present)


def without_conditioned(batch: Batch, given: Labels) -> Batch:
    """``batch`` with every label of the samples that had some label ``given`` marked absent.

    What an ``extra_loss`` sees: its targets must come from unconditioned forwards. A sample with a
    substituted label ran every head through that label's encoding (a path the task losses do not fit for
    the substituted modality, and a conditioned one for the others), so LL4AL's "true loss" of such a
    sample is not the loss the network would have on it at selection time."""
    b = batch.images.shape[0]
    conditioned = torch.zeros(b, dtype=torch.bool, device=batch.images.device)
    for name in given.values:
        conditioned |= given.is_present(name, b).to(conditioned.device)
    present = {n: p & ~conditioned.to(p.device) for n, p in batch.labels.present.items()}
    return Batch(batch.images, Labels(dict(batch.labels.values), present), batch.ids)
