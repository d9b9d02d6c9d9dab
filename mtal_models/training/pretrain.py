"""Self-supervised pretraining of a network's trunk on the project's unlabelled images (cold start).

Objective: dense SimSiam, as in DenseSiam's pixel similarity (Zhang et al., ECCV 2022) and the
SimSiam objective (Chen & He, CVPR 2021), plus SimSiam's global term, weighted as in DenseCL (Wang et
al., CVPR 2021)::

    two views of each image (crops that overlap, mirror, colour jitter; :mod:`.views`)
    trunk(view) -> dense map [B, C, h, w] (what the dense heads read) and pooled last stage [B, D]
    dense:  z = proj(map) (1x1 convs + BN), p = pred(z); z, p sampled at an S x S lattice of image
            points seen by both views; L_dense = -1/2 (cos(p1, sg(z2)) + cos(p2, sg(z1))), mean over points
    global: the same with MLP projector/predictor on the pooled vector
    L = (1 - global_weight) L_dense + global_weight L_global

Why this one (docs/training.md, "Self-supervised start"): no negatives (contrastive DenseCL/VADeR need
large batches or a queue, a CPU runs batches of 8), no momentum encoder (BYOL/PixPro: one more trunk
forward per step), and the loss acts on the fused map the segmentation heads read, at known pixel
correspondences. Masked image modelling would fit a ViT; on a CNN it needs sparse convolutions (SparK)
and hundreds of epochs.

What trains: the trunk (:func:`trunk_of`: backbone + fusion for PAD-Net, backbone + FPN + fusion for
det+seg), BatchNorm statistics included, and the small projector/predictor (:class:`SiameseHeads`,
discarded afterwards). Task heads, distillation, label encoders and the detector's head are never run
and stay as they are.

Time-boxed (``PretrainConfig.budget_s``, a step is not started when the last step's time would overrun
it) and capped (``steps``, counted over resumes). Resumable: :class:`PretrainResult.state` (also written to
``checkpoint`` every ``save_every`` steps) holds the trunk, heads, optimizer and step; step t's batch and
augmentations come from a generator seeded by (seed, t), so on CPU a resumed run ends with the same
weights as an uninterrupted one. A pool smaller than ``min_images`` raises :class:`PretrainRefused`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtal_models.atomic import atomic_write
from mtal_models.nets.base import MultiTaskNet
from mtal_models.training.views import as_image_tensor, two_views

__all__ = [
    "PretrainConfig",
    "PretrainRefused",
    "PretrainResult",
    "SiameseHeads",
    "Trunk",
    "check_pool",
    "pretrain",
    "trunk_of",
]

Progress = Callable[[int, float], None]  # (step counted from 1 over resumes, loss of that step)
PoolImage = Tensor | np.ndarray
STATE_VERSION = 1


class PretrainRefused(ValueError):
    """The pool cannot be pretrained on (too few images); ``reason`` is a sentence for a status page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PretrainConfig:
    """Options of :func:`pretrain`.

    steps:          optimizer steps in all (a resumed run continues up to this number).
    budget_s:       wall-clock seconds for this call (0 = no limit); the backend's ``MTAL_PRETRAIN_MINUTES``.
    batch_size:     images per step (two views each).
    view_size:      (h, w) of each view; a multiple of 32 keeps every stride exact.
    scale:          area fraction of a crop; min_overlap: of the smaller crop, between the two views.
    grid:           S: the dense loss compares S x S corresponding points per image.
    global_weight:  weight of the global term (DenseCL's 0.5).
    proj_dim / pred_dim: projector output / predictor bottleneck width (SimSiam: 2048 / 512, scaled down).
    lr, weight_decay: AdamW, constant after ``warmup`` steps of linear ramp (the end is unknown when
                    time-boxed, so no decay to schedule against).
    min_images:     fewer pool images than this: refuse (PretrainRefused).
    save_every:     steps between checkpoint writes (when ``pretrain`` is given a checkpoint path).
    seed:           fixes every batch and augmentation (with the step number).
    """

    steps: int = 1000
    budget_s: float = 600.0
    batch_size: int = 8
    view_size: tuple[int, int] = (96, 128)
    scale: tuple[float, float] = (0.3, 1.0)
    min_overlap: float = 0.3
    grid: int = 7
    global_weight: float = 0.5
    proj_dim: int = 128
    pred_dim: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    min_images: int = 32
    save_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 0, "budget_s": self.budget_s >= 0, "batch_size": self.batch_size >= 2,
            "view_size": len(self.view_size) == 2 and min(self.view_size) >= 32,
            "scale": 0 < self.scale[0] <= self.scale[1] <= 1, "min_overlap": 0 <= self.min_overlap <= 1,
            "grid": self.grid >= 1, "global_weight": 0 <= self.global_weight <= 1,
            "proj_dim": self.proj_dim >= 1, "pred_dim": self.pred_dim >= 1, "lr": self.lr > 0,
            "warmup": self.warmup >= 0, "min_images": self.min_images >= 2, "save_every": self.save_every >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"PretrainConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["view_size"], d["scale"] = list(self.view_size), list(self.scale)
        return d


@dataclass
class Trunk:
    """The part of a network pretraining trains: ``names`` are its top-level submodules (state-dict key
    prefixes); ``features(images) -> (dense map [B, C, h, w], pooled [B, D])``."""

    names: tuple[str, ...]
    features: Callable[[Tensor], tuple[Tensor, Tensor]]
    dense_channels: int
    pooled_channels: int

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for n, p in model.named_parameters() if n.split(".", 1)[0] in self.names]

    def state(self, model: nn.Module) -> dict[str, Tensor]:
        """The trunk's entries of ``model.state_dict()`` (copies)."""
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k.split(".", 1)[0] in self.names}


def trunk_of(model: MultiTaskNet) -> Trunk:
    """The trunk of a PAD-Net (backbone + fusion, stride 8) or det+seg net (backbone + FPN + fusion,
    stride 4); any other net with a ResNet ``backbone``: the backbone, its stride-8 map as the dense one."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "out_channels"):
        raise ValueError(f"{type(model).__name__} has no ResNet `backbone`: nothing to pretrain")
    chans = backbone.out_channels
    fusion, fpn = getattr(model, "fusion", None), getattr(model, "fpn", None)
    if fusion is not None and fpn is not None:  # det+seg: FPN P2..P7 -> FeatureFusion (stride 4)
        def detseg(x: Tensor) -> tuple[Tensor, Tensor]:
            stages = backbone(x)
            pyramid = fpn({str(i): s for i, s in enumerate(stages)})
            return fusion(list(pyramid.values())), stages[-1].mean(dim=(2, 3))

        return Trunk(("backbone", "fpn", "fusion"), detseg, model.config.head_channels, chans[-1])
    if fusion is not None:  # PAD-Net: MultiScaleFusion (stride 8)
        def padnet(x: Tensor) -> tuple[Tensor, Tensor]:
            stages = backbone(x)
            return fusion(stages), stages[-1].mean(dim=(2, 3))

        return Trunk(("backbone", "fusion"), padnet, model.config.head_channels, chans[-1])

    def plain(x: Tensor) -> tuple[Tensor, Tensor]:
        stages = backbone(x)
        return stages[1], stages[-1].mean(dim=(2, 3))

    return Trunk(("backbone",), plain, chans[1], chans[-1])


def _mlp(kind: str, dims: Sequence[int], last_bn: bool) -> nn.Sequential:
    """1x1-conv (kind "conv") or linear layers with BN + ReLU between, BN (no affine) after the last if asked."""
    layer = (lambda i, o: nn.Conv2d(i, o, 1, bias=False)) if kind == "conv" else (lambda i, o: nn.Linear(i, o, False))
    norm = nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        mods.append(layer(a, b))
        if i < len(dims) - 2:
            mods += [norm(b), nn.ReLU(inplace=True)]
    if last_bn:
        mods.append(norm(dims[-1], affine=False))
    return nn.Sequential(*mods)


class SiameseHeads(nn.Module):
    """SimSiam projector + predictor, dense (1x1 convs on [B, C, h, w]) and global (on [B, D])."""

    def __init__(self, dense_channels: int, pooled_channels: int, proj_dim: int, pred_dim: int) -> None:
        super().__init__()
        self.dense_proj = _mlp("conv", (dense_channels, dense_channels, proj_dim), last_bn=True)
        self.dense_pred = _mlp("conv", (proj_dim, pred_dim, proj_dim), last_bn=False)
        self.global_proj = _mlp("linear", (pooled_channels, pooled_channels, proj_dim), last_bn=True)
        self.global_pred = _mlp("linear", (proj_dim, pred_dim, proj_dim), last_bn=False)


def _negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), mean over everything but the channel axis 1."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@dataclass
class PretrainResult:
    """steps: completed (over resumes); losses: per step of this call; seconds: of this call;
    stopped_by: "steps", "budget" or "stop" (the ``should_stop`` callback); feature_std: SimSiam's
    collapse indicator at the last step (std over the batch of the L2-normalised global projection, per
    channel, averaged; about 1/sqrt(proj_dim) when healthy, 0 when collapsed)."""

    steps: int
    losses: list[float]
    seconds: float
    images: int
    stopped_by: str
    feature_std: float
    config: PretrainConfig
    trunk: tuple[str, ...]
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    def state(self) -> dict[str, Any]:
        """What :func:`pretrain` resumes from (``start=``): trunk, heads, optimizer, step, config."""
        return self._state

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state` atomically (``torch.load(weights_only=True)`` reads it)."""
        return atomic_write(path, lambda fh: torch.save(self._state, fh))

    def summary(self) -> dict[str, Any]:
        """JSON-safe figures for a status page or a version's metadata."""
        first = self.losses[0] if self.losses else None
        last = self.losses[-1] if self.losses else None
        return {"pretrained": True, "steps": self.steps, "seconds": round(self.seconds, 1), "images": self.images,
                "stopped_by": self.stopped_by, "first_loss": first, "last_loss": last,
                "feature_std": self.feature_std, "trunk": list(self.trunk), "config": self.config.to_dict()}


def check_pool(n_images: int, config: PretrainConfig | None = None) -> str | None:
    """Why a pool of ``n_images`` cannot be pretrained on (a sentence), or None when it can."""
    need = (config or PretrainConfig()).min_images
    if n_images < need:
        return f"self-supervised pretraining skipped: the pool has {n_images} image(s), it needs at least {need}"
    return None


def _load_start(start: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    state = torch.load(start, map_location="cpu", weights_only=True) if isinstance(start, str | Path) else start
    if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or "trunk" not in state:
        raise ValueError(f"pretrain start: not a pretrain state (version {STATE_VERSION}): {str(start)[:200]}")
    return state


def pretrain(
    model: MultiTaskNet,
    images: Sequence[PoolImage],
    config: PretrainConfig | None = None,
    *,
    progress: Progress | None = None,
    start: Mapping[str, Any] | str | Path | None = None,
    checkpoint: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device | str | None = None,
) -> PretrainResult:
    """Train ``model``'s trunk in place on unlabelled ``images`` (see the module docstring).

    images: a sequence (``len`` + indexing; lazy is fine) of uint8 [H, W, 3] arrays or [3, H, W] tensors, any
    sizes. start: a state from :meth:`PretrainResult.state` or its file; it replaces the trunk's weights.
    checkpoint: written every ``save_every`` steps and at the end. should_stop: polled before each step.
    device: default the model's. The model is left in the train/eval mode it had.
    """
    config = config or PretrainConfig()
    reason = check_pool(len(images), config)
    if reason:
        raise PretrainRefused(reason)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    trunk = trunk_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        heads = SiameseHeads(trunk.dense_channels, trunk.pooled_channels, config.proj_dim, config.pred_dim)
    heads.to(device)
    params = trunk.parameters(model)
    optimizer = torch.optim.AdamW([{"params": params}, {"params": list(heads.parameters())}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if start is not None:
        state = _load_start(start)
        missing = set(trunk.state(model)) - set(state["trunk"])
        if missing:
            raise ValueError(f"pretrain start does not fit this network's trunk: missing {sorted(missing)[:5]}")
        model.load_state_dict(state["trunk"], strict=False)
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    was_training = model.training
    model.train()
    heads.train()
    losses: list[float] = []
    feature_std = float("nan")
    began, last_step_s, stopped_by = time.monotonic(), 0.0, "steps"

    def snapshot() -> dict[str, Any]:
        return {"version": STATE_VERSION, "step": step, "trunk": trunk.state(model), "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(), "config": config.to_dict()}

    try:
        while step < config.steps:
            elapsed = time.monotonic() - began
            if config.budget_s and elapsed + last_step_s > config.budget_s:
                stopped_by = "budget"
                break
            if should_stop is not None and should_stop():
                stopped_by = "stop"
                break
            t0 = time.monotonic()
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup) if config.warmup else config.lr
            loss, feature_std = _step(model, trunk, heads, images, config, step, device)
            value = float(loss.detach())
            if not math.isfinite(value):  # before the update: the weights stay those of the last good step
                raise FloatingPointError(f"pretrain: loss became {value} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(value)
            if progress is not None:
                progress(step, losses[-1])
            if checkpoint is not None and step % config.save_every == 0:
                atomic_write(checkpoint, lambda fh: torch.save(snapshot(), fh))
            last_step_s = time.monotonic() - t0
    finally:
        model.train(was_training)
    state = snapshot()
    if checkpoint is not None:
        atomic_write(checkpoint, lambda fh: torch.save(state, fh))
    return PretrainResult(step, losses, time.monotonic() - began, len(images), stopped_by, feature_std, config,
                          trunk.names, state)


def _step(model: nn.Module, trunk: Trunk, heads: SiameseHeads, images: Sequence[PoolImage],
          config: PretrainConfig, step: int, device: torch.device) -> tuple[Tensor, float]:
    """One step's loss (graph attached) and the collapse indicator, from the batch of ``step``."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    index = torch.randperm(len(images), generator=gen)[: config.batch_size].tolist()
    pair = two_views([as_image_tensor(images[i]) for i in index], config.view_size, gen, config.scale,
                     config.min_overlap, config.grid)
    views = torch.cat([pair.first, pair.second]).to(device)
    dense, pooled = trunk.features(views)
    z = heads.dense_proj(dense)
    p = heads.dense_pred(z)
    grids = torch.cat([pair.grid_first, pair.grid_second]).to(device)
    zs = F.grid_sample(z, grids, mode="bilinear", align_corners=False)  # [2B, D, S, S]
    ps = F.grid_sample(p, grids, mode="bilinear", align_corners=False)
    b = len(index)
    dense_loss = 0.5 * (_negative_cosine(ps[:b], zs[b:]) + _negative_cosine(ps[b:], zs[:b]))
    zg = heads.global_proj(pooled)
    pg = heads.global_pred(zg)
    global_loss = 0.5 * (_negative_cosine(pg[:b], zg[b:]) + _negative_cosine(pg[b:], zg[:b]))
    loss = (1 - config.global_weight) * dense_loss + config.global_weight * global_loss
    std = float(F.normalize(zg.detach(), dim=1).std(dim=0).mean())
    return loss, std
