"""Trainings of the ``camvid`` preset's recipe at chosen lengths, supervised or semi-supervised (issue #30).

One line of JSON per training appended to ``--out``: labels, seed, steps, the TrainConfig overrides, the
held-out mIoU, rare-class IoU, pixel accuracy and the wall time. Round 0 of the simulator (the seed's
random initial images, its initial weights, ``fit`` with the fixed-step loader; the unlabelled rest of the
pool when ``semi_weight`` > 0), at any length: what the convergence check of the step-budget rule and the
semi-over-supervised comparisons run.

    python scripts/semi_sweep.py --path /work/shared/datasets/camvid --out runs.jsonl \\
        --labels 10,40 --steps 600,1200 --seeds 0 --set semi_weight=0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from mtal_models.data import LabelPool
from mtal_models.simulate.config import load_config
from mtal_models.simulate.photos import load_photo_data
from mtal_models.simulate.rounds import _build_model, _train_config, _train_loader, initial_images
from mtal_models.training.config import TrainConfig
from mtal_models.training.data import make_loader
from mtal_models.training.loop import evaluate, fit

RARE = ("pole", "sign_symbol", "pedestrian", "bicyclist")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``name=value`` TrainConfig overrides, typed like the field's default."""
    defaults = TrainConfig().to_dict()
    out: dict[str, Any] = {}
    for item in items:
        name, value = item.split("=", 1)
        if name not in defaults:
            raise SystemExit(f"unknown TrainConfig field {name!r}")
        kind = type(defaults[name])
        out[name] = value in ("1", "true", "True") if kind is bool else kind(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", required=True)
    ap.add_argument("--out", required=True, help="JSON lines file (appended)")
    ap.add_argument("--labels", default="10,40")
    ap.add_argument("--steps", default="600,1200")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--full", action="store_true", help="train on the whole pool (the simulator's reference)")
    ap.add_argument("--set", action="append", default=[], help="TrainConfig override name=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = parse_set(args.set)
    config = load_config("camvid", path=args.path, device="cpu")
    data = load_photo_data(config)
    names = list(data.modalities)
    classes = data.class_names["semantic"]
    val_loader = make_loader(data.val, data.modalities, config.batch_size)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for n in [int(x) for x in args.labels.split(",")] if not args.full else [len(data.pool)]:
            pool = LabelPool(len(data.pool), names)
            pool.label_images(range(len(data.pool)) if args.full
                              else initial_images(config.replace(initial=n), len(data.pool), seed))
            labelled = set(pool.labelled_images().tolist())
            samples = [pool.apply(data.pool[i], i) for i in sorted(labelled)]
            unlabelled = [pool.apply(s, i) for i, s in enumerate(data.pool) if i not in labelled]
            for steps in [int(x) for x in args.steps.split(",")]:
                start = time.perf_counter()
                model = _build_model(config, data.modalities, seed)
                train = TrainConfig(**{**_train_config(config, 1, seed * 1000, False).to_dict(), **overrides})
                loader = _train_loader(samples, data.modalities, config.batch_size, train.seed, steps)
                fit(model, loader, train, unlabelled=unlabelled or None)
                metrics = evaluate(model, val_loader)["semantic"]
                iou = {c: v or 0.0 for c, v in zip(classes, metrics["class_iou"], strict=True)}
                row = {"labels": n, "seed": seed, "steps": steps, "set": overrides,
                       "miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"],
                       "rare_iou": sum(iou.get(c, 0.0) for c in RARE) / len(RARE), "class_iou": metrics["class_iou"],
                       "seconds": round(time.perf_counter() - start, 1)}
                print(json.dumps(row), flush=True)
                with Path(args.out).open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
