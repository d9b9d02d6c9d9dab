"""Detection-segmentation consistency (MTC, Algorithm 1 of the det+seg consistency paper).

For each detected box (class c, class distribution p_cls over detection classes):

- BoxMask BM: the crop around the box is re-segmented by the network; BM is the set of pixels of the
  box where the crop's probability of seg class ``det_to_seg[c]`` exceeds tau (0.3). The crop's map
  [C, s, s] is resized (bilinear) to the box's pixel extent and placed at the box.
- S_loc (eq. 1) is the paper's *agreement* (1/|BM|)·Σ_BM [argmax p_seg == det_to_seg[c]]. As a
  selection score we use the **disagreement 1 - S_loc**, so higher = more informative.
- S_cls (eq. 2) = 1/(2|BM|)·Σ_BM KL(p_seg‖p~cls) + KL(p~cls‖p_seg); p~cls puts p_cls on the mapped
  seg classes and 1e-6 on the others (renormalised).
- An empty BoxMask (the crop shows nothing of class c above tau) is maximal localisation
  disagreement: 1 - S_loc = 1, S_cls = 0.

S_seg (eq. 3): fraction of pixels outside the union of BoxMasks whose argmax is a seg class mapped
from a detection class (0 if no pixel is outside). Final score (Algorithm 1, line 13):
``S = S_seg + max_box (1 - S_loc + S_cls)``; with no box the max is 0.

Class mapping: ``det_to_seg[c]`` is the segmentation class of detection class c, or -1 when the
segmentation has no class for it. Build it **by class name** with :func:`det_to_seg_by_name` (the
backend from the project's labeling config, the simulator from its dataset's class table). A detection
class mapped to -1 adds no S_loc/S_cls (its boxes have no BoxMask to check) and no seg class to S_seg.
Without a mapping the fallback is c -> c + 1, i.e. the segmentation's classes are ``["background",
*detection classes]`` in the same order; any other layout needs the mapping, or boxes are checked
against the wrong class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtal_models.modalities import unpack_detections

__all__ = ["box_crops", "default_det_to_seg", "det_to_seg_by_name", "mtc_image_score", "mtc_scores"]

_EPS = 1e-6


def default_det_to_seg(det_classes: int) -> Tensor:
    """Detection class c -> segmentation class c + 1 (seg class 0 = background). long [C_det]."""
    return torch.arange(det_classes, dtype=torch.long) + 1


def det_to_seg_by_name(det_names: Sequence[str], seg_names: Sequence[str]) -> Tensor:
    """long [C_det]: for each detection class name, the id of the segmentation class of the same name
    (compared case-insensitively, surrounding blanks ignored), -1 when there is none."""
    index: dict[str, int] = {}
    for i, name in enumerate(seg_names):
        index.setdefault(str(name).strip().casefold(), i)
    return torch.tensor([index.get(str(n).strip().casefold(), -1) for n in det_names], dtype=torch.long)


def box_crops(box: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel extent (x1, y1, x2, y2), x2/y2 exclusive, of a float box clamped to the image (>= 1 px)."""
    x1 = min(max(int(math.floor(float(box[0]))), 0), width - 1)
    y1 = min(max(int(math.floor(float(box[1]))), 0), height - 1)
    x2 = min(max(int(math.ceil(float(box[2]))), x1 + 1), width)
    y2 = min(max(int(math.ceil(float(box[3]))), y1 + 1), height)
    return x1, y1, x2, y2


def mtc_image_score(
    seg_probs: Tensor,
    boxes: Tensor,
    labels: Tensor,
    det_probs: Tensor,
    crop_probs: Tensor,
    det_to_seg: Tensor,
    tau: float = 0.3,
) -> dict[str, Tensor]:
    """MTC scores of one image.

    seg_probs [C, H, W] (softmax of the full-image segmentation); boxes [N, 4] xyxy pixels; labels [N]
    detection class ids; det_probs [N, C_det]; crop_probs [N, C, s, s] (softmax of the re-segmented crops).
    Returns {"score": [], "s_seg": [], "s_loc": [N] (disagreement), "s_cls": [N]}.
    """
    c_seg, h, w = seg_probs.shape
    n = boxes.shape[0]
    if crop_probs.shape[0] != n or (n and crop_probs.shape[1] != c_seg):
        raise ValueError(f"boxmask: crops {tuple(crop_probs.shape)} do not match {n} boxes x {c_seg} seg classes")
    if det_probs.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"boxmask: {n} boxes but {labels.shape[0]} labels and {det_probs.shape[0]} distributions")
    if det_to_seg.numel() and (int(det_to_seg.max()) >= c_seg or int(det_to_seg.min()) < -1):
        raise ValueError(f"boxmask: det_to_seg maps to seg classes outside [0, {c_seg}) (or -1): {det_to_seg.tolist()}")
    mapped = det_to_seg >= 0  # [C_det]
    argmax = seg_probs.argmax(dim=0)
    combined = torch.zeros(h, w, dtype=torch.bool, device=seg_probs.device)
    s_loc = seg_probs.new_zeros(n)
    s_cls = seg_probs.new_zeros(n)
    for b in range(n):
        c = int(labels[b])
        if not 0 <= c < det_to_seg.numel():
            raise ValueError(f"boxmask: detection class {c} has no seg class in det_to_seg (size {det_to_seg.numel()})")
        seg_c = int(det_to_seg[c])
        if seg_c < 0:  # no segmentation class of this name: nothing to compare the box with
            continue
        x1, y1, x2, y2 = box_crops(boxes[b], h, w)
        crop = F.interpolate(crop_probs[b : b + 1, seg_c : seg_c + 1].float(), size=(y2 - y1, x2 - x1),
                             mode="bilinear", align_corners=False)[0, 0]
        bm = torch.zeros(h, w, dtype=torch.bool, device=seg_probs.device)
        bm[y1:y2, x1:x2] = crop > tau
        area = int(bm.sum())
        if area == 0:
            s_loc[b] = 1.0
            continue
        s_loc[b] = 1.0 - (argmax[bm] == seg_c).float().mean()
        p_tilde = torch.full((c_seg,), _EPS, dtype=seg_probs.dtype, device=seg_probs.device)
        p_tilde.index_put_((det_to_seg[mapped],), det_probs[b][mapped].to(seg_probs.dtype).clamp_min(_EPS),
                           accumulate=True)
        p_tilde = p_tilde / p_tilde.sum()
        p_pix = seg_probs[:, bm].clamp_min(_EPS)  # [C, |BM|]
        lp, lq = p_pix.log(), p_tilde.log()[:, None]
        kl = (p_pix * (lp - lq)).sum(0) + (p_tilde[:, None] * (lq - lp)).sum(0)
        s_cls[b] = 0.5 * kl.mean()
        combined |= bm
    outside = ~combined
    object_classes = torch.zeros(c_seg, dtype=torch.bool, device=seg_probs.device)
    object_classes[det_to_seg[mapped]] = True
    s_seg = object_classes[argmax][outside].float().mean() if outside.any() else seg_probs.new_zeros(())
    checked = mapped[labels.long()] if n else labels.new_zeros(0, dtype=torch.bool)
    best_box = (s_loc + s_cls)[checked].max() if bool(checked.any()) else seg_probs.new_zeros(())
    return {"score": s_seg + best_box, "s_seg": s_seg, "s_loc": s_loc, "s_cls": s_cls}


def mtc_scores(
    seg_logits: Tensor,
    detections: Tensor,
    crop_logits: list[Tensor],
    det_to_seg: Tensor | None = None,
    tau: float = 0.3,
    min_score: float = 0.0,
) -> dict[str, Tensor]:
    """Per-image MTC scores for a batch: {"score", "s_seg", "s_box"} each [B] (s_box = max_box(1-S_loc+S_cls)).

    seg_logits [B, C, H, W]; detections padded [B, K, 6 + C_det]; crop_logits: per image [N_i, C, s, s]
    for the image's non-padding detections in order (boxes with score < min_score are dropped here).
    """
    if seg_logits.dim() != 4:
        raise ValueError(f"boxmask: segmentation logits must be [B, C, H, W], got {tuple(seg_logits.shape)}")
    dets = unpack_detections(detections)
    if len(dets) != seg_logits.shape[0] or len(crop_logits) != seg_logits.shape[0]:
        raise ValueError(
            f"boxmask: batch of {seg_logits.shape[0]} segmentations, {len(dets)} detections, {len(crop_logits)} crops"
        )
    mapping = default_det_to_seg(detections.shape[-1] - 6) if det_to_seg is None else det_to_seg.long()
    seg_probs = seg_logits.float().softmax(dim=1)
    out: dict[str, list[Tensor]] = {"score": [], "s_seg": [], "s_box": []}
    for i, d in enumerate(dets):
        crops = crop_logits[i]
        if crops.shape[0] != d["boxes"].shape[0]:
            raise ValueError(f"boxmask: image {i} has {d['boxes'].shape[0]} boxes but {crops.shape[0]} crops")
        keep = d["scores"] >= min_score
        r = mtc_image_score(seg_probs[i], d["boxes"][keep], d["labels"][keep], d["probs"][keep],
                            crops[keep].float().softmax(dim=1), mapping.to(seg_logits.device), tau)
        out["score"].append(r["score"])
        out["s_seg"].append(r["s_seg"])
        out["s_box"].append(r["score"] - r["s_seg"])
    return {k: torch.stack(v) for k, v in out.items()}
