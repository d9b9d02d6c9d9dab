"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): the cold-start selection on self-supervised features.

With few labels, the most useful images are the *typical* ones, spread over the data's modes. TypiClust
clusters the pool's (L2-normalised) embeddings into |L| + B clusters with k-means, then repeatedly takes
the largest cluster with the fewest labelled images and, in it, the most typical unlabelled image:

    typicality(x) = 1 / (mean distance of x to its K nearest neighbours in its cluster + 1e-5),
    K = min(k_nn, cluster size // 2)  (paper: 20)

Clusters of at most ``min_cluster_size`` points (paper: 5) are not visited, so isolated outliers come
last. Following the authors' code, clusters are ordered once (fewest labelled first, then largest) and
visited in turn.

Ours, and why:

- A full ranking, not only B picks: Label Studio serves the whole pool by score, so the visit goes on
  round-robin (the r-th most typical image of every cluster in round r) until every unlabelled image is
  placed; images of the small clusters follow, by typicality over the whole pool. ``scores`` decrease
  along that order (higher = label first), so a sort by score gives the same order.
- Typicality is computed once per cluster over its unlabelled images; the authors recompute it after
  each pick within a cluster (which only matters for the second pick onwards in a cluster).
- The number of clusters is |L| + ``batch`` (``batch`` defaults to the budget), at most ``max_clusters``
  (paper: 500) and at most (unlabelled images) / ``min_cluster_size``: the backend asks for a ranking of
  every task (budget = pool size), where |L| + B clusters would all be singletons; pass ``batch`` = the
  first batch an annotator labels (default budget).
- Features: the network's pooled last backbone stage (``Needs(embeddings="pooled")``), which the
  self-supervised start (:mod:`mtal_models.training.pretrain`) trains for view invariance; the paper
  uses SimCLR features of the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtal_models.strategies.base import BatchOutputs, Needs, PoolScores, Strategy
from mtal_models.strategies.baselines import require
from mtal_models.strategies.selection import Selection, check_budget, select_images

__all__ = ["TypiClust", "kmeans", "typicality", "typiclust_order"]


def kmeans(features: Tensor, k: int, seed: int = 0, iters: int = 50, n_init: int = 3) -> Tensor:
    """Cluster ids [N] (int64) of features [N, D]: ``n_init`` runs of k-means++ seeding (one seeded
    generator) and Lloyd iterations until the assignment stops changing (at most ``iters``); the run with
    the lowest within-cluster sum of squares wins. Deterministic for a seed."""
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"k-means features must be [N, D] with N >= 1, got {tuple(features.shape)}")
    x = features.float()
    k = max(1, min(int(k), x.shape[0]))
    gen = torch.Generator().manual_seed(seed)
    runs = [_lloyd(x, _kmeanspp(x, k, gen), iters) for _ in range(max(1, n_init))]
    return min(runs, key=lambda run: run[1])[0]


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance to the nearest one."""
    centres = x[torch.randint(x.shape[0], (1,), generator=gen)]
    d2 = torch.cdist(x, centres).squeeze(1).square()
    while centres.shape[0] < k and float(d2.sum()) > 0:
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=gen)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, torch.cdist(x, x[pick]).squeeze(1).square())
    return centres


def _lloyd(x: Tensor, centres: Tensor, iters: int) -> tuple[Tensor, float]:
    """(assignment [N], within-cluster sum of squares) after Lloyd iterations from ``centres``."""
    assign = torch.full((x.shape[0],), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=centres.shape[0]).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return assign, float((x - centres[assign]).square().sum())


def typicality(features: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """1 / (mean Euclidean distance to the ``k`` nearest other points + 1e-5) for features [N, D] -> [N].

    ``k`` is capped at N - 1; a single point gets typicality 1e5 (no neighbour). Rows are processed in
    chunks (memory ``chunk * N`` floats)."""
    n = features.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        return torch.full((n,), 1e5)
    x = features.float()
    out = torch.empty(n)
    for r in range(0, n, chunk):
        d = torch.cdist(x[r : r + chunk], x)
        # the k + 1 smallest include the point itself (distance 0)
        out[r : r + chunk] = d.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(dim=1)
    return 1.0 / (out + 1e-5)


def typiclust_order(
    features: Tensor,
    labelled: Tensor,
    n_clusters: int,
    k_nn: int = 20,
    min_cluster_size: int = 5,
    seed: int = 0,
) -> Tensor:
    """Every unlabelled image in TypiClust's order (see the module docstring): [N_unlabelled] indices.

    features [N, D] (used as given; :class:`TypiClust` L2-normalises), labelled bool [N]."""
    clusters = kmeans(features, n_clusters, seed)
    free = ~labelled
    visits = []  # (labelled count, -size, cluster id) of the clusters taken part in the round-robin
    for c in torch.unique(clusters).tolist():
        members = clusters == c
        if int(members.sum()) > min_cluster_size:
            visits.append((int((members & labelled).sum()), -int(members.sum()), c))
    queues = []
    for _, _, c in sorted(visits):
        idx = (free & (clusters == c)).nonzero(as_tuple=True)[0]
        if idx.numel():
            typ = typicality(features[idx], max(1, min(k_nn, idx.numel() // 2)))
            queues.append(idx[torch.sort(typ, descending=True, stable=True).indices].tolist())
    order: list[int] = []
    for r in range(max((len(q) for q in queues), default=0)):
        order.extend(q[r] for q in queues if r < len(q))
    placed = torch.zeros_like(free)
    placed[order] = True
    rest = (free & ~placed).nonzero(as_tuple=True)[0]
    if rest.numel():
        typ = typicality(features, min(k_nn, features.shape[0] - 1))[rest]
        order.extend(rest[torch.sort(typ, descending=True, stable=True).indices].tolist())
    return torch.tensor(order, dtype=torch.long)


class TypiClust(Strategy):
    """Typical images of the largest uncovered clusters first (cold start; see the module docstring).

    batch: images the first ranking should cover with distinct clusters (None = the budget); k_nn,
    min_cluster_size, max_clusters: the paper's 20, 5, 500; seed: k-means seeding.
    Scores: 1 for the first image of the order down to 1/M for the last of the M images with an unlabelled
    modality, 0 for fully labelled images.
    """

    name = "typiclust"
    needs = Needs(embeddings="pooled", labelled=True, conditioned=False)

    def __init__(
        self, batch: int | None = None, k_nn: int = 20, min_cluster_size: int = 5, max_clusters: int = 500,
        seed: int = 0,
    ) -> None:
        if batch is not None and batch < 1 or k_nn < 1 or min_cluster_size < 0 or max_clusters < 1:
            raise ValueError(f"typiclust: invalid options batch={batch}, k_nn={k_nn}, "
                             f"min_cluster_size={min_cluster_size}, max_clusters={max_clusters}")
        self.batch, self.k_nn, self.min_cluster_size = batch, k_nn, min_cluster_size
        self.max_clusters, self.seed = max_clusters, seed

    def score_batch(self, out: BatchOutputs) -> PoolScores:
        if out.pooled is None or out.pooled.dim() != 2:
            raise ValueError(f"{self.name}: needs pooled backbone features [B, D] (out.pooled)")
        return {"pooled": out.pooled.float()}

    def n_clusters(self, n_labelled: int, n_unlabelled: int, budget: int) -> int:
        """|L| + batch, capped by ``max_clusters`` and by n_unlabelled / min_cluster_size (at least 1)."""
        wanted = n_labelled + (self.batch or max(1, budget))
        return max(1, min(wanted, self.max_clusters, n_unlabelled // max(1, self.min_cluster_size)))

    def select(self, pool: Mapping[str, Tensor], labelled: Mapping[str, Tensor], budget: int) -> Selection:
        n = require(self.name, pool, ["pooled"], labelled)
        check_budget(budget)
        feats = pool["pooled"]
        if feats.dim() != 2 or not torch.isfinite(feats).all():
            raise ValueError(f"{self.name}: pooled features must be finite [N, D], got {tuple(feats.shape)}")
        table = torch.stack(list(labelled.values()), dim=1)
        # an image with any modality labelled covers its cluster; its other modalities come after every
        # unlabelled image (TypiClust has nothing to say about completing an image)
        covered, unfinished = table.any(dim=1), (~table).any(dim=1)
        k = self.n_clusters(int(covered.sum()), int((~covered).sum()), budget)
        order = typiclust_order(F.normalize(feats.float(), dim=1), covered, k, self.k_nn, self.min_cluster_size,
                                self.seed)
        order = torch.cat([order, (covered & unfinished).nonzero(as_tuple=True)[0]])
        scores = torch.zeros(n)
        if order.numel():
            scores[order] = torch.arange(order.numel(), 0, -1, dtype=torch.float32) / order.numel()
        return select_images(scores, labelled, budget, order=order)
