"""Checkpoints: one file with everything needed to rebuild a network and continue training.

File contents (a plain dict, loadable with ``torch.load(weights_only=True)``):

    {"format_version": 1, "network": registry name, "net_config": NetConfig.to_dict(),
     "modalities": [ModalitySpec.to_dict(), ...] (in the network's order), "model_state": state dict,
     "optimizer_state": dict | None, "scheduler_state": dict | None, "epoch": completed epochs,
     "extra": dict of plain values / tensors}

Writes are atomic: a temporary file in the target's directory is written, fsynced and ``os.replace``d
over the target, so a reader sees the old or the new file, never half of one.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mtal_models.atomic import atomic_write
from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import MultiTaskNet
from mtal_models.nets.config import NetConfig

__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "load_checkpoint", "network_name", "save_checkpoint"]

FORMAT_VERSION = 1
_KEYS = ("format_version", "network", "net_config", "modalities", "model_state", "epoch")

Builder = Callable[[str, Mapping[str, ModalitySpec], NetConfig], MultiTaskNet]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not one of ours."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is rebuilt (on ``map_location``) with the saved weights, in eval mode."""

    model: MultiTaskNet
    network: str
    net_config: NetConfig
    modalities: dict[str, ModalitySpec]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def network_name(model: nn.Module) -> str:
    """The registry name of ``model``: its ``name`` attribute, else the key of its class in NETWORKS."""
    name = getattr(model, "name", None)
    if isinstance(name, str) and name:
        return name
    from mtal_models.nets import NETWORKS

    for key, cls in NETWORKS.items():
        if type(model) is cls:
            return key
    raise ValueError(f"{type(model).__name__} is not in the network registry (valid: {sorted(NETWORKS)})")


def save_checkpoint(
    path: str | Path,
    model: MultiTaskNet,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically to ``path`` (parent directories are created); returns the path.

    ``extra`` must hold only plain types and tensors (it is loaded with ``weights_only=True``).
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, NetConfig):
        raise ValueError(f"{type(model).__name__} has no NetConfig in .config: cannot checkpoint it")
    if epoch < 0:
        raise ValueError(f"checkpoint epoch must be >= 0, got {epoch}")
    payload = {
        "format_version": FORMAT_VERSION,
        "network": network_name(model),
        "net_config": config.to_dict(),
        "modalities": [spec.to_dict() for spec in model.modalities.values()],
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": None if optimizer is None else optimizer.state_dict(),
        "scheduler_state": None if scheduler is None else scheduler.state_dict(),
        "epoch": int(epoch),
        "extra": dict(extra or {}),
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", builder: Builder | None = None
) -> Checkpoint:
    """Read a checkpoint (``torch.load(weights_only=True)``) and rebuild its network.

    ``builder(name, modalities, config)`` defaults to :func:`mtal_models.nets.build_network`.
    Raises :class:`CheckpointError` (a ValueError) for a missing, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {err}") from err
    if not isinstance(raw, dict) or any(k not in raw for k in _KEYS):
        missing = [k for k in _KEYS if not isinstance(raw, dict) or k not in raw]
        raise CheckpointError(f"checkpoint {path} is not an MTAL checkpoint (missing {missing})")
    if raw["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {raw['format_version']}; this code reads <= {FORMAT_VERSION}"
        )
    modalities = {d["name"]: ModalitySpec.from_dict(d) for d in raw["modalities"]}
    net_config = NetConfig.from_dict(raw["net_config"])
    if builder is None:
        from mtal_models.nets import build_network

        builder = build_network
    # the saved state replaces every weight: never re-read (or download) the config's starting weights
    model = builder(raw["network"], modalities, replace(net_config, weights=None))
    try:
        model.load_state_dict(raw["model_state"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit network {raw['network']!r}: {err}") from err
    model.to(map_location).eval()
    return Checkpoint(
        model=model,
        network=raw["network"],
        net_config=net_config,
        modalities=modalities,
        model_state=raw["model_state"],
        optimizer_state=raw.get("optimizer_state"),
        scheduler_state=raw.get("scheduler_state"),
        epoch=int(raw["epoch"]),
        extra=dict(raw.get("extra") or {}),
        format_version=int(raw["format_version"]),
    )
