"""Task JSON -> network input: one home for turning a Label Studio task into a training/prediction sample.

:func:`prepare_task` fetches and decodes one task's image straight to the network input through the
image geometry (:class:`mtal_models.data.geometry.Fit`) and maps its (partial) ground truth (the
latest non-cancelled annotation, :func:`latest_annotation`, and dense maps from task data) through the
same Fit. :func:`prepare_tasks` does that for many tasks on a thread pool (the training and ranking
jobs), masking non-finite pixels of dense maps as invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.label_config import ProjectSchema
from mtal_models.data.geometry import DEFAULT_MAX_SIZE, Fit
from mtal_models.data.sample import Sample, empty_label
from mtal_models.modalities import ModalitySpec

__all__ = ["Fetcher", "PreparedTask", "latest_annotation", "prepare_task", "prepare_tasks"]

log = logging.getLogger(__name__)


class Fetcher(Protocol):
    """What predict needs from :class:`backend.labelstudio.images.ImageFetcher`. A fetcher that also has
    ``fetch_fitted(url, task_id, fit_for) -> (input, Fit)`` (ImageFetcher does) decodes straight to the
    network input (:mod:`backend.labelstudio.decode`); otherwise ``fetch_image``'s full-size array is fitted here."""

    def fetch_image(self, url: str, task_id: Any = None) -> np.ndarray: ...

    def fetch_array(self, url: str, task_id: Any = None) -> np.ndarray: ...


@dataclass
class PreparedTask:
    """One task ready for the batch: network-size image and labels, original size and the Fit between."""

    task_id: Any
    height: int
    width: int
    sample: Sample
    labelled: set[str] = field(default_factory=set)
    fit: Fit | None = None


def latest_annotation(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """The most recent non-cancelled annotation of ``task`` (by updated_at, created_at, id), or None."""
    anns = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled") and isinstance(a.get("result"), list)
    ]
    if not anns:
        return None
    return max(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), _num(a.get("id"))))


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return -1.0


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be [H, W], [H, W, 1|3|4], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _resize_label(spec: ModalitySpec, label: Any, fit: Fit) -> Any:
    """A label in Sample format at the original size -> the network input through ``fit`` (dense maps:
    pixel-centre nearest, padding = the modality's "unlabelled" value; boxes scaled)."""
    if spec.kind == "detection":
        return {"boxes": fit.boxes_to_input(label["boxes"]),
                "labels": np.asarray(label["labels"], np.int64).reshape(-1)}
    arr = np.asarray(label)
    if arr.shape[:2] != (fit.height, fit.width):
        raise ValueError(f"modality {spec.name!r}: label shape {arr.shape} does not match the image "
                         f"{fit.height}x{fit.width}")
    fill = np.asarray(empty_label(spec, 1, 1)).reshape(-1)[0]
    out = fit.label(arr, fill)
    if spec.kind == "segmentation":  # held for a whole training run: the smallest integer type that fits
        return out.astype(_class_dtype(spec))
    return out


def _class_dtype(spec: ModalitySpec) -> type:
    """uint8 / int16 / int32: holds 0..channels-1 and ``ignore_index`` (collate widens to int64)."""
    lo, hi = min(0, spec.ignore_index), max(spec.channels - 1, spec.ignore_index)
    for dtype in (np.uint8, np.int16):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return np.int32


def prepare_task(task: Mapping[str, Any], schema: ProjectSchema, fetcher: Fetcher, size: int,
                 max_size: int | None = None) -> PreparedTask:
    """Fetch and decode one task's image to the network input (:class:`Fit` with shorter side ``size``,
    longer side at most ``max_size``, default max(1024, size)) and map its (partial) ground truth
    (latest non-cancelled annotation, dense fields) through the same Fit. Raises on failure (bad data,
    image not fetchable/decodable); a broken annotation is logged and ignored."""
    data = task.get("data")
    task_id = task.get("id")
    if not isinstance(data, dict):
        raise ValueError("task has no 'data' object")
    url = data.get(schema.image_key)
    if not isinstance(url, str) or not url:
        raise ValueError(f"task data has no image URL under {schema.image_key!r}")
    cap = max(DEFAULT_MAX_SIZE, size) if max_size is None else max_size

    def fit_for(h: int, w: int) -> Fit:
        return Fit.for_size(h, w, size, cap)

    if hasattr(fetcher, "fetch_fitted"):  # decoded once, at a reduced scale where the format allows
        resized, fit = fetcher.fetch_fitted(url, task_id, fit_for)
    else:
        image = _as_rgb(fetcher.fetch_image(url, task_id=task_id))
        fit = fit_for(*image.shape[:2])
        resized = fit.image(image)
        del image
    h, w = fit.height, fit.width
    labels: dict[str, Any] = {}
    present: dict[str, bool] = {}
    ann = latest_annotation(task)
    if ann is not None and ann["result"]:
        try:
            got, flags = annotation_to_labels(ann["result"], schema, h, w)
            for name, flag in flags.items():
                if flag and name in got and name in schema.modalities:
                    labels[name] = _resize_label(schema.modalities[name], got[name], fit)
                    present[name] = True
        except Exception as e:  # a broken annotation must not cost the prediction
            log.error("predict: task %s: annotation ignored (%s)", task_id, e)
            labels, present = {}, {}
    for name, key in (schema.dense_fields or {}).items():
        if name in schema.modalities and isinstance(data.get(key), str):
            try:
                arr = np.asarray(fetcher.fetch_array(data[key], task_id=task_id), np.float32)
                if schema.modalities[name].kind == "depth" and arr.ndim == 3:
                    arr = arr[..., 0]
                labels[name] = _resize_label(schema.modalities[name], arr, fit)
                present[name] = True
            except Exception as e:
                log.warning("predict: task %s: dense field %r not used (%s)", task_id, key, e)
    sample = Sample(id=str(task_id), image=resized, labels=labels, present=present)
    return PreparedTask(task_id, h, w, sample, {n for n, f in present.items() if f}, fit)


def prepare_tasks(ctx: Any, tasks: Sequence[Mapping[str, Any]], schema: ProjectSchema, size: int) -> list:
    """[(task, PreparedTask)] for every task whose image could be fetched, in order (``ctx``: a job
    context: its ``fetcher`` fetches, its ``settings.image_max_size``, when it has one, caps the longer
    side); images fetched by a thread pool (and kept in the on-disk cache for the next run) and decoded
    to the network input through the image geometry (shorter side ``size``, longer side at most
    ``image_max_size``); a bad image is logged and skipped."""
    cap = getattr(getattr(ctx, "settings", None), "image_max_size", None)
    max_size = None if cap is None else max(size, cap)  # None: prepare_task's default, max(1024, size)

    def one(task: Mapping[str, Any]) -> Any:
        try:
            return prepare_task(task, schema, ctx.fetcher, size, max_size)
        except Exception as e:  # one bad image must not stop the run
            log.error("task %s skipped: %s", task.get("id"), e)
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [(t, _finite(p, schema)) for t, p in zip(tasks, pool.map(one, tasks), strict=True) if p is not None]


def _finite(p: Any, schema: ProjectSchema) -> Any:
    """Mask non-finite pixels of the float maps (depth [H, W], normals [H, W, 3] from task data) of a
    prepared task as invalid (0: the losses skip depth <= 0 and zero normals; NaN * 0 is still NaN, so
    one NaN pixel would make every loss of the run NaN). A map with no finite pixel left is dropped. Each
    case is logged with the task id."""
    sample = p.sample
    for name in list(sample.labels):
        arr = sample.labels[name]
        if not (isinstance(arr, np.ndarray) and arr.dtype.kind == "f"):
            continue
        bad = ~np.isfinite(arr)
        if schema.modalities[name].kind == "normals" and arr.ndim == 3:
            bad = np.broadcast_to(bad.any(axis=-1, keepdims=True), arr.shape)  # a vector is valid as a whole
        if not bad.any():
            continue
        n_bad = int(bad.any(axis=-1).sum() if bad.ndim == 3 else bad.sum())
        if bad.all():
            log.warning("task %s: %s map dropped: no finite value (NaN/Inf)", p.task_id, name)
            del sample.labels[name]
            sample.present[name] = False
            p.labelled.discard(name)
            continue
        log.warning("task %s: %s map: %d non-finite pixels (NaN/Inf) masked as invalid", p.task_id, name, n_bad)
        sample.labels[name] = np.where(bad, np.float32(0), arr).astype(arr.dtype, copy=False)
    return p
