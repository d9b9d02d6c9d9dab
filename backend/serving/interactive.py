"""Interactive pre-annotation (issue #31): a /predict with ``params.context`` answers a smart tool's
click from the same network as the prefill, for the drawn label only.

- a smart rectangle -> the object inside it, in each segmentation modality with a label of that name
  (:func:`mtal_models.interactive.box_region`), and in a detection modality with that label the box
  refined (:func:`mtal_models.interactive.refine_box`: the detector's matching box, else the mask's);
- smart keypoints -> the connected region of the class through the positive points, negatives excluded
  (:func:`mtal_models.interactive.points_region`);
- no smart tool's region but regions of modality tags (a smart-capable modality tag) -> the other
  modalities re-predicted conditioned on them (:mod:`backend.serving.conditioned`).

Speed: the network's trunk (:meth:`MultiTaskNet.trunk`) runs once per (model version, image URL, input
geometry) and its output stays in a :class:`~mtal_models.interactive.FeatureCache` (LRU, at most
:data:`CACHE_BYTES` bytes and :data:`CACHE_ENTRIES` images); later clicks on the photo fetch nothing and
run only the heads (:meth:`MultiTaskNet.heads`), on the process's one inference thread. Smart-tool clicks
run the heads unconditioned (no GT substitution from the task's saved annotation): the click is about the
modality being drawn, whose annotation is in progress.

Answers: ``[{"result": [...], "score", "model_version", "interactive": {"prompts": [...], "cached"}}]``;
``interactive.prompts`` says, per prompt, the label, the modalities answered and how (``"box"``,
``"points"``; a refined box ``"detector"``, ``"mask"`` or ``"drawn"``), or why nothing came back. A
context that does not parse, a request of several tasks or a task of another project is a
:class:`~backend.labelstudio.interactive.ContextError` (the web layer answers 400); an image that cannot
be fetched is an empty result with the reason (no score), like the prefill's per-task failures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from backend.labelstudio.interactive import (
    ContextError,
    Prompt,
    box_results,
    drawn_regions,
    mask_results,
    parse_context,
    targets,
)
from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import prepare_task
from backend.serving.conditioned import conditioned_answer
from backend.serving.model import MTALModel
from backend.serving.predict import INFERENCE
from backend.serving.prefill import Prefill
from backend.serving.store import LoadedModel
from mtal_models.data.geometry import Fit
from mtal_models.interactive import FeatureCache, box_region, class_evidence, points_region, refine_box
from mtal_models.nets.base import Labels

__all__ = ["CACHE_BYTES", "CACHE_ENTRIES", "Interactive"]

log = logging.getLogger(__name__)
CACHE_BYTES = 256 * 2**20
CACHE_ENTRIES = 64


@dataclass(frozen=True)
class Features:
    """One image's cached trunk output, its geometry and the padded input size (H, W)."""

    trunk: Any
    fit: Fit
    size: tuple[int, int]
    trunk_device: str = "cpu"


class Interactive:
    """Answers smart-tool clicks (module docstring); one per app, holding the feature cache."""

    def __init__(self, cache: FeatureCache | None = None) -> None:
        self.cache = cache if cache is not None else FeatureCache(CACHE_BYTES, CACHE_ENTRIES)

    def answer(self, model: MTALModel, tasks: Sequence[Mapping[str, Any]], context: Any,
               project_id: str) -> list[dict[str, Any]]:
        """One prediction for the one task of an interactive /predict. Raises ContextError."""
        if len(tasks) != 1:
            raise ContextError(f"an interactive /predict carries one task (Label Studio sends the one being "
                               f"annotated), got {len(tasks)}")
        task = tasks[0]
        owner = task.get("project")
        if owner is not None and str(owner) != project_id:
            raise ContextError(f"task {task.get('id')} belongs to project {str(owner)[:40]}, not to project "
                               f"{project_id} of this request")
        schema = model.schema
        prompts = parse_context(context, schema)
        loaded = model.network(schema)
        drawn = [] if prompts else drawn_regions(context, schema)
        if not prompts and not drawn:
            tools = sorted(schema.smart_tools)
            return [_empty(loaded.version, f"no region of a smart tool in the context (smart tools: {tools})")]
        try:
            feats, cached = self.features(model, loaded, task, schema)
        except Exception as e:
            log.error("interactive: task %s: image not available: %s", task.get("id"), e)
            return [{"result": [], "model_version": loaded.version, "interactive": {"error": str(e)[:300]}}]
        if drawn:  # the annotator's own regions: the other modalities conditioned on them
            out = conditioned_answer(
                drawn, schema, loaded.model, feats.fit,
                lambda given: INFERENCE.submit(_heads, loaded.model, feats, given).result(),
                Prefill.for_version(model.settings, loaded.metadata), loaded.version)
            out["interactive"]["cached"] = cached
            return [out]
        preds = INFERENCE.submit(_heads, loaded.model, feats).result()
        min_area = model.settings.prefill_min_area
        results: list[dict[str, Any]] = []
        notes = []
        for prompt in prompts:
            got, note = answer_prompt(prompt, preds, feats.fit, schema, min_area)
            results.extend(got)
            notes.append(note)
        scores = [float(r["score"]) for r in results if isinstance(r.get("score"), float | int)]
        return [{"result": results, "score": round(float(np.mean(scores)), 6) if scores else None,
                 "model_version": loaded.version, "interactive": {"prompts": notes, "cached": cached}}]

    def features(self, model: MTALModel, loaded: LoadedModel, task: Mapping[str, Any],
                 schema: ProjectSchema) -> tuple[Features, bool]:
        """(the task image's trunk output, whether it came from the cache); fetched, decoded and run
        through the trunk on a miss."""
        data = task.get("data")
        url = data.get(schema.image_key) if isinstance(data, Mapping) else None
        size, cap = model.settings.image_size, model.settings.image_max_size
        key = (loaded.version, str(url), size, cap)

        def compute() -> Features:
            if model.fetcher is None:
                raise RuntimeError("interactive pre-annotation needs an image fetcher")
            prepared = prepare_task(task, schema, model.fetcher, size, cap)
            image = torch.from_numpy(np.ascontiguousarray(prepared.sample.image.transpose(2, 0, 1)))[None]
            assert prepared.fit is not None
            trunk = INFERENCE.submit(_trunk, loaded.model, image, model.store.device).result()
            return Features(trunk, prepared.fit, (int(image.shape[-2]), int(image.shape[-1])), str(model.store.device))

        return self.cache.get_or_put(key, compute)


def _trunk(net: Any, image: torch.Tensor, device: str) -> Any:
    """uint8 [1, 3, H, W] -> the network's trunk output (on the inference thread)."""
    with torch.inference_mode():
        return net.trunk(image.to(device).float().div_(255.0))


def _heads(net: Any, feats: Features, given: Labels | None = None) -> dict[str, np.ndarray]:
    """The heads on cached trunk output (conditioned on ``given``) -> one image's outputs on the CPU as
    float32 arrays (dense [C, H, W] at the padded input size, detection rows [K, 6 + C] in input pixels)."""
    with torch.inference_mode():
        out = net.heads(feats.trunk, feats.size, None if given is None else given.to(feats.trunk_device))
        return {k: v[0].float().cpu().numpy() for k, v in out.items()}


def _empty(version: str, reason: str) -> dict[str, Any]:
    return {"result": [], "score": None, "model_version": version, "interactive": {"prompts": [],
                                                                                  "reason": reason}}


def answer_prompt(prompt: Prompt, preds: Mapping[str, np.ndarray], fit: Fit, schema: ProjectSchema,
                  min_area: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(LS results, a note on what was done) for one prompt on one image's outputs ``preds``."""
    tool = schema.smart_tools[prompt.tool]
    h, w = fit.height, fit.width
    label = _pick_label(prompt, preds, fit, schema, tool.modalities)
    note: dict[str, Any] = {"tool": prompt.tool, "kind": prompt.kind, "label": label, "modalities": {}}
    found = targets(schema, tool.modalities, label)
    seg = [(m, c) for m, c in found if schema.modalities[m].kind == "segmentation" and m in preds]
    det = [(m, c) for m, c in found if schema.modalities[m].kind == "detection" and m in preds]
    out: list[dict[str, Any]] = []
    mask = None
    for m, c in seg:
        prob = class_evidence(preds[m], c, fit)
        if prompt.kind == "box":
            mask = box_region(prob, prompt.box_pixels(h, w), min_area=min_area)
        else:
            margin = class_evidence(preds[m], c, fit, margin=True)
            mask = points_region(margin, prompt.point_pixels(h, w, True), prompt.point_pixels(h, w, False),
                                 min_area=min_area)
        if mask.any():
            out.extend(mask_results(schema, m, c, mask, prob))
            note["modalities"][m] = prompt.kind
        else:
            where = "inside the box" if prompt.kind == "box" else "at the positive points"
            note["modalities"][m] = f"nothing: no {label!r} found {where}"
    if prompt.kind == "box":
        for m, c in det:
            rows = np.asarray(preds[m], np.float64)
            rows = rows[rows[:, 5] >= 0]
            if len(rows):
                rows[:, :4] = fit.boxes_to_original(rows[:, :4])
            box, how = refine_box(prompt.box_pixels(h, w), rows, c, mask)
            score = float(rows[rows[:, 5] == c, 4].max()) if how == "detector" else 1.0
            out.extend(box_results(schema, m, c, box, score, h, w))
            note["modalities"][m] = how
    return out, note


def _pick_label(prompt: Prompt, preds: Mapping[str, np.ndarray], fit: Fit, schema: ProjectSchema,
                modalities: Sequence[str]) -> str:
    """The prompt's label; for a box without one, the candidate with the most probability inside it."""
    if len(prompt.labels) == 1 or prompt.kind != "box":
        return prompt.labels[0]
    x0, y0, x1, y1 = prompt.box_pixels(fit.height, fit.width)
    best, best_mass = prompt.labels[0], -1.0
    for label in prompt.labels:
        for m, c in targets(schema, modalities, label):
            if schema.modalities[m].kind != "segmentation" or m not in preds:
                continue
            r0, r1 = int(y0 * fit.scale_y), max(int(y0 * fit.scale_y) + 1, int(np.ceil(y1 * fit.scale_y)))
            c0, c1 = int(x0 * fit.scale_x), max(int(x0 * fit.scale_x) + 1, int(np.ceil(x1 * fit.scale_x)))
            mass = float(preds[m][c, r0:r1, c0:c1].sum())
            if mass > best_mass:
                best, best_mass = label, mass
    return best
