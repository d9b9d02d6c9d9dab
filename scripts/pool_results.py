"""docs/results/pool.md (a section of docs/results.md): what learning from the unlabelled pool buys on
CamVid (issues #25 and #30).

Reads finished `mtal simulate` runs (their metrics.csv) and `scripts/semi_sweep.py` JSON lines (the
convergence check and semi vs supervised at a chosen length) and writes the tables, ratios from runs made on
the same machine with the same seeds and the same initial images:

    python scripts/pool_results.py --supervised runs/camvid-semi0 --semi runs/camvid-semi1 \
        --cold-random runs/camvid-cold-random --cold-typiclust runs/camvid-cold-typiclust \
        --sweep docs/results/pool_sweep/*.jsonl --append docs/results/pool_reading.md \
        --note "2-core machine, load 4-6 (other jobs running); mIoU does not depend on the load" \
        --out docs/results/pool.md
"""

from __future__ import annotations

import argparse
import csv
import json
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


def load_sweep(paths: list[Path]) -> list[dict]:
    """Rows of ``scripts/semi_sweep.py`` JSON-lines files (one training each)."""
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _arm(row: dict) -> str:
    """A row's settings as written on the page: "supervised", or the semi-supervised overrides."""
    settings = {k: v for k, v in row["set"].items() if k != "semi_weight"}
    if not row["set"].get("semi_weight", 0):
        return "supervised" + (f" ({settings})" if settings else "")
    return "semi " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) if settings else "semi"


def convergence(rows: list[dict], tolerance: float = 0.03) -> list[str]:
    """labels | seed | arm | mIoU at N | mIoU at 2N | ratio | converged (within ``tolerance`` of 2N)."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["labels"], r["seed"], _arm(r))][r["steps"]] = r["miou"]
    lines = ["| labels | seed | training | steps N | mIoU at N | mIoU at 2N | N / 2N | within 3 % |",
             "|---|---|---|---|---|---|---|---|"]
    for (labels, seed, arm), runs in sorted(by.items()):
        for n in sorted(runs):
            if 2 * n in runs:
                ratio = runs[n] / runs[2 * n]
                ok = "yes" if ratio >= 1 - tolerance else "no"
                lines.append(f"| {labels} | {seed} | {arm} | {n} | {runs[n]:.3f} | {runs[2 * n]:.3f} | {ratio:.3f} "
                             f"| {ok} |")
    return lines


def semi_against_supervised(rows: list[dict]) -> list[str]:
    """labels | steps | arm | supervised mIoU | semi mIoU | ratio (per seed) | rare-class IoU both."""
    sup = {(r["labels"], r["seed"], r["steps"]): r for r in rows if _arm(r) == "supervised"}
    groups = defaultdict(list)
    for r in rows:
        key = (r["labels"], r["seed"], r["steps"])
        if _arm(r) != "supervised" and key in sup:
            groups[(r["labels"], r["steps"], _arm(r))].append((sup[key], r))
    lines = ["| labels | steps | semi-supervised arm | supervised mIoU | semi mIoU | semi / supervised (per seed) | "
             "rare-class IoU supervised | rare-class IoU semi |", "|---|---|---|---|---|---|---|---|"]
    for (labels, steps, arm), pairs in sorted(groups.items()):
        ratios = [b["miou"] / a["miou"] for a, b in pairs]
        lines.append(f"| {labels} | {steps} | {arm} | {mean_std([a['miou'] for a, _ in pairs])} | "
                     f"{mean_std([b['miou'] for _, b in pairs])} | {statistics.mean(ratios):.3f} "
                     f"({', '.join(f'{x:.2f}' for x in ratios)}; seeds {', '.join(str(a['seed']) for a, _ in pairs)})"
                     " | "
                     f"{mean_std([a['rare_iou'] for a, _ in pairs])} | {mean_std([b['rare_iou'] for _, b in pairs])} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supervised", type=Path, required=True)
    p.add_argument("--semi", type=Path)
    p.add_argument("--cold-random", type=Path)
    p.add_argument("--cold-typiclust", type=Path)
    p.add_argument("--sweep", type=Path, nargs="*", default=[],
                   help="scripts/semi_sweep.py JSON-lines: the convergence check, semi vs supervised at length")
    p.add_argument("--append", type=Path, help="a hand-written reading appended after the tables")
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
    if args.sweep:
        rows = load_sweep(args.sweep)
        lines += ["### Trainings that converge: each run against the same run trained twice as long", "",
                  "`scripts/semi_sweep.py` (round 0 of the simulator: the seed's random labelled images and initial "
                  "weights, `fit` with the fixed-step loader, the unlabelled rest of the pool for the semi arms) at "
                  "N and 2N steps; converged = mIoU at N within 3 % of 2N.", "", *convergence(rows), "",
                  "### Semi-supervised over supervised at equal length (same seeds, images, initial weights)", "",
                  *semi_against_supervised(rows), ""]
    if args.append:
        lines += [args.append.read_text()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
