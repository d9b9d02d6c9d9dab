"""Building blocks of :class:`~mtal_models.nets.detseg.DetSegNet`: the FCOS detector pieces, the
FPN feature fusion and dense heads of the segmentation branch, and detection post-processing.

Everything box-related comes from torchvision (FCOS head and target matching, AnchorGenerator,
BoxLinearCoder, clip_boxes_to_image, batched_nms); this module only wires them together.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.ops import boxes as box_ops

from mtal_models.modalities import ModalitySpec

__all__ = ["DenseHead", "FeatureFusion", "SoftplusConv2d", "build_fcos", "group_norm", "postprocess_detections"]

# FCOS anchor ("point") sizes equal the strides of P3..P7, one anchor per location (torchvision default).
ANCHOR_SIZES: tuple[tuple[int, ...], ...] = ((8,), (16,), (32,), (64,), (128,))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with gcd(32, channels // 2) groups: 32 for standard widths, and always >= 2 channels
    per group so that 1x1 maps (P6/P7 of small images) of a single image can be normalised."""
    return nn.GroupNorm(_groups(channels), channels)


def _groups(channels: int) -> int:
    return math.gcd(32, max(1, channels // 2))


class SoftplusConv2d(nn.Conv2d):
    """A conv whose output goes through softplus: FCOS's box-distance layer ``bbox_reg``.

    torchvision's FCOSRegressionHead returns ``relu(bbox_reg(x))``. A ReLU there can die: one large
    optimiser step (Adam at lr 5e-3 moves every weight by about lr at once) makes a distance channel
    negative at every location, its output is then exactly 0 with exactly 0 gradient, and nothing brings
    it back. The boxes collapse onto their anchor points (x1 = x2 or y1 = y2), and a GIoU loss of a
    zero-area box has no gradient either (the intersection is 0 whatever the other sides do).
    Softplus (as a smooth stand-in for the paper's exp(s * x), with no overflow) keeps distances > 0
    with a gradient > 0 everywhere, so a channel pushed negative comes back. torchvision's ReLU that
    follows is then the identity. Same parameters (and state-dict keys) as the plain conv.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(super().forward(x))


def _positive_regression(head: FCOSRegressionHead) -> None:
    """Swap ``head.bbox_reg`` for a :class:`SoftplusConv2d` with the same shape and initial weights."""
    old = head.bbox_reg
    new = SoftplusConv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    new.load_state_dict(old.state_dict())
    head.bbox_reg = new


class _ChannelsOnly(nn.Module):
    """Parameter-free stand-in for FCOS's ``backbone``: the trunk + FPN are owned by DetSegNet
    (shared with the segmentation branch); FCOS's own ``forward`` is never called."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels


def build_fcos(
    channels: int,
    num_classes: int,
    num_convs: int = 4,
    score_thresh: float = 0.2,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
) -> FCOS:
    """A torchvision FCOS used for its head, anchor generator, box coder and target matching
    (``FCOS.compute_loss``). Its GeneralizedRCNNTransform (resizing) is never used.

    The head towers use :func:`group_norm`'s group count so that narrow FPNs work. Box distances go
    through softplus instead of ReLU (:class:`SoftplusConv2d`: a dead ReLU collapsed the boxes at lr 5e-3).
    """
    anchors = AnchorGenerator(ANCHOR_SIZES, ((1.0,),) * len(ANCHOR_SIZES))
    head = FCOSHead(channels, 1, num_classes, num_convs=0)  # towers replaced below (GN(32) needs 32 | channels)
    norm = partial(nn.GroupNorm, _groups(channels))
    head.classification_head = FCOSClassificationHead(channels, 1, num_classes, num_convs, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(channels, 1, num_convs, norm_layer=norm)
    _positive_regression(head.regression_head)
    return FCOS(
        _ChannelsOnly(channels),
        num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )


class FeatureFusion(nn.Module):
    """Fuse FPN levels P2..P5 at P2's resolution (stride 4): each level -> 3x3 conv + GN + ReLU,
    bilinear upsampling to P2's size, sum. [B, F, H/4, W/4] -> [B, head_channels, H/4, W/4].

    Deterministic (no dropout): it runs once per image in MC-dropout; the dense heads repeat.
    """

    def __init__(self, fpn_channels: int, channels: int, levels: int = 4) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(fpn_channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True)
            )
            for _ in range(levels)
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        """feats: FPN maps [B, F, h_l, w_l], finest first (at least ``levels`` of them)."""
        size = feats[0].shape[-2:]
        out = self.lateral[0](feats[0])
        for conv, f in zip(self.lateral[1:], feats[1 : len(self.lateral)], strict=True):
            out = out + F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
        return out


class DenseHead(nn.Module):
    """One dense modality's head: Dropout2d -> 3x3 conv + GN + ReLU -> Dropout2d -> 1x1 conv,
    upsampled (bilinear) to the input size. Normals are L2-normalised to unit vectors.

    forward(fused [B, F, h, w], size) -> (prediction [B, C, H, W], last features [B, F, h, w]).
    """

    def __init__(self, spec: ModalitySpec, channels: int, dropout: float) -> None:
        super().__init__()
        self.kind = spec.kind
        self.body = nn.Sequential(
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(channels, spec.head_channels, 1)

    def forward(self, fused: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        feat = self.body(fused)
        pred = F.interpolate(self.classifier(feat), size=size, mode="bilinear", align_corners=False)
        if self.kind == "normals":
            pred = F.normalize(pred, dim=1, eps=1e-6)
        return pred, feat


@torch.no_grad()
def postprocess_detections(
    fcos: FCOS,
    head_outputs: dict[str, Tensor],
    anchors: list[Tensor],
    num_anchors_per_level: list[int],
    image_size: tuple[int, int],
    max_detections: int,
) -> Tensor:
    """Raw FCOS outputs -> padded detections [B, K, 6 + C] (K = ``max_detections``).

    Per level: score = sqrt(sigmoid(cls) * sigmoid(ctrness)) per (location, class), keep scores >
    ``fcos.score_thresh``, top ``fcos.topk_candidates``; decode with FCOS's BoxLinearCoder, clip to
    the image, then class-wise ``batched_nms`` (``fcos.nms_thresh``) and keep the K best.
    Columns: x1, y1, x2, y2 (pixels), score, class id (float), class distribution (the location's
    per-class sigmoids normalised to sum 1; its argmax may differ from the class id when one
    location yields boxes for several classes). Padding rows: zeros with class -1.

    head_outputs: cls_logits [B, A, C], bbox_regression [B, A, 4], bbox_ctrness [B, A, 1];
    anchors: B tensors [A, 4].
    """
    cls_logits = head_outputs["cls_logits"].float()
    regression = head_outputs["bbox_regression"].float()
    batch, _, num_classes = cls_logits.shape
    class_probs = cls_logits.sigmoid()
    scores_all = torch.sqrt(class_probs * head_outputs["bbox_ctrness"].float().sigmoid())  # [B, A, C]
    out = cls_logits.new_zeros(batch, max_detections, 6 + num_classes)
    out[:, :, 5] = -1
    for i in range(batch):
        boxes, scores, labels, locs = [], [], [], []
        start = 0
        for n in num_anchors_per_level:
            flat = scores_all[i, start : start + n].flatten()
            idx = torch.where(flat > fcos.score_thresh)[0]
            top, order = flat[idx].topk(min(fcos.topk_candidates, idx.numel()))
            idx = idx[order]
            loc = start + torch.div(idx, num_classes, rounding_mode="floor")
            decoded = fcos.box_coder.decode(regression[i, loc], anchors[i][loc])
            boxes.append(box_ops.clip_boxes_to_image(decoded, image_size))
            scores.append(top)
            labels.append(idx % num_classes)
            locs.append(loc)
            start += n
        b, s, lab, loc = torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(locs)
        keep = box_ops.batched_nms(b, s, lab, fcos.nms_thresh)[:max_detections]
        dist = class_probs[i, loc[keep]]
        dist = dist / dist.sum(dim=1, keepdim=True).clamp_min(1e-12)
        rows = torch.cat([b[keep], s[keep, None], lab[keep, None].float(), dist], dim=1)
        out[i, : rows.shape[0]] = rows
    return out
