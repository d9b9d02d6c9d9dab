"""Batched inference for /predict: every task of a request goes through ONE forward pass.

Steps: fetch all images concurrently (a task whose image cannot be fetched or decoded, or is not in
within ``fetch_deadline`` seconds of the request's start, gets an empty prediction and a logged reason;
the others go on); decode each straight to the network input through
the image geometry (:class:`mtal_models.data.geometry.Fit`: aspect ratio kept, shorter side
``image_size``, longer side at most ``image_max_size``, padded to a multiple of 32; JPEGs decoded at
a reduced scale, EXIF orientation applied: :mod:`backend.labelstudio.decode`), keeping the displayed original
size; take the latest non-cancelled annotation of each task as ground truth for its labelled
modalities (PartAL GT substitution, passed to the network as ``given``, mapped by the same Fit);
batch (chunks of ``batch_size`` tasks and at most ``FORWARD_PIXELS`` input pixels, padded to the
largest image of the chunk); run ``model.predict``
once per chunk; bring each task's outputs back to its original size through its Fit and convert them
to Label Studio results for the modalities that are not labelled yet (:class:`backend.serving.prefill.Prefill`:
segmentation probabilities upsampled bilinearly to the original size before the argmax; boxes mapped
exactly back).

Task score (low = label first): the active-learning loop's stored score for the task id wins when
the stored ranking belongs to the current model version; otherwise ``1 - u`` with ``u`` in [0, 1]
the mean normalised per-pixel Shannon entropy of the categorical outputs (entropy / log C) over the
image's own pixels (padding excluded), or for a detection-only network ``1 - max box score``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.labelstudio.tasks import Fetcher, PreparedTask, prepare_task
from backend.serving.prefill import Prefill
from mtal_models.data.sample import collate
from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels

__all__ = ["INFERENCE", "predict_tasks", "task_scores"]

log = logging.getLogger(__name__)
_FETCH_THREADS = 8
_SCORE_STRIDE = 4
# input pixels per forward: 8 inputs of 384x512 (a 16-photo /predict of the small net peaked ~430 MB
# above the idle server in one forward, ~215 MB in two)
FORWARD_PIXELS = 8 * 384 * 512
# Every forward of the process runs on this one thread: concurrent requests queue for the CPU/GPU
# instead of thrashing it, and torch's OpenMP pool is used from a single thread (several calling
# threads each get their own spinning OpenMP team, which slows every forward on a small machine).
INFERENCE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtal-infer")


def task_scores(preds: Mapping[str, Tensor], modalities: Mapping[str, ModalitySpec],
                sizes: Sequence[tuple[int, int]] | None = None) -> list[float]:
    """``1 - u`` per image of a batch (low = label first). ``preds``: activated outputs, dense
    [B, C, H, W], detection [B, K, 6 + C]; ``sizes``: each image's (h, w) inside the padded batch
    (default: all of it; the padding is left out of the mean). ``u``: mean over categorical modalities
    of the mean per-pixel entropy / log(C), estimated on every 4th pixel of every 4th row (an unbiased
    sample of the pixel mean, 16x cheaper); detection-only networks: score = the highest box score
    (u = 1 - max score); 0.5 when nothing applies."""
    parts: list[Tensor] = []
    for name, p in preds.items():
        spec = modalities[name]
        if spec.kind not in ("segmentation", "binary"):
            continue
        ents = []
        for i in range(p.shape[0]):
            h, w = sizes[i] if sizes is not None else p.shape[2:]
            q = p[i, :, :h:_SCORE_STRIDE, :w:_SCORE_STRIDE].float()
            if spec.kind == "segmentation":
                ents.append(torch.special.entr(q).sum(0).mean() / math.log(spec.channels))
            else:
                ents.append((torch.special.entr(q) + torch.special.entr(1 - q)).sum(0).mean() / math.log(2))
        parts.append(torch.stack(ents))
    if parts:
        u = torch.stack(parts).mean(0).clamp(0, 1)
        return [round(1.0 - float(v), 6) for v in u.cpu()]
    dets = [p for n, p in preds.items() if modalities[n].kind == "detection"]
    if not dets:
        return [0.5] * len(next(iter(preds.values()), []))
    best = torch.stack([torch.where(d[:, :, 5] >= 0, d[:, :, 4], 0.0).amax(1) for d in dets]).amax(0)
    return [round(float(v), 6) for v in best.cpu()]


def predict_tasks(
    model: torch.nn.Module,
    schema: Any,
    tasks: Sequence[Mapping[str, Any]],
    fetcher: Fetcher,
    *,
    model_version: str,
    image_size: int = 384,
    device: str = "cpu",
    batch_size: int = 32,
    ranking: Mapping[str, Any] | None = None,
    prefill: Prefill | None = None,
    image_max_size: int | None = None,
    fetch_deadline: float | None = None,
) -> list[dict[str, Any]]:
    """One Label Studio prediction per task, in order: {"result", "score", "model_version"}.

    model: a MultiTaskNet over ``schema.modalities``; tasks: LS task dicts (``data``, optional
    ``id`` and ``annotations``). Tasks that fail get {"result": [], "model_version"} (no score).
    prefill: the version's post-processing (:class:`backend.serving.prefill.Prefill`; default: its defaults).
    image_size / image_max_size: the geometry's shorter side and longer-side cap (:class:`Fit`).
    fetch_deadline: seconds from now by which every image must be in (fetched and decoded, each on its
    own thread); a task whose image is not gets an empty result, and its fetch is left to finish or fail
    in the background (the fetcher's own timeouts bound it). None: wait for every fetch.
    """
    prefill = prefill or Prefill()
    size = int(image_size)
    empty = [{"result": [], "model_version": model_version} for _ in tasks]
    prepared: list[PreparedTask] = []

    def job(i: int) -> PreparedTask | None:
        try:
            return prepare_task(tasks[i], schema, fetcher, size, image_max_size)
        except Exception as e:
            log.error("predict: task %s skipped: %s", tasks[i].get("id", f"#{i}"), e)
            return None

    inline = len(tasks) == 1 and fetch_deadline is None  # one task, no deadline: no thread needed
    results = [job(0)] if inline else _fetch_all(job, tasks, fetch_deadline)
    prepared = [(i, p) for i, p in enumerate(results) if p is not None]
    if not prepared:
        return empty

    ranked = _usable_ranking(ranking, model_version)
    out = empty
    modalities = schema.modalities
    for chunk in _chunks(sorted(prepared, key=_input_shape), batch_size):  # like shapes together: less padding
        if any(p.labelled for _, p in chunk):  # GT substitution: placeholders for absent labels via collate
            batch = collate([p.sample for _, p in chunk], modalities)
            images, given = batch.images, batch.labels
        else:  # nothing labelled: skip building ignore-filled label maps
            images, given = _stack_images([p.sample.image for _, p in chunk]), None
        sizes = [p.fit.resized if p.fit is not None else p.sample.image.shape[:2] for _, p in chunk]
        preds, scores = INFERENCE.submit(_infer, model, images, given, modalities, device, sizes).result()
        for j, (i, p) in enumerate(chunk):
            try:
                out[i] = _one_prediction(
                    p, {k: v[j] for k, v in preds.items()}, scores[j], schema, model_version, ranked, prefill
                )
            except Exception:
                log.exception("predict: task %s: converting the prediction failed", p.task_id)
    return out


def _fetch_all(job: Any, tasks: Sequence[Mapping[str, Any]], deadline: float | None) -> list[PreparedTask | None]:
    """``job(i)`` for every task on up to :data:`_FETCH_THREADS` threads; None for a task whose job is not
    done within ``deadline`` seconds (logged with the reason; the pool is not waited for)."""
    pool = ThreadPoolExecutor(max_workers=min(_FETCH_THREADS, len(tasks)), thread_name_prefix="mtal-fetch")
    try:
        futures = [pool.submit(job, i) for i in range(len(tasks))]
        done, _ = wait(futures, timeout=deadline)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out: list[PreparedTask | None] = []
    for i, f in enumerate(futures):
        if f in done:
            out.append(f.result())
        else:
            out.append(None)
            log.error("predict: task %s skipped: its image was not fetched within %g s (MTAL_PREDICT_FETCH_S)",
                      tasks[i].get("id", f"#{i}"), deadline)
    return out


def _input_shape(item: tuple[int, PreparedTask]) -> tuple[int, int]:
    return item[1].sample.image.shape[:2]


def _chunks(prepared: Sequence[tuple[int, PreparedTask]], batch_size: int) -> list[list[tuple[int, PreparedTask]]]:
    """Consecutive chunks of at most ``batch_size`` tasks and at most :data:`FORWARD_PIXELS` input
    pixels (the forward's activations grow with both; at least one task per chunk)."""
    out: list[list[tuple[int, PreparedTask]]] = []
    pixels = 0
    for item in prepared:
        px = item[1].sample.image.shape[0] * item[1].sample.image.shape[1]
        if not out or len(out[-1]) >= batch_size or pixels + px > FORWARD_PIXELS:
            out.append([])
            pixels = 0
        out[-1].append(item)
        pixels += px
    return out


def _infer(
    model: torch.nn.Module, images: Tensor, given: Labels | None, modalities: Mapping[str, ModalitySpec], device: str,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[dict[str, Tensor], list[float]]:
    """One batched forward (on the INFERENCE thread): activated outputs on the CPU (segmentation
    probabilities as float16 [B, C, H, W], half the memory until each is upsampled) and task scores."""
    with torch.inference_mode():
        if images.dtype == torch.uint8:  # convert on the device: 4x less to copy
            images = images.to(device).float().div_(255.0)
        preds = model.predict(images.to(device), None if given is None else given.to(device))
        scores = task_scores(preds, modalities, sizes)
        return {k: _reduce(v, modalities[k]) for k, v in preds.items()}, scores


def _reduce(pred: Tensor, spec: ModalitySpec) -> Tensor:
    """Segmentation probs -> float16 on the CPU; others -> CPU as they are."""
    return pred.half().cpu() if spec.kind == "segmentation" else pred.cpu()


def _stack_images(images: Sequence[np.ndarray]) -> Tensor:
    """B uint8 [H_i, W_i, 3] -> uint8 [B, 3, H, W] padded bottom/right with 0 to the largest H and W;
    :func:`_infer` scales it to float [0, 1] on the device (the same values collate builds)."""
    h, w = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    out = np.zeros((len(images), 3, h, w), np.uint8)
    for k, im in enumerate(images):
        out[k, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    return torch.from_numpy(out)


def _usable_ranking(ranking: Mapping[str, Any] | None, model_version: str) -> Mapping[str, Any]:
    if not ranking or ranking.get("model_version") not in (None, model_version):
        return {}
    tasks = ranking.get("tasks")
    return tasks if isinstance(tasks, Mapping) else {}


def _one_prediction(
    p: PreparedTask,
    preds: dict[str, Tensor],
    score: float,
    schema: Any,
    model_version: str,
    ranked: Mapping[str, Any],
    prefill: Prefill,
) -> dict[str, Any]:
    modalities = schema.modalities
    entry = ranked.get(str(p.task_id)) if p.task_id is not None else None
    requested: list[str] | None = None
    if isinstance(entry, Mapping):
        if isinstance(entry.get("score"), int | float):
            score = float(entry["score"])
        if isinstance(entry.get("requested"), list):
            requested = [m for m in entry["requested"] if m in modalities]
    if requested is None:
        requested = [m for m in schema.annotatable if m not in p.labelled]
    todo = {name: pred for name, pred in preds.items() if name not in p.labelled}
    result = prefill.results(todo, schema, p.height, p.width, requested=requested, fit=p.fit)
    return {"result": result, "score": score, "model_version": model_version}
