"""MTPSL cross-task consistency for partially labelled dense tasks (Li, Liu & Bilen, CVPR 2022).

For a sample whose dense modality ``s`` is unlabelled and ``t`` is labelled, the prediction ŷ^s and
the ground truth y^t are mapped into a joint pairwise space by ONE mapping network shared by all pairs,
conditioned on the (input task, other task) pair with FiLM (γ, β from a one-hot over the K(K−1)
ordered pairs — the paper's asymmetric K×K matrix A without its zero diagonal). Eq. (4):

    L = 1/|U_n| Σ_{s∈U_n, t∈T_n} [ 1 − cos(m^{s→st}(ŷ^s), m^{t→st}(y^t))
                                   + R(f(x), m^{s→st}(ŷ^s)) + R(f(x), m^{t→st}(y^t)) ]

with R the cosine distance between the spatially averaged embedding and the (detached) backbone
feature f(x): ``out.pooled`` [B, D], or the spatial mean of ``out.head_features`` when a network has no
pooled features. Choices made here: the pair terms are averaged over the sample's pairs (the paper's
1/|U_n| also folds R into the pair sum), the batch loss is the mean over samples having at least one
pair, and the mapping works at a reduced resolution (``work_size``) to stay cheap.
Detection is never part of a pair (dense modalities only).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels, MultiTaskOutput

__all__ = ["MTPSLMapper", "encode_label", "encode_prediction", "feature_target"]


def encode_prediction(spec: ModalitySpec, pred: Tensor) -> Tensor:
    """Raw prediction [B, C, H, W] -> mapping input [B, C, H, W] (probabilities / unit normals / depth)."""
    if spec.kind == "normals":
        return F.normalize(pred, dim=1)
    return spec.activate(pred)


def encode_label(spec: ModalitySpec, label: Tensor, channels_hw: tuple[int, int]) -> Tensor:
    """Ground truth -> mapping input [B, C, H, W]; invalid / ignored pixels become zeros."""
    if spec.kind == "segmentation":
        valid = label != spec.ignore_index
        onehot = F.one_hot(torch.where(valid, label, 0).long(), spec.channels).permute(0, 3, 1, 2)
        return onehot.float() * valid[:, None].float()
    if spec.kind == "binary":
        return torch.where(label == spec.ignore_index, 0.0, label.float())
    if spec.kind == "depth":
        return label.float().clamp_min(0)
    return label.float()


def feature_target(out: MultiTaskOutput) -> Tensor:
    """The detached image feature f(x) [B, D] the mapping outputs are regularised towards."""
    if out.pooled is not None:
        return out.pooled.detach().flatten(1)
    if out.head_features is not None:
        return out.head_features.detach().mean(dim=(2, 3))
    raise ValueError("MTPSL needs the network's pooled or head features; MultiTaskOutput has neither")


class MTPSLMapper(nn.Module):
    """The shared conditional mapping network.

    Per dense modality a 3×3 input conv (C_t → ``width``), then a shared trunk of ``depth`` stride-2
    conv blocks each followed by FiLM (h ← γ(A) ⊙ h + β(A), γ and β one linear layer each from the
    pair one-hot A), and a 1×1 conv to ``embed_dim`` = the feature size D.
    Input maps are resized to at most ``work_size`` pixels on their longer side first.
    """

    def __init__(
        self,
        modalities: Mapping[str, ModalitySpec],
        embed_dim: int,
        width: int = 32,
        depth: int = 2,
        work_size: int = 64,
    ) -> None:
        super().__init__()
        self.names = [n for n, s in modalities.items() if s.dense]
        if len(self.names) < 2:
            raise ValueError(f"MTPSL needs >= 2 dense modalities, got {self.names}")
        if embed_dim < 1:
            raise ValueError(f"MTPSL embed_dim must be >= 1, got {embed_dim}")
        self.specs = {n: modalities[n] for n in self.names}
        self.work_size = work_size
        self.pairs = [(a, b) for a in self.names for b in self.names if a != b]
        self._pair_index = {p: i for i, p in enumerate(self.pairs)}
        self.inputs = nn.ModuleDict(
            {n: nn.Conv2d(s.channels, width, 3, padding=1) for n, s in self.specs.items()}
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)) for _ in range(depth)
        )
        self.gammas = nn.ModuleList(nn.Linear(len(self.pairs), width) for _ in range(depth))
        self.betas = nn.ModuleList(nn.Linear(len(self.pairs), width) for _ in range(depth))
        for g, b in zip(self.gammas, self.betas, strict=True):
            nn.init.normal_(g.weight, std=0.02)
            nn.init.ones_(g.bias)
            nn.init.zeros_(b.weight)
            nn.init.zeros_(b.bias)
        self.out = nn.Conv2d(width, embed_dim, 1)

    def embed(self, x: Tensor, task: str, other: str) -> Tensor:
        """x [B, C_task, H, W] (encoded) -> joint-space map [B, D, h, w] for the pair (task, other)."""
        if task not in self.inputs or (task, other) not in self._pair_index:
            raise ValueError(f"MTPSL: unknown modality pair ({task!r}, {other!r}); dense modalities: {self.names}")
        h, w = x.shape[-2:]
        scale = self.work_size / max(h, w)
        if scale < 1:
            x = F.interpolate(x, scale_factor=scale, mode="area")
        code = x.new_zeros(1, len(self.pairs))
        code[0, self._pair_index[(task, other)]] = 1.0
        h_ = self.inputs[task](x)
        for block, gamma, beta in zip(self.blocks, self.gammas, self.betas, strict=True):
            h_ = block(h_)
            h_ = gamma(code)[:, :, None, None] * h_ + beta(code)[:, :, None, None]
        return self.out(h_)

    def loss(self, out: MultiTaskOutput, labels: Labels) -> Tensor:
        """Scalar MTPSL term for a batch (a differentiable 0 when no sample has a (missing, present) pair).

        out.final[s]: raw predictions [B, C_s, H, W]; labels: the batch's real labels and presence.
        """
        ref = next(iter(out.final.values()))
        b = ref.shape[0]
        feature = None
        total = ref.new_zeros(b)
        count = ref.new_zeros(b)
        present = {n: labels.is_present(n, b).to(ref.device) for n in self.names}
        for s, t in self.pairs:
            idx = (~present[s] & present[t]).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            if s not in out.final:
                raise ValueError(f"MTPSL: the network gave no prediction for modality {s!r}")
            if feature is None:
                feature = feature_target(out).float()
            pred = out.final[s][idx].float()
            gt = labels.values[t][idx.to(labels.values[t].device)].to(ref.device)
            self.specs[t].check_target(gt, pred.new_empty(len(idx), self.specs[t].channels, *pred.shape[-2:]))
            a = self.embed(encode_prediction(self.specs[s], pred), s, t)
            g = self.embed(encode_label(self.specs[t], gt, tuple(pred.shape[-2:])), t, s)
            if feature.shape[1] != a.shape[1]:
                raise ValueError(f"MTPSL: embed_dim {a.shape[1]} != network feature size {feature.shape[1]}")
            f = feature[idx]
            term = (1 - F.cosine_similarity(a, g, dim=1)).mean(dim=(1, 2))
            term = term + (1 - F.cosine_similarity(a.mean(dim=(2, 3)), f, dim=1))
            term = term + (1 - F.cosine_similarity(g.mean(dim=(2, 3)), f, dim=1))
            total = total.index_add(0, idx, term)
            count = count.index_add(0, idx, torch.ones_like(term))
        has = count > 0
        if not has.any():
            return total.sum() * 0.0
        return (total[has] / count[has]).mean()
