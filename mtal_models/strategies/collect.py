"""One driver, shared by the offline simulator and the Label Studio backend: run a
:class:`~mtal_models.nets.base.MultiTaskNet` over the pool's batches, give each batch's outputs to the
strategy's per-batch reduction, and concatenate. It collects exactly what ``strategy.needs`` declares:

- always: ``model(images, given, committee=needs.committee)`` in eval mode (final, initial, refined,
  pooled, head_features);
- ``mc_samples > 0``: ``model.mc_samples(images, n, given)`` (a network with ``forward_and_mc``, PAD-Net, gives
  both from one trunk pass);
- ``flip``: ``model(images.flip(-1))`` with dense outputs flipped back (normals: x negated);
- ``crops``: ``model.segment_crops(images, boxes, size)`` for every non-padding detected box (det+seg net).

``given`` is the batch's labels when a batch is a :class:`~mtal_models.data.sample.Batch` and
``needs.conditioned`` (PartAL conditions predictions on labelled modalities); plain image tensors
[B, 3, H, W] are accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import Tensor

from mtal_models.data.sample import Batch
from mtal_models.modalities import unpack_detections
from mtal_models.nets.base import Labels, MultiTaskNet
from mtal_models.nets.mc import MCSamples
from mtal_models.strategies.base import BatchOutputs, Needs, PoolScores, Strategy, concat_pool
from mtal_models.strategies.consistency import unflip

__all__ = ["batch_outputs", "collect_pool_outputs", "crop_outputs"]


@torch.inference_mode()
def batch_outputs(model: MultiTaskNet, images: Tensor, given: Labels | None, needs: Needs) -> BatchOutputs:
    """Everything ``needs`` asks for, for one batch of images [B, 3, H, W]. The model is left in the
    train/eval mode it had. Runs under ``torch.inference_mode`` (the same values as ``no_grad``; measured by
    ``bench.infer_paths``): its tensors are read-only outside it, and whatever is built from them (a
    concatenated pool, ``torch.cat``) is an ordinary tensor."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [B, 3, H, W] tensor, got {_shape(images)}")
    was_training = model.training
    model.eval()
    try:
        both = getattr(model, "forward_and_mc", None) if needs.mc_samples else None
        if both is not None:  # PAD-Net: the forward and the MC samples on one trunk pass (the same values)
            out, mc = both(images, needs.mc_samples, given, committee=needs.committee)
        else:
            out, mc = model(images, given, committee=needs.committee), None
        res = BatchOutputs(
            modalities=model.modalities,
            final=out.final,
            initial=out.initial,
            refined=out.refined,
            pooled=out.pooled,
            head_features=out.head_features,
        )
        if needs.mc_samples:
            res.mc = mc if mc is not None else model.mc_samples(images, needs.mc_samples, given)
        if needs.flip:
            mirrored = model(images.flip(-1)).final
            res.flipped = {k: unflip(model.modalities[k], v) for k, v in mirrored.items() if model.modalities[k].dense}
        if needs.crops:
            res.crops = _crops(model, images, res.final, needs)
    finally:
        model.train(was_training)
    return res


def crop_outputs(out: BatchOutputs, height: int, width: int) -> BatchOutputs:
    """``out`` with every dense output (final, initial, refined, mc, flipped: [..., H, W]) cut to its
    top-left ``height`` x ``width``: the images' own pixels when a batch of equal-size images was padded
    bottom/right to the network's stride, so that scores leave the padding out. Detections, pooled and
    head features and crops are kept as they are."""
    dense = {k for k, spec in out.modalities.items() if spec.dense}

    def cut(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v[..., :height, :width] if k in dense else v for k, v in d.items()}

    refined = {k: {j: t[..., :height, :width] for j, t in v.items()} if k in dense else v
               for k, v in out.refined.items()}  # refined[k][j]: modality k's output refined by j
    mc = out.mc.cropped(height, width) if isinstance(out.mc, MCSamples) else cut(out.mc)
    return replace(out, final=cut(out.final), initial=cut(out.initial), mc=mc, flipped=cut(out.flipped),
                   refined=refined)


def _crops(model: MultiTaskNet, images: Tensor, final: dict[str, Tensor], needs: Needs) -> list[Tensor]:
    segment = getattr(model, "segment_crops", None)
    if segment is None:
        raise ValueError(
            f"{type(model).__name__} has no segment_crops(images, boxes, size): boxmask needs the det+seg net"
        )
    dets = [k for k, s in model.modalities.items() if s.kind == "detection"]
    source = needs.crop_source
    if source is None:
        if len(dets) != 1:
            raise ValueError(f"crops need exactly one detection modality (or needs.crop_source), found {dets}")
        source = dets[0]
    if source not in final:
        raise ValueError(f"detection modality {source!r} missing from the network output; have {sorted(final)}")
    boxes = [d["boxes"] for d in unpack_detections(final[source])]
    # segment_crops gives probabilities; strategies take logits, and log-probabilities are logits.
    crops = [c.clamp_min(1e-8).log() for c in segment(images, boxes, needs.crop_size)]
    if len(crops) != len(boxes) or any(c.shape[0] != b.shape[0] for c, b in zip(crops, boxes, strict=True)):
        raise ValueError("segment_crops must return one [N_i, C, size, size] tensor per image, one row per box")
    return crops


def collect_pool_outputs(
    model: MultiTaskNet,
    batches: Iterable[Tensor | Batch],
    strategy: Strategy,
    device: torch.device | str | None = None,
) -> PoolScores:
    """Run ``model`` over ``batches`` (image tensors or Batches, in pool order) and return the
    strategy's concatenated per-image values (``{key: [N, ...]}``, on CPU), ready for ``strategy.select``.
    An empty iterable raises ValueError (empty pool)."""
    parts = []
    for batch in batches:
        if isinstance(batch, Batch):
            images, given = batch.images, (batch.labels if strategy.needs.conditioned else None)
        else:
            images, given = batch, None
        if device is not None:
            images = images.to(device)
            given = given.to(device) if given is not None else None
        parts.append(strategy.score_batch(batch_outputs(model, images, given, strategy.needs)))
    if not parts:
        raise ValueError("empty pool: no batches to score")
    return concat_pool(parts)


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
