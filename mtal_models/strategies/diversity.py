"""Diversity scoring: chunked nearest-labelled distances, k-center greedy (CoreSet), the MTAL-WACV
auto-encoder over concatenated head features. Pure functions on tensors.

Distances are Euclidean (MTAL-WACV found it best; CoreSet uses it too). The distance matrix of a
pool of N against M labelled points is never materialised: rows and columns are processed in
chunks with ``torch.cdist`` and reduced to a running minimum, so peak extra memory is
``row_chunk * col_chunk * 4`` bytes (64 MB with the defaults) whatever N and M are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AutoEncoder", "kcenter_greedy", "nearest_distance", "pool_head_features", "train_autoencoder"]


def nearest_distance(points: Tensor, refs: Tensor, row_chunk: int = 4096, col_chunk: int = 4096) -> Tensor:
    """min_j ||points_i - refs_j||_2 for every point: [N] from points [N, D] and refs [M, D].

    M = 0 gives +inf everywhere (no labelled sample yet). Memory is bounded by the chunk sizes.
    """
    if points.dim() != 2 or refs.dim() != 2 or points.shape[1] != refs.shape[1]:
        raise ValueError(f"points [N, D] and refs [M, D] must share D, got {tuple(points.shape)}, {tuple(refs.shape)}")
    if row_chunk < 1 or col_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {row_chunk}, {col_chunk}")
    out = torch.full((points.shape[0],), float("inf"), dtype=points.dtype, device=points.device)
    for r in range(0, points.shape[0], row_chunk):
        rows = points[r : r + row_chunk]
        best = out[r : r + row_chunk]
        for c in range(0, refs.shape[0], col_chunk):
            d = torch.cdist(rows, refs[c : c + col_chunk], compute_mode="use_mm_for_euclid_dist")
            torch.minimum(best, d.min(dim=1).values, out=best)
            del d
    return out


def kcenter_greedy(
    features: Tensor,
    centres: Tensor,
    candidates: Tensor,
    budget: int,
    costs: Tensor | None = None,
    chunk: int = 4096,
) -> tuple[Tensor, list[int]]:
    """k-center greedy (Sener & Savarese): repeatedly pick the candidate farthest from all centres.

    features [N, D]; centres, candidates: bool [N] (labelled images / pickable images); costs: int [N]
    labels an image costs (default 1); a pick whose cost exceeds what is left is skipped.
    Returns (initial distance to the nearest centre [N], picks in order). With no centre at all the
    first pick is the candidate farthest from the candidates' mean (deterministic), and the returned
    distances are distances to that mean.
    """
    n = features.shape[0]
    costs = torch.ones(n, dtype=torch.long) if costs is None else costs
    feats = features.float()
    if centres.any():
        dist = nearest_distance(feats, feats[centres], chunk, chunk)
    else:
        mean = feats[candidates].mean(dim=0, keepdim=True) if candidates.any() else feats.mean(0, keepdim=True)
        dist = torch.cdist(feats, mean).squeeze(1)
    initial = dist.clone()
    open_ = candidates.clone()
    picks: list[int] = []
    left = budget
    while left > 0 and open_.any():
        masked = torch.where(open_, dist, torch.full_like(dist, float("-inf")))
        i = int(torch.argmax(masked))  # ties: first index
        open_[i] = False
        if int(costs[i]) > left:
            continue
        picks.append(i)
        left -= int(costs[i])
        d_new = torch.cdist(feats, feats[i : i + 1]).squeeze(1)
        dist = d_new if not picks[:-1] and not centres.any() else torch.minimum(dist, d_new)
    return initial, picks


def pool_head_features(head_features: Tensor, grid: int = 1) -> Tensor:
    """[B, F, h, w] concatenated head feature maps -> [B, F * grid * grid] (adaptive average pooling)."""
    if head_features.dim() != 4:
        raise ValueError(f"head_features must be [B, F, h, w], got {tuple(head_features.shape)}")
    return nn.functional.adaptive_avg_pool2d(head_features.float(), grid).flatten(1)


class AutoEncoder(nn.Module):
    """MLP auto-encoder over feature vectors: [B, F] -> code [B, code_dim] -> reconstruction [B, F].

    Inputs are standardised with the mean/std of the training features (stored as buffers)."""

    def __init__(self, in_features: int, code_dim: int = 512, hidden: int = 1024) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, in_features))
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def encode(self, x: Tensor) -> Tensor:
        """[B, F] raw features -> [B, code_dim]."""
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"auto-encoder expects [B, {self.mean.shape[0]}] features, got {tuple(x.shape)}")
        return self.encoder(self.standardise(x))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of the standardised input [B, F]."""
        return self.decoder(self.encode(x))


def train_autoencoder(
    features: Tensor,
    epochs: int = 20,
    seed: int = 0,
    code_dim: int = 512,
    hidden: int = 1024,
    batch_size: int = 256,
    lr: float = 1e-3,
) -> tuple[AutoEncoder, list[float]]:
    """Train an :class:`AutoEncoder` with MSE on features [N, F] (MTAL-WACV §3.1.2: after each round).

    Deterministic for a given seed on CPU. Returns the model (eval mode) and the mean loss per epoch."""
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"auto-encoder features must be a non-empty [N, F] tensor, got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("auto-encoder features contain NaN/inf")
    x = features.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoEncoder(x.shape[1], code_dim, hidden)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    model.train()
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            xb = x[idx]
            loss = nn.functional.mse_loss(model(xb), model.standardise(xb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / x.shape[0])
    return model.eval(), history
