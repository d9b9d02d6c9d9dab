"""Edit cost of the prefill after a fixed training budget: before and after the prefill fixes.

    python -m bench.prefill [--train 128] [--epochs 30] [--size 64] [--net small] [--threads 1]
                            [--data-dir ../shared/datasets] [--pf-steps 300] [--pf-size 256]

Synthetic scenes (semantic + object boxes, det+seg network) are trained for ``--epochs`` on
``--train`` scenes; the display threshold is chosen on a validation split and the figures are
measured on a separate test split. "before" = what Label Studio got until now (the detector's
per-class boxes, a fixed 0.3 threshold, no speckle removal); "after" = cross-class suppression, the
threshold chosen on validation, speckle removal (:mod:`mtal_models.postprocess`). Both are measured on the
same trained network, side by side. Prints ``METRIC prefill_mask_edit_share``,
``prefill_box_precision``, ``prefill_box_recall``, ``prefill_duplicates_per_object`` (after) and the
same with ``_before``; with Penn-Fudan under ``--data-dir`` (default ``../shared/datasets`` when it
exists) the same again with ``pennfudan_`` in the name (person mask + person boxes, ``--pf-steps``
training steps at ``--pf-size`` px, lr 1e-3).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtal_models.data import SceneConfig, SyntheticDataset
from mtal_models.data.sample import Sample
from mtal_models.data.synth import scene_modalities
from mtal_models.modalities import ModalitySpec, build_modalities
from mtal_models.nets import build_network
from mtal_models.postprocess import PrefillConfig
from mtal_models.training import TrainConfig, evaluate, fit, make_loader

__all__ = ["BEFORE", "main", "measure", "pennfudan_samples", "synthetic_samples"]

BEFORE = PrefillConfig(per_class=True, threshold=0.3, min_area=0.0)
_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def synthetic_samples(n: int, size: int, seed: int) -> tuple[dict[str, ModalitySpec], list[Sample]]:
    """``n`` scenes with only their semantic and object-box labels."""
    config = SceneConfig(height=size, width=size)
    data = SyntheticDataset(n, config, seed=seed)
    samples = [data[i] for i in range(n)]
    keep = ("semantic", "objects")
    specs = {s[0]: s for s in scene_modalities(config)}
    modalities = build_modalities([specs[k] for k in keep])
    for s in samples:
        s.labels = {k: s.labels[k] for k in keep}
        s.present = {k: True for k in keep}
    return modalities, samples


def pennfudan_samples(root: Path, size: int) -> tuple[dict[str, ModalitySpec], list[Sample]]:
    """Penn-Fudan (``PNGImages/``, ``PedMasks/``) resized to ``size`` x ``size``: a person mask
    (2 classes) and one person box per instance of the mask (its pixels' bounding box)."""
    import cv2
    from PIL import Image

    images = sorted((root / "PNGImages").glob("*.png"))
    if not images:
        raise SystemExit(f"bench.prefill: no PNGImages/*.png under {root}")
    samples = []
    for p in images:
        img = np.asarray(Image.open(p).convert("RGB"))
        inst = np.asarray(Image.open(root / "PedMasks" / f"{p.stem}_mask.png"))
        h, w = inst.shape
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        inst = cv2.resize(inst.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        boxes = []
        for k in np.unique(inst):
            if k == 0:
                continue
            ys, xs = np.nonzero(inst == k)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels = {"person": (inst > 0).astype(np.int64),
                  "people": {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
                             "labels": np.zeros(len(boxes), np.int64)}}
        samples.append(Sample(p.stem, img, labels, {"person": True, "people": True}))
    return build_modalities([("person", "segmentation", 2), ("people", "detection", 1)]), samples


def measure(model: Any, modalities: Mapping[str, ModalitySpec], val: Sequence[Sample], test: Sequence[Sample],
            batch: int = 8) -> dict[str, dict[str, float]]:
    """{"before": figures, "after": figures} on ``test``; "after" uses the threshold chosen on ``val``."""
    seg = next(n for n, s in modalities.items() if s.kind == "segmentation")
    det = next(n for n, s in modalities.items() if s.kind == "detection")
    chosen = evaluate(model, make_loader(list(val), modalities, batch))[det]["display_threshold"]
    after = PrefillConfig(threshold=None if math.isnan(chosen) else chosen)
    if after.threshold is None:
        after = PrefillConfig(threshold=0.3)
    out = {}
    for name, config in (("before", BEFORE), ("after", after)):
        m = evaluate(model, make_loader(list(test), modalities, batch), prefill=config)
        out[name] = {"mask_edit_share": m[seg]["mask_edit_share"], "box_precision": m[det]["box_precision"],
                     "box_recall": m[det]["box_recall"], "duplicates_per_object": m[det]["duplicates_per_object"],
                     "threshold": m[det]["display_threshold"], "miou": m[seg]["miou"], "map_50": m[det]["map_50"]}
    return out


def _print(prefix: str, figures: Mapping[str, Mapping[str, float]]) -> None:
    for key in ("mask_edit_share", "box_precision", "box_recall", "duplicates_per_object"):
        print(f"METRIC {prefix}{key}={figures['after'][key]:.4f}")
        print(f"METRIC {prefix}{key}_before={figures['before'][key]:.4f}")
    a, b = figures["after"], figures["before"]
    print(f"  ({prefix.rstrip('_')}: threshold {b['threshold']:.2f} -> {a['threshold']:.2f}, "
          f"mIoU {a['miou']:.3f}, mAP50 {a['map_50']:.3f})")


def _train(modalities: Mapping[str, ModalitySpec], train: list[Sample], net: str, epochs: int, lr: float,
           seed: int) -> Any:
    torch.manual_seed(seed)
    model = build_network("detseg", modalities, net)
    start = time.perf_counter()
    fit(model, train, TrainConfig(epochs=epochs, batch_size=8, lr=lr, device="cpu", seed=seed))
    print(f"  trained {len(train)} images x {epochs} epochs in {time.perf_counter() - start:.0f} s", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=128, help="synthetic training scenes")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--net", default="small", choices=["tiny", "small", "default"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=_DEFAULT_DATA if _DEFAULT_DATA.is_dir() else None)
    p.add_argument("--pf-steps", type=int, default=300, help="Penn-Fudan training steps (batch 8)")
    p.add_argument("--pf-size", type=int, default=256)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    modalities, samples = synthetic_samples(args.train + 64, args.size, seed=0)
    train, val, test = samples[:args.train], samples[args.train:args.train + 32], samples[args.train + 32:]
    print(f"synthetic: {len(train)} train / {len(val)} val / {len(test)} test scenes, {args.size} px, "
          f"net {args.net}", flush=True)
    model = _train(modalities, train, args.net, args.epochs, args.lr, seed=0)
    _print("prefill_", measure(model, modalities, val, test))

    root = args.data_dir / "pennfudan" / "PennFudanPed" if args.data_dir else None
    if root is None or not root.is_dir():
        print("Penn-Fudan not found (--data-dir): skipped")
        return
    modalities, samples = pennfudan_samples(root, args.pf_size)
    train, val, test = samples[:100], samples[100:120], samples[120:]
    epochs = max(1, math.ceil(args.pf_steps * 8 / len(train)))
    print(f"pennfudan: {len(train)} train / {len(val)} val / {len(test)} test photos, {args.pf_size} px", flush=True)
    model = _train(modalities, train, args.net, epochs, 1e-3, seed=0)
    _print("prefill_pennfudan_", measure(model, modalities, val, test))


if __name__ == "__main__":
    main()
