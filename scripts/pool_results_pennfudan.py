"""docs/results/pool-pennfudan.md (a section of docs/results.md): what the cold start buys on Penn-Fudan
(issue #25; issue #30's semi-supervised runs when given).

Reads finished `mtal simulate --config pennfudan --strategies random --seeds 0,1,2 --rounds 1` runs (their
metrics.csv), made on the same machine with the same seeds and the same initial images, and writes mask mIoU and
box mAP tables with per-seed ratios:

    python scripts/pool_results_pennfudan.py --base runs/pf-semi0 --cold-random runs/pf-cold-random \
        --cold-typiclust runs/pf-cold-typiclust [--semi runs/pf-semi1] --note "..." \
        --out docs/results/pool-pennfudan.md
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

KEYS = (("mask_miou", "mask mIoU"), ("boxes_map", "box mAP"))


def load(run: Path) -> dict[int, dict[int, dict[str, float]]]:
    """labelled images -> seed -> the Random strategy's round row (the keys of :data:`KEYS`)."""
    out: dict[int, dict[int, dict[str, float]]] = defaultdict(dict)
    with (run / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row["strategy"] == "random":
                out[int(row["images"])][int(row["seed"])] = {k: float(row[k]) for k, _ in KEYS}
    return out


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def compare(a: dict, b: dict, name_a: str, name_b: str) -> list[str]:
    """A table: images | metric | a | b | b / a (mean of per-seed ratios, per seed) | seeds where b >= a."""
    lines = [f"| labelled images | metric | {name_a} | {name_b} | {name_b} / {name_a} (per seed) | "
             f"seeds {name_b} >= {name_a} |", "|---|---|---|---|---|---|"]
    for images in sorted(set(a) & set(b)):
        seeds = sorted(set(a[images]) & set(b[images]))
        for key, label in KEYS:
            va, vb = [a[images][s][key] for s in seeds], [b[images][s][key] for s in seeds]
            ratios = [y / x for x, y in zip(va, vb, strict=True) if x > 0]
            wins = sum(y >= x for x, y in zip(va, vb, strict=True))
            lines.append(f"| {images} | {label} | {_mean_std(va)} | {_mean_std(vb)} | {statistics.mean(ratios):.3f} "
                         f"({', '.join(f'{r:.2f}' for r in ratios)}) | {wins}/{len(seeds)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="random initial weights, supervised")
    p.add_argument("--cold-random", type=Path)
    p.add_argument("--cold-typiclust", type=Path)
    p.add_argument("--semi", type=Path)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    base = load(args.base)
    lines = ["## Learning from the unlabelled pool on Penn-Fudan (issues #25 and #30)", "",
             "Preset `pennfudan` (det+seg network, 144x144, 150 steps a round, lr 5e-3, Random selection, 12 "
             "initial images + one round of 12 more (each image labelled for boxes and mask), seeds 0-2; mask mIoU "
             f"and box mAP on 50 held-out photos), CPU. {args.note}", ""]
    if args.cold_random:
        cold = load(args.cold_random)
        lines += ["### Cold start: pretrained start over random initial weights", "",
                  "`--pretrain-steps 600` (dense SimSiam on the pool's photos, the backend's pretrain job) against "
                  "the same run from random weights; same initial images.", "",
                  *compare(base, cold, "random init", "pretrained"), ""]
        if args.cold_typiclust:
            lines += ["### First images by TypiClust against random ones, both from the pretrained start", "",
                      *compare(cold, load(args.cold_typiclust), "random first", "typiclust first"), ""]
    if args.semi:
        lines += ["### Semi-supervised training (`--semi-weight 1`)", "",
                  *compare(base, load(args.semi), "supervised", "semi"), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
