"""docs/results/pool.md (a section of docs/results.md): what learning from the unlabelled pool buys on
CamVid (issues #25 and #30).

Reads finished `mtal simulate` runs (their metrics.csv) and writes the tables, ratios from runs made on
the same machine with the same seeds and the same initial images:

    python scripts/pool_results.py --supervised runs/camvid-semi0 --semi runs/camvid-semi1 \
        --cold-random runs/camvid-cold-random --cold-typiclust runs/camvid-cold-typiclust \
        --note "2-core machine, load 4-6 (other jobs running); mIoU does not depend on the load" \
        --out docs/results/pool.md
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

RARE = ("pole", "sign_symbol", "pedestrian", "bicyclist")
CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
           "bicyclist")


def load(run: Path) -> dict[int, dict[int, dict[str, float]]]:
    """labels -> seed -> row (floats) of the Random strategy's rounds."""
    out: dict[int, dict[int, dict[str, float]]] = defaultdict(dict)
    with (run / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row["strategy"] != "random":
                continue
            out[int(row["labels"])][int(row["seed"])] = {k: float(v) for k, v in row.items()
                                                         if k not in ("strategy",) and v not in ("", None)}
    return out


def rare_iou(row: dict[str, float]) -> float:
    return statistics.mean(row[f"semantic_iou_{CLASSES.index(c)}"] for c in RARE)


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def compare(a: dict, b: dict, name_a: str, name_b: str, key: str = "semantic_miou") -> list[str]:
    """A table: labels | a | b | ratio b/a (mean of per-seed ratios) | seeds where b >= a."""
    lines = [f"| labels | {name_a} mIoU | {name_b} mIoU | {name_b} / {name_a} (per seed) | seeds {name_b} >= "
             f"{name_a} | rare-class IoU {name_a} | rare-class IoU {name_b} |", "|---|---|---|---|---|---|---|"]
    for labels in sorted(set(a) & set(b)):
        seeds = sorted(set(a[labels]) & set(b[labels]))
        va, vb = [a[labels][s][key] for s in seeds], [b[labels][s][key] for s in seeds]
        ratios = [y / x for x, y in zip(va, vb, strict=True) if x > 0]
        ra = [rare_iou(a[labels][s]) for s in seeds]
        rb = [rare_iou(b[labels][s]) for s in seeds]
        lines.append(f"| {labels} | {mean_std(va)} | {mean_std(vb)} | {statistics.mean(ratios):.3f} "
                     f"({', '.join(f'{r:.2f}' for r in ratios)}) | {sum(y >= x for x, y in zip(va, vb, strict=True))}"
                     f"/{len(seeds)} | {mean_std(ra)} | {mean_std(rb)} |")
    return lines


def labels_to_reach(curve: dict, target: float) -> str:
    """Labels at which the seed-mean mIoU of ``curve`` first reaches ``target`` (linear between rounds)."""
    points = sorted((labels, statistics.mean(r["semantic_miou"] for r in seeds.values()))
                    for labels, seeds in curve.items())
    for (l0, m0), (l1, m1) in zip(points, points[1:], strict=False):
        if m0 >= target:
            return f"{l0}"
        if m1 >= target:
            return f"{l0 + (target - m0) / (m1 - m0) * (l1 - l0):.1f}"
    return f"not reached by {points[-1][0]}" if points and points[-1][1] < target else f"{points[0][0]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supervised", type=Path, required=True)
    p.add_argument("--semi", type=Path)
    p.add_argument("--cold-random", type=Path)
    p.add_argument("--cold-typiclust", type=Path)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    sup = load(args.supervised)
    lines = ["## Learning from the unlabelled pool on CamVid (issues #25 and #30)", "",
             "Preset `camvid` (PAD-Net `small`, 96x128 canvas, 150 steps a round, lr 5e-3, Random selection, "
             "seeds 0-2, mIoU on CamVid's 101 validation photos), CPU. Rare classes: "
             f"{', '.join(RARE)} (mean IoU). {args.note}", ""]
    if args.semi:
        semi = load(args.semi)
        top = max(sup)
        target = statistics.mean(r["semantic_miou"] for r in sup[top].values())
        lines += ["### Semi-supervised training (`--semi-weight 1`, the backend's `MTAL_SEMI_WEIGHT=1`)", "",
                  "`mtal simulate --config camvid --strategies random --semi-weight 1` against the same run "
                  "with `--semi-weight 0` (the default).", "", *compare(sup, semi, "supervised", "semi"), "",
                  f"Labels semi-supervised training needs to reach supervised training's mIoU at {top} labels "
                  f"({target:.3f}): **{labels_to_reach(semi, target)}** (goal <= {top // 2}).", ""]
    if args.cold_random:
        cold = load(args.cold_random)
        lines += ["### Cold start: pretrained start (`--pretrain-steps`) over random initial weights", "",
                  "Same initial images (seeded random), the trunk pretrained on the 367 pool photos first.", "",
                  *compare(sup, cold, "random init", "pretrained"), ""]
        if args.cold_typiclust:
            typ = load(args.cold_typiclust)
            lines += ["### First images by TypiClust against random ones, both from the pretrained start", "",
                      *compare(cold, typ, "random first", "typiclust first"), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
