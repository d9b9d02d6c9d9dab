"""DetSegNet: a shared ResNet + FPN with an FCOS detection head and dense (segmentation) heads.

The multi-task network of the MTC paper (shared backbone, one head per task; Fig. 2), built from
torchvision parts: FPN (P2..P7 with LastLevelP6P7), FCOS head / anchors / box coder / target
matching / batched NMS for detection (P3..P7), and a fused P2..P5 branch (stride 4) with one small
head per dense modality. Images are used at the size they come in (no GeneralizedRCNNTransform
resizing); they are normalised inside with ImageNet mean/std. H and W should be >= 32 (multiples
of 32 keep the FCOS anchor grid exact).

Design choices (see docs/detseg.md):

- ``given`` (GT substitution) is a PAD-Net feature and is accepted but ignored here; ``committee``
  is ignored too (``refined`` stays empty) and ``initial`` is always empty.
- The detection loss is torchvision's FCOS loss (focal classification + GIoU regression + BCE
  centre-ness), computed **per present image** (one ``FCOS.compute_loss`` call each) so that
  per-sample weights apply exactly; each image is normalised by its own foreground count
  (torchvision normalises a batch by the batch total). Images with zero boxes are valid
  "labelled as empty" samples (all locations background).
- Detection has no MC-dropout samples; ``mc_samples`` covers the dense modalities only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from mtal_models.modalities import ModalitySpec
from mtal_models.nets.backbone import build_backbone, check_images
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput
from mtal_models.nets.config import NetConfig, get_config
from mtal_models.nets.detseg_heads import DenseHead, FeatureFusion, build_fcos, postprocess_detections
from mtal_models.nets.losses import masked_mean

__all__ = ["DetSegNet"]

class DetSegNet(MultiTaskNet):
    """Detection + dense prediction on one shared trunk.

    modalities: exactly one ``detection`` modality (C classes, background excluded) and at least one
    dense modality (segmentation usually; binary/depth/normals work through the same heads).
    config: a :class:`NetConfig`, preset name or dict (backbone, widths, dropout, max_detections).
    score_thresh / nms_thresh / topk_candidates: FCOS post-processing; det_convs: FCOS tower depth.
    """

    def __init__(
        self,
        modalities: Mapping[str, ModalitySpec],
        config: NetConfig | str | Mapping[str, Any] = "default",
        *,
        score_thresh: float = 0.2,
        nms_thresh: float = 0.6,
        topk_candidates: int = 1000,
        det_convs: int = 4,
    ) -> None:
        super().__init__(modalities)
        det = [n for n, s in self.modalities.items() if s.kind == "detection"]
        dense = [n for n, s in self.modalities.items() if s.dense]
        if len(det) != 1 or not dense:
            raise ValueError(
                "DetSegNet needs exactly one detection modality and at least one dense modality; got "
                f"detection={det}, dense={dense}"
            )
        self.config = get_config(config)
        self.det_name: str = det[0]
        self.dense_names: list[str] = dense
        self.num_det_classes = self.modalities[self.det_name].channels
        cfg = self.config
        self.backbone = build_backbone(cfg)
        fpn_ch = cfg.fpn_channels
        self.fpn = FeaturePyramidNetwork(list(self.backbone.out_channels), fpn_ch, LastLevelP6P7(fpn_ch, fpn_ch))
        self.fcos = build_fcos(
            fpn_ch, self.num_det_classes, det_convs, score_thresh, nms_thresh, cfg.max_detections, topk_candidates
        )
        self.fusion = FeatureFusion(fpn_ch, cfg.head_channels)
        self.dense_heads = nn.ModuleDict(
            {n: DenseHead(self.modalities[n], cfg.head_channels, cfg.dropout) for n in dense}
        )

    # ---- shared path -----------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        check_images(images)
        if min(images.shape[-2:]) < 32:
            raise ValueError(f"images must be at least 32x32, got {tuple(images.shape[-2:])}")
        if torch.isinf(images).any():
            raise ValueError("images contain inf")

    def _pyramid(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """images [B, 3, H, W] -> (last backbone stage [B, D, H/32, W/32], FPN maps P2..P7 [B, F, ., .])."""
        stages = self.backbone(images)  # normalises with ImageNet mean/std inside
        pyr = self.fpn(OrderedDict((str(i), s) for i, s in enumerate(stages)))
        return stages[-1], list(pyr.values())

    def _dense(self, fused: Tensor, size: tuple[int, int]) -> tuple[dict[str, Tensor], list[Tensor]]:
        preds, feats = {}, []
        for name, head in self.dense_heads.items():
            preds[name], feat = head(fused, size)
            feats.append(feat)
        return preds, feats

    # ---- MultiTaskNet ----------------------------------------------------------------------------
    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        """images [B, 3, H, W] in [0, 1] -> MultiTaskOutput with
        final[det] padded detections [B, K, 6 + C] (no grad), final[dense] [B, C_m, H, W];
        head_features [B, F * n_dense, H/4, W/4]; pooled [B, D]; extras: FCOS "head_outputs"
        (cls_logits [B, A, C], bbox_regression [B, A, 4], bbox_ctrness [B, A, 1]), "anchors"
        (B x [A, 4]), "num_anchors_per_level", "image_size" (H, W). ``given``/``committee`` ignored.
        """
        self._check_images(images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        last, pyr = self._pyramid(images)
        det_feats = pyr[1:]  # P3..P7
        head_outputs = self.fcos.head(det_feats)
        anchors = self.fcos.anchor_generator(ImageList(images, [size] * images.shape[0]), det_feats)
        per_level = [f.shape[-2] * f.shape[-1] for f in det_feats]
        final, feats = self._dense(self.fusion(pyr), size)
        final[self.det_name] = postprocess_detections(
            self.fcos, {k: v.detach() for k, v in head_outputs.items()}, anchors, per_level, size,
            self.config.max_detections,
        )
        return MultiTaskOutput(
            final={n: final[n] for n in self.modalities},
            head_features=torch.cat(feats, dim=1),
            pooled=last.mean(dim=(2, 3)),
            extras={"head_outputs": head_outputs, "anchors": anchors, "num_anchors_per_level": per_level,
                    "image_size": size},
        )

    def losses(
        self, out: MultiTaskOutput, labels: Labels, weights: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """{modality: scalar}: the (weighted) mean over present samples of each per-sample loss;
        detection = FCOS classification + bbox_regression + bbox_ctrness per image; 0 if none present."""
        batch = out.pooled.shape[0] if out.pooled is not None else next(iter(out.final.values())).shape[0]
        weights = weights or {}
        result: dict[str, Tensor] = {}
        for name, spec in self.modalities.items():
            present = labels.is_present(name, batch).to(out.pooled.device)
            if present.shape != (batch,):
                raise ValueError(f"modality {name!r}: present must be [B]={batch}, got {tuple(present.shape)}")
            if spec.dense:
                per_sample = spec.loss(out.final[name], labels.values[name], present) if present.any() else (
                    out.final[name].new_zeros(batch))
            else:
                per_sample = self.detection_loss_terms(out, labels.values.get(name, []), present).sum(dim=1)
            result[name] = masked_mean(per_sample, present, weights.get(name))
        return result

    def detection_loss_terms(self, out: MultiTaskOutput, targets: list[dict[str, Tensor]], present: Tensor) -> Tensor:
        """Per-sample FCOS loss terms [B, 3] (classification, bbox_regression, bbox_ctrness); zero rows
        where ``present`` is False (those targets are never read). targets: B dicts {"boxes" [N, 4]
        xyxy pixels, "labels" int64 [N] in [0, C)}."""
        head_outputs, anchors = out.extras["head_outputs"], out.extras["anchors"]
        terms = head_outputs["cls_logits"].new_zeros(len(anchors), 3, dtype=torch.float32)  # fp32 under AMP
        idx = present.nonzero(as_tuple=True)[0].tolist()
        if idx and len(targets) != len(anchors):
            raise ValueError(f"modality {self.det_name!r}: {len(targets)} targets for a batch of {len(anchors)}")
        for i in idx:
            target = self._check_det_target(targets[i], i, out.extras["image_size"], terms.device)
            parts = self.fcos.compute_loss(
                [target], {k: v[i : i + 1] for k, v in head_outputs.items()}, [anchors[i]],
                out.extras["num_anchors_per_level"],
            )
            terms[i] = torch.stack([parts["classification"], parts["bbox_regression"], parts["bbox_ctrness"]])
        return terms

    def _check_det_target(
        self, target: Any, i: int, size: tuple[int, int], device: torch.device
    ) -> dict[str, Tensor]:
        name = self.det_name
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"modality {name!r}: sample {i} label must be a dict with 'boxes' and 'labels'")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device)
        cls = torch.as_tensor(target["labels"], device=device)
        if boxes.dim() != 2 or boxes.shape[1] != 4 or cls.shape != (boxes.shape[0],):
            raise ValueError(
                f"modality {name!r}: sample {i} boxes must be [N, 4] with labels [N], got "
                f"{tuple(boxes.shape)} and {tuple(cls.shape)}"
            )
        if not torch.isfinite(boxes).all():
            raise ValueError(f"modality {name!r}: sample {i} boxes contain NaN or inf")
        h, w = size
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise ValueError(f"modality {name!r}: sample {i} has boxes with x2 <= x1 or y2 <= y1")
        tol = 1e-3
        if ((boxes[:, :2] < -tol).any() or (boxes[:, 2] > w + tol).any() or (boxes[:, 3] > h + tol).any()):
            raise ValueError(f"modality {name!r}: sample {i} has boxes outside the {w}x{h} image")
        if cls.is_floating_point() or ((cls < 0) | (cls >= self.num_det_classes)).any():
            raise ValueError(
                f"modality {name!r}: sample {i} class ids must be integers in [0, {self.num_det_classes})"
            )
        return {"boxes": boxes, "labels": cls.long()}

    @contextmanager
    def _inference(self, dropout: bool) -> Iterator[None]:
        """Eval mode (BatchNorm running stats, nothing updated), with the dense heads' dropout layers
        switched on when ``dropout``; every module's previous mode is restored afterwards."""
        modes = {m: m.training for m in self.modules()}
        try:
            self.eval()
            if dropout:
                for m in self.dense_heads.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd):
                        m.train(True)
            yield
        finally:
            for m, mode in modes.items():
                m.training = mode

    @torch.no_grad()
    def trunk(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] in [0, 1] -> the FPN maps P2..P7 [B, F, ., .] (eval mode)."""
        self._check_images(images)
        with self._inference(dropout=False):
            return self._pyramid(images)[1]

    @torch.no_grad()
    def heads(self, trunk: list[Tensor], size: tuple[int, int], given: Labels | None = None) -> dict[str, Tensor]:
        """FPN maps P2..P7 -> ``predict``'s outputs at ``size``: padded detections [B, K, 6 + C], dense
        activated [B, C, H, W] (eval mode; ``given`` ignored, as in ``forward``)."""
        size = (int(size[0]), int(size[1]))
        with self._inference(dropout=False):
            det_feats = trunk[1:]
            head_outputs = self.fcos.head(det_feats)
            shape = det_feats[0].new_empty((det_feats[0].shape[0], 0, *size))  # the anchor grid reads the size
            anchors = self.fcos.anchor_generator(ImageList(shape, [size] * shape.shape[0]), det_feats)
            per_level = [f.shape[-2] * f.shape[-1] for f in det_feats]
            final, _ = self._dense(self.fusion(trunk), size)
            final[self.det_name] = postprocess_detections(self.fcos, head_outputs, anchors, per_level, size,
                                                          self.config.max_detections)
            return self._activated({n: final[n] for n in self.modalities})

    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> dict[str, Tensor]:
        """Backbone + FPN + fusion once, each dense head ``n`` times with dropout on ->
        {dense modality: outputs [B, n, C, H, W]} as in ``final`` (logits; unit normals). Runs in eval
        mode apart from the heads' dropout, whatever the current mode; no grad. Detection has no MC
        samples (use the MTC consistency scores)."""
        if n < 1:
            raise ValueError(f"mc_samples: n must be >= 1, got {n}")
        self._check_images(images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        with torch.no_grad(), self._inference(dropout=True):
            fused = self.fusion(self._pyramid(images)[1])
            return {
                name: torch.stack([head(fused, size)[0] for _ in range(n)], dim=1)
                for name, head in self.dense_heads.items()
            }

    @torch.no_grad()
    def segment_crops(
        self, images: Tensor, boxes: list[Tensor], size: int = 64, modality: str | None = None, chunk: int = 32
    ) -> list[Tensor]:
        """Re-segment each box crop (MTC BoxMask): crop exactly the box from the image with
        ``roi_align`` (aligned, bilinear) to ``size`` x ``size``, run the network's segmentation path
        on the crops as images, softmax.

        images [B, 3, H, W] in [0, 1]; boxes: B tensors [N_i, 4] xyxy pixels -> B tensors
        [N_i, C, size, size] of probabilities (``modality``: which segmentation modality; default the
        first). The crop covers the box only; resize to the box size to paste it back. Runs in eval
        mode (deterministic) whatever the current mode; no grad.
        """
        seg = [n for n in self.dense_names if self.modalities[n].kind == "segmentation"]
        name = modality if modality is not None else (seg[0] if seg else None)
        if name is None or name not in seg:
            raise ValueError(f"segment_crops: {modality!r} is not a segmentation modality; have {seg}")
        self._check_images(images)
        if size < 32:
            raise ValueError(f"segment_crops: size must be >= 32, got {size}")
        if len(boxes) != images.shape[0]:
            raise ValueError(f"segment_crops: {len(boxes)} box lists for a batch of {images.shape[0]}")
        boxes = [torch.as_tensor(b, dtype=images.dtype, device=images.device).reshape(-1, 4) for b in boxes]
        for i, b in enumerate(boxes):
            if not torch.isfinite(b).all() or ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
                raise ValueError(f"segment_crops: image {i} has non-finite boxes or boxes with x2 < x1 / y2 < y1")
        counts = [b.shape[0] for b in boxes]
        channels = self.modalities[name].channels
        if sum(counts) == 0:
            return [images.new_zeros(0, channels, size, size) for _ in boxes]
        crops = roi_align(images, boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        probs = []
        with self._inference(dropout=False):
            for part in crops.split(chunk):
                fused = self.fusion(self._pyramid(part)[1])
                probs.append(self.dense_heads[name](fused, (size, size))[0].softmax(dim=1))
        return list(torch.cat(probs).split(counts))
