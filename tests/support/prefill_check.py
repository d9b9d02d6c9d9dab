"""The edit cost of the prefill Label Studio holds for a project of known scenes.

Reads the predictions of one model version back from Label Studio, as the editor gets them, turns
them and the scenes' exact annotations into labels with the backend's own conversion
(:func:`backend.labelstudio.convert.annotation_to_labels`), and measures what an annotator would fix with
:mod:`mtal_models.edit_cost`'s definitions: the share of pixels to repaint, boxes to delete and draw,
duplicates per object. Used by the demo (before / after training) and the end-to-end suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import requests
import torch

from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.label_config import parse_label_config
from mtal_models.edit_cost import BoxCounts, count_box_edits
from tests.support.photo_project import PhotoProject
from tests.support.scene_project import CHOICES_TAG, SceneProject

__all__ = ["prefill_edit_cost", "version_predictions"]


def version_predictions(url: str, headers: dict[str, str], project: int, version: str) -> dict[int, dict]:
    """{task id: prediction} of ``version`` in ``project`` (``GET /api/predictions/?project=``)."""
    r = requests.get(f"{url}/api/predictions/", params={"project": project}, headers=headers, timeout=120)
    r.raise_for_status()
    return {int(p["task"]): p for p in r.json() if p.get("model_version") == version}


def prefill_edit_cost(url: str, headers: dict[str, str], project: SceneProject | PhotoProject, version: str,
                      indices: Sequence[int], modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Edit cost of ``version``'s predictions on the tasks ``indices`` of ``project`` (every region of
    the prefill counts, ticked in the choices tag or not), over ``modalities`` (default: all the
    project's): ``mask_edit_share`` (pooled over the labelled pixels: the project's ``ignored`` pixels
    are left out), box precision / recall / duplicates per object / boxes to delete and draw per image,
    ``tasks`` measured (tasks without a prediction of ``version`` are skipped)."""
    schema = parse_label_config(project.label_config)
    modalities = list(project.modalities if modalities is None else modalities)
    preds = version_predictions(url, headers, project.id, version)
    wrong = pixels = 0
    boxes = BoxCounts()
    measured = 0
    for i in indices:
        pred = preds.get(project.task_ids[i])
        if pred is None:
            continue
        measured += 1
        sample = project.samples[i]
        h, w = sample.image.shape[:2]
        regions = [r for r in pred["result"] if r.get("from_name") != CHOICES_TAG]
        shown, _ = annotation_to_labels(regions, schema, h, w)
        truth, _ = annotation_to_labels(project.annotation_result(sample, modalities), schema, h, w)
        for m in (m for m in modalities if schema.modalities[m].kind == "segmentation"):
            have = np.asarray(shown[m])
            if (have == schema.modalities[m].ignore_index).all():  # no region at all: all background
                have = np.zeros((h, w), np.int64)
            ignored = project.ignored(sample, m)
            keep = np.ones((h, w), bool) if ignored is None else ~ignored
            wrong += int(((have != np.asarray(truth[m])) & keep).sum())
            pixels += int(keep.sum())
        for m in (m for m in modalities if schema.modalities[m].kind == "detection"):
            scores = [float(r.get("score", 1.0)) for r in regions if r.get("from_name") == m]
            got, want = shown[m], truth[m]
            if len(scores) != len(got["labels"]):
                scores = [1.0] * len(got["labels"])
            boxes += count_box_edits(torch.as_tensor(got["boxes"]), torch.tensor(scores),
                                     torch.as_tensor(got["labels"]), torch.as_tensor(want["boxes"]),
                                     torch.as_tensor(want["labels"]))
    return {"tasks": measured, "mask_edit_share": wrong / pixels if pixels else float("nan"), **boxes.summary()}
