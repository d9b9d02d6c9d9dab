"""Outputs of a simulation: per-round CSV + JSON, mean ± std plots, the labels-to-target tables."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtal_models.modalities import ModalitySpec
from mtal_models.simulate.score import headline, labels_to_target

__all__ = ["aggregate", "labels_table", "round_table", "write_outputs"]

Row = Mapping[str, Any]


def aggregate(rows: Sequence[Row], key: str) -> dict[str, dict[str, list[float]]]:
    """Per strategy, per round: mean/std over seeds of ``key`` and of ``labels``:
    ``{strategy: {"round", "labels", "mean", "std", "n"}}`` (lists ordered by round)."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == name]
        rounds = sorted({int(r["round"]) for r in mine})
        agg: dict[str, list[float]] = {"round": [], "labels": [], "mean": [], "std": [], "n": []}
        for rnd in rounds:
            at = [r for r in mine if int(r["round"]) == rnd]
            vals = np.array([float(r[key]) for r in at], dtype=float)
            agg["round"].append(rnd)
            agg["labels"].append(float(np.mean([float(r["labels"]) for r in at])))
            agg["mean"].append(float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan)
            agg["std"].append(float(np.nanstd(vals)) if np.isfinite(vals).any() else math.nan)
            agg["n"].append(len(at))
        out[name] = agg
    return out


def labels_table(rows: Sequence[Row], target: float, baseline: str = "random", key: str = "mt_score"
                 ) -> list[dict[str, Any]]:
    """Per strategy: labels needed to reach ``target`` on the seed-mean curve of ``key`` (the multi-task
    score, or e.g. ``mdsq``; None = not reached), how many seeds reach it on their own curve, and the
    ratio to ``baseline``'s labels."""
    agg = aggregate(rows, key)
    table = []
    for name, a in agg.items():
        seeds = sorted({r["seed"] for r in rows if r["strategy"] == name})
        reached = 0
        for s in seeds:
            mine = sorted((r for r in rows if r["strategy"] == name and r["seed"] == s), key=lambda r: r["round"])
            reached += labels_to_target([r["labels"] for r in mine], [r[key] for r in mine], target) is not None
        table.append({
            "strategy": name, "labels_to_target": labels_to_target(a["labels"], a["mean"], target),
            "seeds_reaching": reached, "seeds": len(seeds), "final_labels": a["labels"][-1],
            "final_score": a["mean"][-1], "final_std": a["std"][-1],
        })  # fmt: skip
    base = next((t["labels_to_target"] for t in table if t["strategy"] == baseline), None)
    for t in table:
        ok = base is not None and t["labels_to_target"] is not None
        t["ratio_to_" + baseline] = t["labels_to_target"] / base if ok else None
    return table


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.0f}" if v.is_integer() and abs(v) >= 10 else f"{v:.{digits}f}")
    return str(v)


def labels_markdown(table: Sequence[Mapping[str, Any]], target: float, baseline: str = "random") -> str:
    head = (
        f"| strategy | labels to {target:.0%} of full-data score | seeds reaching it | ratio to {baseline} "
        "| final labels | final score (mean ± std) |\n|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {t['strategy']} | {_fmt(t['labels_to_target'], 1)} | {t['seeds_reaching']}/{t['seeds']} | "
        f"{_fmt(t['ratio_to_' + baseline])} | {_fmt(t['final_labels'], 0)} | "
        f"{_fmt(t['final_score'])} ± {_fmt(t['final_std'])} |\n"
        for t in table
    )
    return head + body


def round_table(rows: Sequence[Row], key: str = "mt_score") -> str:
    """Markdown: ``key`` (default the multi-task score) mean ± std per round (rows) and strategy (columns),
    with labels used."""
    agg = aggregate(rows, key)
    names = list(agg)
    rounds = sorted({rnd for a in agg.values() for rnd in a["round"]})
    lines = ["| round | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for rnd in rounds:
        cells = []
        for n in names:
            a = agg[n]
            if rnd in a["round"]:
                k = a["round"].index(rnd)
                cells.append(f"{a['mean'][k]:.3f} ± {a['std'][k]:.3f} ({a['labels'][k]:.0f} labels)")
            else:
                cells.append("")
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: Sequence[Row], key: str, ylabel: str, path: Path, target: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, a in aggregate(rows, key).items():
        x, m, s = np.array(a["labels"]), np.array(a["mean"]), np.array(a["std"])
        ax.plot(x, m, marker="o", label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"{target:.0%} of full data")
    ax.set_xlabel("labels used ((image, modality) pairs)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_outputs(
    rows: Sequence[Row],
    modalities: Mapping[str, ModalitySpec],
    target: float,
    out: Path,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.csv``, ``metrics.json``, ``plots/<modality>.png``, ``plots/multi_task_score.png``,
    ``labels_to_target.{md,csv}`` and ``rounds.md`` under ``out``; returns name -> path."""
    if not rows:
        raise ValueError("write_outputs: no rows to write")
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    columns = list(dict.fromkeys(k for r in rows for k in r))
    paths["csv"] = out / "metrics.csv"
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = labels_table(rows, target)
    paths["json"] = out / "metrics.json"
    paths["json"].write_text(json.dumps({"rows": list(rows), "labels_to_target": table, **(extra or {})}, indent=1))
    for name, spec in modalities.items():
        metric = headline(spec)
        paths[f"plot_{name}"] = out / "plots" / f"{name}.png"
        _plot(rows, f"{name}_{metric}", f"{name} {metric}", paths[f"plot_{name}"])
    paths["plot_multi_task"] = out / "plots" / "multi_task_score.png"
    _plot(rows, "mt_score", "multi-task score (1 = full-data model)", paths["plot_multi_task"], target)
    paths["labels_md"] = out / "labels_to_target.md"
    paths["labels_md"].write_text(labels_markdown(table, target))
    paths["labels_csv"] = out / "labels_to_target.csv"
    with paths["labels_csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows([{k: ("not reached" if v is None else v) for k, v in t.items()} for t in table])
    paths["rounds_md"] = out / "rounds.md"
    paths["rounds_md"].write_text(round_table(rows))
    return paths
