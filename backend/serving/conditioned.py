"""A region of one modality drawn with a smart-capable tag -> the other modalities re-predicted
conditioned on it (PartAL's ground-truth substitution in PAD-Net, issue #31).

When an interactive context holds no smart tool's region but regions of modality tags (a ``BrushLabels
smart="true"`` whose labels no other tag has stays a modality, and Label Studio sends what is drawn with
it), those regions are the drawn modality's labels as far as the annotator has got: they are mapped to
the network input through the photo's :class:`~mtal_models.data.geometry.Fit` (as /predict maps an
annotation), passed to the heads as ``given`` on the cached trunk output, and the *other* annotatable
modalities come back as the prefill shows them (:class:`backend.serving.prefill.Prefill`), marked
``interactive.conditioned_on``. Only modalities whose label encoders are trained condition anything
(:attr:`MultiTaskNet.conditionable`; the det+seg network conditions on nothing); otherwise the answer is
empty with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.interactive import fresh_ids
from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import _resize_label
from backend.serving.prefill import Prefill
from mtal_models.nets.base import Labels

__all__ = ["conditioned_answer", "given_labels"]


def given_labels(regions: Sequence[Mapping[str, Any]], schema: ProjectSchema, fit: Any,
                 modalities: Sequence[str]) -> Labels:
    """The drawn regions of ``modalities`` -> ``given`` for one image at the network input (segmentation
    [1, H', W'] int64, padding unlabelled; boxes [{"boxes", "labels"}] in input pixels)."""
    got, _ = annotation_to_labels(list(regions), schema, fit.height, fit.width)
    values: dict[str, Any] = {}
    for m in modalities:
        label = _resize_label(schema.modalities[m], got[m], fit)
        if isinstance(label, dict):
            values[m] = [{"boxes": torch.from_numpy(label["boxes"]), "labels": torch.from_numpy(label["labels"])}]
        else:
            values[m] = torch.from_numpy(np.asarray(label, np.int64 if label.dtype.kind in "iu" else np.float32))[None]
    return Labels(values, {m: torch.ones(1, dtype=torch.bool) for m in modalities})


def conditioned_answer(regions: Sequence[Mapping[str, Any]], schema: ProjectSchema, net: Any, fit: Any,
                       heads: Any, prefill: Prefill, version: str) -> dict[str, Any]:
    """One prediction: the modalities not drawn in ``regions``, re-predicted conditioned on the drawn ones.
    ``heads(given) -> {modality: array}`` runs the network's heads on the photo's cached trunk output."""
    _, drawn = annotation_to_labels(list(regions), schema, fit.height, fit.width)
    drawn_names = [m for m, flag in drawn.items() if flag]
    usable = [m for m in drawn_names if m in tuple(getattr(net, "conditionable", ()))]
    if not usable:
        reason = (f"nothing re-predicted: the label encoders of {drawn_names} are not trained (a training with "
                  "ground-truth substitution trains them)" if drawn_names else "no region in the context")
        return {"result": [], "score": None, "model_version": version, "interactive": {"reason": reason}}
    preds = heads(given_labels(regions, schema, fit, usable))
    others = {m: p for m, p in preds.items() if m in schema.annotatable and m not in drawn_names}
    result = fresh_ids(prefill.results(others, schema, fit.height, fit.width, fit=fit))
    return {"result": result, "score": None, "model_version": version,
            "interactive": {"conditioned_on": usable, "modalities": sorted(others)}}
