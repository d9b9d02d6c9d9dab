"""Look inside the semi-supervised term on a real CamVid training (issue #30's audit).

One training of the ``camvid`` preset's recipe (one seed, N random labelled images, the unlabelled rest of
the pool) through ``fit(..., unlabelled=)``, the code path the simulator and the backend use. Every step
it logs what the teacher gave (share of pixels over the threshold, their accuracy against the hidden
ground truth, the classes they carry); at chosen steps it writes a PNG grid per step:
weak view | strong view | strong pseudo-label (black = ignored) | confident pixels (weak view) |
ground truth | teacher on the weak view | student on the weak view, one row per image of the batch.

    python scripts/semi_inspect.py --path /work/shared/datasets/camvid --out /work/runs/semi-inspect \\
        --labels 10 --steps 150 --dump 10,50,100,150

Writes ``steps.csv`` (per step) and ``grid_step<k>.png`` into ``--out``, and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtal_models.training.loop as loop_module
from mtal_models.data import LabelPool
from mtal_models.simulate.config import load_config
from mtal_models.simulate.photos import load_photo_data
from mtal_models.simulate.rounds import _build_model, _train_config, _train_loader, initial_images
from mtal_models.training.config import TrainConfig
from mtal_models.training.data import make_loader
from mtal_models.training.loop import evaluate, fit
from scripts.semi_sweep import parse_set

# CamVid's SegNet palette for the 11 classes; ignored pixels black.
PALETTE = np.array([(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)], dtype=np.uint8)


def colour(ids: np.ndarray) -> np.ndarray:
    """Class ids [H, W] (255 = ignored) -> RGB [H, W, 3]."""
    out = np.zeros((*ids.shape, 3), np.uint8)
    ok = ids < len(PALETTE)
    out[ok] = PALETTE[ids[ok]]
    return out


def rgb(images: torch.Tensor, i: int) -> np.ndarray:
    return (images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", type=int, default=10)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", default="10,50,100,150", help="steps to write a PNG grid at")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="TrainConfig override, e.g. semi_threshold=0.8")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config("camvid", path=args.path, initial=args.labels, semi_weight=1.0, device="cpu")
    data = load_photo_data(config)
    gt = {s.id: s.labels["semantic"] for s in data.pool}
    pool = LabelPool(len(data.pool), ["semantic"])
    pool.label_images(initial_images(config, len(data.pool), args.seed))
    labelled = set(pool.labelled_images().tolist())
    samples = [pool.apply(data.pool[i], i) for i in sorted(labelled)]
    unlabelled = [pool.apply(s, i) for i, s in enumerate(data.pool) if i not in labelled]
    model = _build_model(config, data.modalities, args.seed)
    train_config = _train_config(config, 1, args.seed * 1000, False)
    train_config = TrainConfig(**{**train_config.to_dict(), **parse_set(args.set)})
    loader = _train_loader(samples, data.modalities, config.batch_size, train_config.seed, args.steps)
    captured: dict[str, Any] = {}
    real = loop_module._semi_branch

    def capture(*a: Any, **k: Any) -> Any:
        captured["semi"] = real(*a, **k)
        return captured["semi"]

    loop_module._semi_branch = capture
    dump = {int(x) for x in args.dump.split(",") if x}
    rows: list[dict[str, Any]] = []
    n_classes = len(PALETTE)

    def progress(epoch: int, step: int, loss: float) -> None:
        semi = captured["semi"]
        last = semi.last
        weak_t = last["weak_targets"]["semantic"]
        truth = torch.stack([torch.as_tensor(np.asarray(gt[i])) for i in last["ids"]]).long()
        passed = weak_t != 255
        valid = truth != 255
        both = passed & valid
        hist = torch.bincount(weak_t[passed], minlength=n_classes)[:n_classes].tolist()
        true_hist = torch.bincount(truth[valid], minlength=n_classes)[:n_classes].tolist()
        row = {"step": step, "loss": round(loss, 4), "pass_share": round(float(passed.float().mean()), 4),
               "pass_acc": round(float((weak_t[both] == truth[both]).float().mean()) if both.any() else math.nan, 4),
               "teacher_updates": semi.teacher.updates,
               "passed_classes": " ".join(map(str, hist)), "true_classes": " ".join(map(str, true_hist))}
        rows.append(row)
        if step % 10 == 0:
            print(row, flush=True)
        if step in dump:
            write_grid(out / f"grid_step{step}.png", last, truth, semi, model, args.rows)

    def write_grid(path: Path, last: dict[str, Any], truth: torch.Tensor, semi: Any, student: Any, n: int) -> None:
        import cv2

        weak = last["weak"]
        teacher_pred = semi.teacher.model.predict(weak)["semantic"].argmax(1)
        student_pred = student.predict(weak)["semantic"].argmax(1)
        conf = semi.teacher.model.predict(weak)["semantic"].max(1).values
        lines = []
        for i in range(min(n, weak.shape[0])):
            cells = [rgb(weak, i), rgb(last["strong"], i), colour(last["targets"]["semantic"][i].numpy()),
                     np.repeat((conf[i].numpy()[..., None] * 255).astype(np.uint8), 3, axis=2),
                     colour(truth[i].numpy()), colour(teacher_pred[i].numpy()), colour(student_pred[i].numpy())]
            lines.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0))) for c in cells], axis=1))
        grid = np.concatenate(lines, axis=0)
        cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))

    result = fit(model, loader, train_config, unlabelled=unlabelled, progress=progress)
    val_loader = make_loader(data.val, data.modalities, config.batch_size)
    student = evaluate(model, val_loader)["semantic"]
    teacher = evaluate(result.teacher.model, val_loader)["semantic"] if result.teacher is not None else {}
    with open(out / "steps.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("student val:", {k: v for k, v in student.items() if not isinstance(v, list)})
    print("teacher val:", {k: v for k, v in teacher.items() if not isinstance(v, list)})


if __name__ == "__main__":
    main()
