"""Multi-task strategies: MTAL-WACV (committee inconsistency x auto-encoder diversity) and MTC BoxMask.

MTAL-WACV (image-level; the paper labels all tasks of a chosen image):

- s_hat_k(x) = max_j L_k(initial_k, refined_{k,j}) (:func:`~mtal_models.strategies.consistency.committee_inconsistency`)
  for every modality with committee outputs; s_k = min-max over the current pool (eq. 2; refitted each
  round, unlike PartAL, as in the paper).
- div(x) = Euclidean distance of the auto-encoder code (512-d) of x's pooled concatenated head features
  to the nearest labelled image's code (eq. 3). The auto-encoder is trained (MSE) on the whole pool's
  features when ``select`` runs, i.e. after each training round. With no labelled image div = 1.
- ``mtal``: s(x) = div(x) · max_k s_k(x) (eq. 4); ``mtal_inconsistency``: max_k s_k(x);
  ``mtal_diversity``: div(x).
- ``Selection.weights[k]``: the per-sample loss weights of eq. 5 for the next training round (modalities
  without committee outputs have no entry: weight 1). ``loss_weights`` picks them:

  - ``"paper"`` (default): s_k(x), the pool min-max normalised inconsistency, as eq. 5 writes it.
  - ``"relative"``: s_k(x) / max_j s_j(x), i.e. eq. 5's per-task scaling *within* a selected image while
    the image's most informative task keeps weight 1 (an image whose s_k are all 0 gets 1 everywhere). The
    paper's weights are meant to rank a sample's tasks against each other ("selected for its high
    inconsistency score for one task despite having a significantly lower score for another", Sec. 3.2);
    pool min-max puts the 1 on the pool's single most inconsistent image, so on a small pool the selected
    images (chosen by div · max_k s_k) get weights far below the weight-1 initial set and their labels
    count for little at a fixed step budget.
  - ``"none"``: no weights (every label weight 1): the selection alone. Registered as ``mtal_unweighted``,
    the backend's default for dense projects: in the simulator's default run it reached 95% of the
    full-data score with 54% of Random's labels against 80% with the paper's weights (docs/results.md).

BoxMask (``boxmask``): MTC score of :mod:`~mtal_models.strategies.mtc`, image-level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from mtal_models.modalities import ModalitySpec
from mtal_models.strategies.base import BatchOutputs, Needs, PoolScores, Strategy
from mtal_models.strategies.baselines import require
from mtal_models.strategies.consistency import committee_inconsistency
from mtal_models.strategies.diversity import AutoEncoder, nearest_distance, pool_head_features, train_autoencoder
from mtal_models.strategies.mtc import det_to_seg_by_name, mtc_scores
from mtal_models.strategies.selection import Selection, check_labelled, select_images
from mtal_models.strategies.uncertainty import MinMaxNormalizer

__all__ = ["LOSS_WEIGHTS", "MTAL", "BoxMask", "loss_weights_from_scores", "resolve_det_seg"]

_INC = "inconsistency:"
Mode = Literal["combined", "inconsistency", "diversity"]
LossWeights = Literal["paper", "relative", "none"]
LOSS_WEIGHTS = ("paper", "relative", "none")


def loss_weights_from_scores(s: Mapping[str, Tensor], how: LossWeights = "paper") -> dict[str, Tensor]:
    """Per-sample loss weights (eq. 5) from the normalised inconsistencies s_k [N] (values in [0, 1]).

    ``"paper"``: s_k as is; ``"relative"``: s_k / max_j s_j per image (1 where every s_j is 0);
    ``"none"``: {} (no weights, i.e. 1). See the module docstring.
    """
    if how not in LOSS_WEIGHTS:
        raise ValueError(f"mtal: loss_weights must be one of {LOSS_WEIGHTS}, got {how!r}")
    if how == "none" or not s:
        return {}
    weights = {k: v.float() for k, v in s.items()}
    if how == "relative":
        top = torch.stack(list(weights.values()), dim=1).max(dim=1).values
        safe = torch.where(top > 0, top, torch.ones_like(top))
        weights = {k: torch.where(top > 0, v / safe, torch.ones_like(v)) for k, v in weights.items()}
    return weights


class MTAL(Strategy):
    """MTAL-WACV selection; ``mode`` picks the combined score or one of its two factors.

    ``loss_weights`` ("paper", "relative", "none") picks the eq. 5 loss weights of the selected images
    (module docstring); it does not change which images are selected.
    """

    def __init__(
        self,
        mode: Mode = "combined",
        code_dim: int = 512,
        ae_epochs: int = 20,
        ae_hidden: int = 1024,
        seed: int = 0,
        grid: int = 1,
        chunk: int = 4096,
        loss_weights: LossWeights = "paper",
    ) -> None:
        if loss_weights not in LOSS_WEIGHTS:
            raise ValueError(f"mtal: loss_weights must be one of {LOSS_WEIGHTS}, got {loss_weights!r}")
        self.loss_weights = loss_weights
        if mode not in ("combined", "inconsistency", "diversity"):
            raise ValueError(f"mtal: mode must be combined, inconsistency or diversity, got {mode!r}")
        self.mode = mode
        self.name = {"combined": "mtal", "inconsistency": "mtal_inconsistency", "diversity": "mtal_diversity"}[mode]
        if loss_weights == "none" and mode != "diversity":
            self.name += "_unweighted"
        self.code_dim, self.ae_epochs, self.ae_hidden = code_dim, ae_epochs, ae_hidden
        self.seed, self.grid, self.chunk = seed, grid, chunk
        self.autoencoder: AutoEncoder | None = None
        self.ae_history: list[float] = []
        uses_div = mode != "inconsistency"
        # unconditioned: the paper's PAD-Net has no GT substitution, and a labelled image scored through its
        # own encoded labels runs a path that training never fits (a substituted modality has no loss), which
        # gave labelled images inconsistencies ~4x the unlabelled maximum and distorted the pool min-max
        self.needs = Needs(
            committee=mode != "diversity", embeddings="head" if uses_div else None, labelled=uses_div,
            conditioned=False,
        )

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        scores: PoolScores = {}
        if self.needs.committee:
            for k, spec in out.modalities.items():
                if spec.dense and k in out.refined and out.refined[k] and k in out.initial:
                    scores[_INC + k] = committee_inconsistency(spec, out.initial[k], out.refined[k])
            if not scores:
                raise ValueError(f"{self.name}: the network gave no committee (initial + refined) outputs")
        if self.needs.embeddings == "head":
            if out.head_features is None:
                raise ValueError(f"{self.name}: needs head features [B, F, h, w] (out.head_features)")
            scores["head"] = pool_head_features(out.head_features, self.grid)
        return scores

    def fit_autoencoder(self, features: Tensor) -> AutoEncoder:
        """Train the diversity auto-encoder on features [N, F] (called by ``select`` each round)."""
        self.autoencoder, self.ae_history = train_autoencoder(
            features, epochs=self.ae_epochs, seed=self.seed, code_dim=self.code_dim, hidden=self.ae_hidden
        )
        return self.autoencoder

    def diversity(self, features: Tensor, labelled_any: Tensor) -> Tensor:
        """div [N]: code distance to the nearest labelled image (1 everywhere if none is labelled)."""
        ae = self.fit_autoencoder(features)
        with torch.no_grad():
            codes = torch.cat([ae.encode(c) for c in features.float().split(4096)])
        if not labelled_any.any():
            return torch.ones(features.shape[0])
        return nearest_distance(codes, codes[labelled_any], self.chunk, self.chunk)

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        n = check_labelled(labelled)
        inc_keys = [k for k in pool if k.startswith(_INC)]
        weights: dict[str, Tensor] = {}
        score = torch.ones(n)
        if self.needs.committee:
            if not inc_keys:
                raise ValueError(f"{self.name}: pool has no committee inconsistency scores")
            require(self.name, pool, inc_keys, labelled)
            unknown = sorted(k[len(_INC):] for k in inc_keys if k[len(_INC):] not in labelled)
            if unknown:
                raise ValueError(f"{self.name}: inconsistency for modalities {unknown} without labelled masks")
            raw = {k[len(_INC):]: pool[k].float() for k in inc_keys}
            s_k = {k: v.float() for k, v in MinMaxNormalizer(clip=True).fit(raw).transform(raw).items()}
            score = torch.stack(list(s_k.values()), dim=1).max(dim=1).values
            weights = loss_weights_from_scores(s_k, self.loss_weights)
        if self.needs.embeddings == "head":
            require(self.name, pool, ["head"], labelled)
            any_labelled = torch.stack(list(labelled.values()), dim=1).any(dim=1)
            score = score * self.diversity(pool["head"], any_labelled).float()
        sel = select_images(score, labelled, budget)
        sel.weights = weights
        return sel


def resolve_det_seg(modalities: Mapping[str, ModalitySpec], det: str | None, seg: str | None) -> tuple[str, str]:
    """Names of the detection and segmentation modalities (given, or the only one of each kind)."""
    names = []
    for want, kind in ((det, "detection"), (seg, "segmentation")):
        if want is not None:
            if want not in modalities or modalities[want].kind != kind:
                raise ValueError(f"boxmask: {want!r} is not a {kind} modality of {sorted(modalities)}")
            names.append(want)
            continue
        found = [k for k, s in modalities.items() if s.kind == kind]
        if len(found) != 1:
            raise ValueError(f"boxmask: need exactly one {kind} modality (or name it), found {found}")
        names.append(found[0])
    return names[0], names[1]


class BoxMask(Strategy):
    """MTC det+seg consistency (higher = more inconsistent = label first); crops re-segmented by the net.

    class_names: modality -> class names by class id (the backend's labeling config, a dataset's class
    table); the detection classes are matched to segmentation classes **by name**
    (:func:`~mtal_models.strategies.mtc.det_to_seg_by_name`), and a detection class with no segmentation
    class of that name adds no S_loc/S_cls. det_to_seg: long [C_det] explicit mapping instead (-1 = none).
    With neither, c -> c + 1 (segmentation = background + the detection classes in order).
    min_score: detections below this confidence are ignored. Crops from the net are logits.
    """

    name = "boxmask"

    def __init__(
        self,
        tau: float = 0.3,
        det_to_seg: Tensor | None = None,
        det: str | None = None,
        seg: str | None = None,
        min_score: float = 0.0,
        crop_size: int = 64,
        class_names: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"boxmask: tau must be in [0, 1), got {tau}")
        if det_to_seg is not None and class_names is not None:
            raise ValueError("boxmask: give det_to_seg or class_names, not both")
        self.tau, self.det, self.seg, self.min_score = tau, det, seg, min_score
        self.det_to_seg = None if det_to_seg is None else torch.as_tensor(det_to_seg, dtype=torch.long)
        self.class_names = None if class_names is None else {k: list(v) for k, v in class_names.items()}
        self.needs = Needs(crops=True, crop_size=crop_size, crop_source=det)

    def mapping(self, modalities: Mapping[str, ModalitySpec]) -> tuple[str, str, Tensor | None]:
        """(detection modality, segmentation modality, det_to_seg long [C_det] or None for c -> c + 1)."""
        det, seg = resolve_det_seg(modalities, self.det, self.seg)
        n_det = modalities[det].channels
        mapping = self.det_to_seg
        if self.class_names is not None:
            names = {m: self.class_names.get(m) for m in (det, seg)}
            bad = [m for m, v in names.items() if v is None or len(v) != modalities[m].channels]
            if bad:
                raise ValueError(f"boxmask: class_names must name every class of {bad} "
                                 f"(channels {[modalities[m].channels for m in bad]}), got {self.class_names}")
            mapping = det_to_seg_by_name(names[det], names[seg])
        if mapping is not None and mapping.numel() != n_det:
            raise ValueError(f"boxmask: det_to_seg has {mapping.numel()} entries, {det!r} has {n_det} classes")
        return det, seg, mapping

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        det, seg, mapping = self.mapping(out.modalities)
        if det not in out.final or seg not in out.final:
            raise ValueError(f"boxmask: outputs lack {det!r} or {seg!r}; have {sorted(out.final)}")
        return mtc_scores(out.final[seg], out.final[det], out.crops, mapping, self.tau, self.min_score)

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        require(self.name, pool, ["score"], labelled)
        return select_images(pool["score"].flatten().float(), labelled, budget)
