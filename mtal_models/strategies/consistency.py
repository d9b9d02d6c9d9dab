"""Consistency scoring: MTAL-WACV committee inconsistency and EquAL-style flip inconsistency.
Pure functions on raw network outputs; all return per-image values [B], higher = less consistent.

Committee (MTAL-WACV eq. 1): ``s_hat_k = max_j L_k(initial_k, refined_{k,j})`` with the modality's
own loss, the *initial* prediction acting as the target (the paper's L_k(y_hat_k, y_hat_kj)):

- segmentation: cross-entropy of refined logits against argmax(initial) (hard target: the kind's
  training loss takes class ids);
- binary: BCE of refined logits against (sigmoid(initial) >= 0.5);
- depth: mean |refined - initial| (L1, the depth loss, without its "target <= 0 = invalid" mask,
  since a prediction is never missing);
- normals: mean (1 - cos) between refined and initial.

Flip (EquAL, Golestaneh & Kitani): the prediction for the image against the prediction for its
horizontal mirror, flipped back (:func:`unflip`, normals also negate x). Categorical: symmetric KL
divergence per pixel, ½(KL(p‖q) + KL(q‖p)) (symmetric so neither view is privileged); depth: mean
|d - d'|; normals: mean (1 - cos).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtal_models.modalities import ModalitySpec

__all__ = ["committee_inconsistency", "flip_inconsistency", "prediction_discrepancy", "symmetric_kl", "unflip"]

_EPS = 1e-8


def prediction_discrepancy(spec: ModalitySpec, pred: Tensor, reference: Tensor) -> Tensor:
    """Per-sample loss [B] of raw ``pred`` [B, C, H, W] against raw ``reference`` used as the target."""
    spec.check_prediction(pred)
    if reference.shape != pred.shape:
        raise ValueError(
            f"modality {spec.name!r}: committee output {tuple(pred.shape)} vs initial {tuple(reference.shape)}"
        )
    ref = reference.detach()
    everyone = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
    if spec.kind == "segmentation":
        return spec.loss(pred, ref.argmax(dim=1), everyone)
    if spec.kind == "binary":
        return spec.loss(pred, (ref >= 0).float(), everyone)  # logit >= 0 <=> probability >= 0.5
    if spec.kind == "depth":
        return (pred - ref).abs().flatten(1).mean(dim=1)
    return (1 - F.cosine_similarity(pred, ref, dim=1, eps=_EPS)).flatten(1).mean(dim=1)


def committee_inconsistency(spec: ModalitySpec, initial: Tensor, refined: Mapping[str, Tensor]) -> Tensor:
    """s_hat_k [B] = max over committee members j of L_k(initial_k, refined_{k,j})."""
    if not refined:
        raise ValueError(f"modality {spec.name!r}: no refined committee outputs (forward with committee=True)")
    losses = [prediction_discrepancy(spec, r, initial) for r in refined.values()]
    return torch.stack(losses, dim=0).max(dim=0).values


def unflip(spec: ModalitySpec, pred: Tensor) -> Tensor:
    """Map a dense prediction [B, C, H, W] of the mirrored image back to the original frame."""
    spec.check_prediction(pred)
    back = pred.flip(-1)
    if spec.kind == "normals":
        back = torch.cat([-back[:, :1], back[:, 1:]], dim=1)  # x points right in the original frame
    return back


def symmetric_kl(p: Tensor, q: Tensor, dim: int = 1) -> Tensor:
    """½(KL(p‖q) + KL(q‖p)) along ``dim`` for probability tensors of equal shape."""
    lp, lq = p.clamp_min(_EPS).log(), q.clamp_min(_EPS).log()
    return 0.5 * ((p - q) * (lp - lq)).sum(dim=dim)


def flip_inconsistency(spec: ModalitySpec, pred: Tensor, flipped_back: Tensor) -> Tensor:
    """Per-image [B] inconsistency between raw ``pred`` and the un-flipped raw prediction of the mirror."""
    spec.check_prediction(pred)
    spec.check_prediction(flipped_back)
    if pred.shape != flipped_back.shape:
        raise ValueError(
            f"modality {spec.name!r}: flipped prediction {tuple(flipped_back.shape)} vs {tuple(pred.shape)}"
        )
    if spec.categorical:
        p, q = spec.activate(pred), spec.activate(flipped_back)
        if spec.kind == "binary":
            p, q = torch.cat([1 - p, p], dim=1), torch.cat([1 - q, q], dim=1)
        return symmetric_kl(p, q).flatten(1).mean(dim=1)
    if spec.kind == "depth":
        return (pred - flipped_back).abs().flatten(1).mean(dim=1)
    return (1 - F.cosine_similarity(pred, flipped_back, dim=1, eps=_EPS)).flatten(1).mean(dim=1)
