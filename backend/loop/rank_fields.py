"""From a strategy's selection to what Label Studio needs: scores, requested modalities, clusters.

Pure functions on tensors, tested without a model or a server.

- **Score** (Label Studio's convention, low = label first): candidates are ordered by the strategy's
  image score (higher = more informative; ties keep pool order) and the task at rank ``r`` of ``M``
  gets ``r / M``, in [0, 1). Ranks, not raw scores, because raw scores of different strategies and
  rounds are not comparable, and Label Studio only sorts. The ranking also stores each candidate's
  raw strategy score and its certainty (``1 - u``), which /predict uses to place a task the ranking
  does not hold on the same scale; labelled tasks score 1 (:mod:`backend.serving.task_score`).
- **Requested modalities** (PartAL pairs): a pair strategy's chosen pairs for the task; a candidate
  with no chosen pair asks for its single best-scoring unlabelled modality, so every task says what
  is most worth labelling. Image strategies ask for every unlabelled modality.
- **Cluster**: k-means on the pooled backbone features; Label Studio's ``/next`` prefers clusters the
  annotator has solved least.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtal_models.strategies import Selection

__all__ = ["kmeans_clusters", "ls_scores", "requested_modalities"]


def ls_scores(image_scores: Tensor, candidates: Sequence[int]) -> dict[int, float]:
    """image_scores [N] (higher = label first) -> {pool index: LS score in [0, 1)} for ``candidates``."""
    if image_scores.dim() != 1:
        raise ValueError(f"image scores must be [N], got {tuple(image_scores.shape)}")
    if not candidates:
        return {}
    idx = torch.as_tensor(list(candidates), dtype=torch.long)
    values = torch.nan_to_num(image_scores[idx].double(), nan=float("-inf"))
    order = torch.argsort(-values, stable=True)
    m = len(candidates)
    return {int(idx[i]): rank / m for rank, i in enumerate(order.tolist())}


def requested_modalities(
    selection: Selection,
    unit: str,
    labelled: Mapping[str, Tensor],
    candidates: Sequence[int],
    requestable: Sequence[str],
) -> dict[int, list[str]]:
    """{pool index: modalities to ask for} for every candidate (see module docstring).

    labelled: modality -> bool [N]; requestable: modalities annotators can label (segmentation and
    detection tags), in config order.
    """
    chosen = selection.by_image()
    out: dict[int, list[str]] = {}
    for i in candidates:
        open_ = [m for m in requestable if not bool(labelled[m][i])]
        if not open_:
            continue
        if unit != "pair":
            out[i] = open_
        elif chosen.get(i):
            out[i] = [m for m in chosen[i] if m in open_] or open_[:1]
        elif selection.pair_scores:
            out[i] = [max(open_, key=lambda m: float(selection.pair_scores.get(m, torch.zeros(i + 1))[i]))]
        else:
            out[i] = open_[:1]
    return out


def kmeans_clusters(features: Tensor, k: int, seed: int = 0, iters: int = 25) -> Tensor:
    """Cluster ids [N] (int64) of features [N, D] by k-means (k-means++ seeding, Lloyd iterations)."""
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be [N, D] with N >= 1, got {tuple(features.shape)}")
    x = torch.nan_to_num(features.float())
    n = x.shape[0]
    k = max(1, min(int(k), n))
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: next centre with probability ~ squared distance
        d2 = torch.cdist(x, centres).min(dim=1).values.square()
        if float(d2.sum()) <= 0:
            break
        centres = torch.cat([centres, x[torch.multinomial(d2 / d2.sum(), 1, generator=gen)]])
    assign = torch.zeros(n, dtype=torch.long)
    for it in range(iters):
        new = torch.cdist(x, centres).argmin(dim=1)
        if it > 0 and torch.equal(new, assign):
            break
        assign = new
        for c in range(centres.shape[0]):
            members = x[assign == c]
            if members.shape[0]:
                centres[c] = members.mean(dim=0)
    return assign
