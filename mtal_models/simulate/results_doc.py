"""Write docs/results.md from a finished simulation folder and the benchmark table (scripts/results.sh).

    python -m mtal_models.simulate.results_doc --sim runs/simulate-default --bench runs/bench-results.json \
        --out docs/results.md --plots docs/results

The reading of the results (does the best strategy need <= 70% of Random's labels to reach the target?
does PartAL's pair selection beat image-level selection at equal label count?) is computed from the
numbers, so a regenerated page never keeps a stale claim.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mtal_models.simulate.report import aggregate, labels_markdown, round_table

__all__ = ["main", "reading", "render"]


def _labels_verdict(table: Sequence[Mapping[str, Any]], goal: float = 0.7) -> str:
    base = next((t for t in table if t["strategy"] == "random"), None)
    others = [t for t in table if t["strategy"] != "random" and t["labels_to_target"] is not None]
    if base is None:
        return "Random was not run, so the label-efficiency goal cannot be judged."
    if base["labels_to_target"] is None:
        reached = ", ".join(f"{t['strategy']} ({t['labels_to_target']:.0f})" for t in others) or "none"
        return (
            f"Random never reached the target within {base['final_labels']:.0f} labels (final score "
            f"{base['final_score']:.3f}); strategies that did: {reached}. The <= 70% goal cannot be measured "
            "as a ratio on this run."
        )
    if not others:
        return (
            f"Random reached the target at {base['labels_to_target']:.0f} labels; no other strategy reached it, "
            "so **the goal is not met**."
        )
    best = min(others, key=lambda t: t["labels_to_target"])
    ratio = best["labels_to_target"] / base["labels_to_target"]
    met = "**met**" if ratio <= goal else "**not met**"
    return (
        f"Best strategy: **{best['strategy']}**, {best['labels_to_target']:.0f} labels vs Random's "
        f"{base['labels_to_target']:.0f} = {ratio:.0%} of Random's labels; the <= {goal:.0%} goal is {met}."
    )


def _pairs_verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    agg = aggregate(rows, "mt_score")
    if "partal" not in agg or "partal_image" not in agg:
        return "partal and partal_image were not both run: no pair-vs-image comparison."
    a, b = agg["partal"], agg["partal_image"]
    lines, wins, total = [], 0, 0
    for k, rnd in enumerate(a["round"]):
        if rnd == 0 or rnd not in b["round"]:
            continue
        j = b["round"].index(rnd)
        total += 1
        diff = a["mean"][k] - b["mean"][j]
        wins += diff > 0
        lines.append(
            f"round {rnd} ({a['labels'][k]:.0f} vs {b['labels'][j]:.0f} labels): "
            f"{a['mean'][k]:.3f} ± {a['std'][k]:.3f} vs {b['mean'][j]:.3f} ± {b['std'][j]:.3f} ({diff:+.3f})"
        )
    verdict = "**yes**" if total and wins == total else ("**mixed**" if wins else "**no**")
    return (
        f"PartAL (pairs) beats partal_image (same scores, whole images) at equal label count in {wins} of "
        f"{total} rounds: {verdict}. Multi-task score, partal vs partal_image (mean ± std over seeds):\n\n"
        + "\n".join(f"- {line}" for line in lines)
    )


def reading(
    rows: Sequence[Mapping[str, Any]], table: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None = None
) -> str:
    """The two questions of issue 8, answered from the numbers; ``config`` (the run's) words the caveat."""
    seeds = len({r["seed"] for r in rows})
    caveat = (
        f"\n\nCaveat: {seeds} seed(s); where the std over seeds is as large as the gap between strategies, the "
        "ordering is not established by this run."
    )
    config = config or {}
    same_budget = config.get("retrain") and config.get("steps_per_round", 0) > 0
    if same_budget and config.get("full_steps") == config.get("steps_per_round"):
        caveat += (
            f" Every round retrains from the initial weights for {config['steps_per_round']} steps"
            + (" (pair-selected rounds: as many steps as present the same number of labels)"
               if config.get("step_budget") == "labels" else "")
            + " and the "
            "reference gets the same recipe, so 1.0 = this training budget with every label, short of convergence "
            "(the papers train to convergence); scores above 1.0 are within noise or a short budget fitting fewer "
            "images better."
        )
    elif any(t["final_score"] is not None and t["final_score"] > 1 for t in table):
        caveat += (
            " Final scores above 1.0 mean the full-data reference (trained `full_epochs` epochs once) is weaker "
            "than models trained continuously over all rounds, so '95% of the full-data score' is a lower bar "
            "than in the papers."
        )
    return f"- {_labels_verdict(table)}\n- {_pairs_verdict(rows)}{caveat}"


def _bench_section(bench: Path | None) -> str:
    if bench is None or not bench.is_file():
        return "_No benchmark results (run `python -m bench.collect`)._\n"
    data = json.loads(bench.read_text())
    lines = ["| name | value | module | note |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['value']} | bench.{r['module']} | {r['note']} |" for r in data["rows"]]
    secs = ", ".join(f"bench.{k} {v:.0f} s" for k, v in data.get("seconds", {}).items())
    return "\n".join(lines) + f"\n\nWall time per module: {secs}.\n"


def render(sim: Path, bench: Path | None, plots_dir: Path, doc: Path, notes: Path | None = None,
           sections: Sequence[Path] = ()) -> str:
    """The markdown of docs/results.md; copies the PNG plots to ``plots_dir``; ``notes`` (a markdown file,
    optional) is included verbatim under "Notes" (how the committed run went: interruptions, load ...);
    ``sections``: markdown files (other runs: det+seg, photographs) appended verbatim, those that exist."""
    data = json.loads((sim / "metrics.json").read_text())
    rows, table, config, machine = data["rows"], data["labels_to_target"], data["config"], data["machine"]
    plots_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for png in sorted((sim / "plots").glob("*.png")):
        shutil.copyfile(png, plots_dir / png.name)
        images.append(f"![{png.stem}]({plots_dir.relative_to(doc.parent).as_posix()}/{png.name})")
    total_s = sum(float(r["seconds"]) for r in rows)
    ref_s = sum(json.loads(p.read_text())["seconds"] for p in (sim / "reference").glob("seed*.json"))
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    wall_min = data.get("seconds_this_invocation", 0) / 60
    if wall_min * 60 < 0.5 * (total_s + ref_s):
        wall_text = "The last `mtal simulate` invocation reused stored rounds; see the notes for the run's wall time."
    else:
        wall_text = f"The last `mtal simulate` invocation took {wall_min:.1f} minutes of wall time."
    notes_md = notes.read_text().strip() + "\n" if notes is not None and notes.is_file() else "_None._\n"
    extra = "".join(p.read_text().strip() + "\n\n" for p in sections if p.is_file())
    cfg = ", ".join(f"`{k}={v}`" for k, v in config.items() if k not in ("path", "strategy_options"))
    return f"""# Results

Regenerate with `scripts/results.sh` (reuses a finished simulation in `runs/simulate-default`, resumes an
interrupted one, reruns the benchmarks, rewrites this page and `docs/results/*.png`). Generated {date}.

## Machine

CPU: {machine["cpu"]} ({machine["cores"]} cores visible, torch threads {machine["threads"]}), GPU:
{machine["gpu"] or "none"}, simulation device: {machine["device"]}, torch {machine["torch"]},
Python {machine["python"]}. The machine is shared with other jobs, so times are upper bounds.

## Label efficiency (`mtal simulate --config default`)

Settings: {cfg}.

Compute: {(total_s + ref_s) / 60:.1f} minutes summed over all rounds and references ({ref_s:.0f} s of it
for the full-data references; per-round times exclude evaluation). {wall_text}

Multi-task score = mean over modalities of the metric relative to the full-data model of the same seed
(mIoU: value/full; RMSE and mean angle: full/value), so 1.0 = the model trained on every label. Labels
are (image, modality) pairs; the pool holds {config["n_images"]} images x {len(config["modalities"])}
modalities = {config["n_images"] * len(config["modalities"])} labels. "Labels to target" is read on the
seed-mean curve, interpolated linearly between rounds.

{labels_markdown(table, config["target"])}
### Reading

{reading(rows, table, config)}

### Multi-task score per round (mean ± std over seeds)

{round_table(rows)}
### Plots (mean ± std over seeds)

{chr(10).join(images)}

## Notes on this run

{notes_md}
{extra}## Benchmarks (`python -m bench.collect`)

{_bench_section(bench)}"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtal_models.simulate.results_doc")
    ap.add_argument("--sim", default="runs/simulate-default", help="finished simulation folder")
    ap.add_argument("--bench", default="runs/bench-results.json", help="bench.collect --json output")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--plots", default="docs/results", help="where the PNG plots are copied")
    ap.add_argument("--notes", default="docs/results/notes.md", help="hand-written notes included verbatim")
    sections = "docs/results/detseg.md,docs/results/photographs.md,docs/results/pool.md,docs/results/pool-pennfudan.md"
    ap.add_argument("--sections", default=sections,
                    help="comma-separated markdown files appended verbatim (those that exist)")
    args = ap.parse_args(argv)
    sim, out = Path(args.sim), Path(args.out)
    if not (sim / "metrics.json").is_file():
        raise SystemExit(f"results_doc: {sim}/metrics.json not found: run the simulation first")
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = [Path(p) for p in args.sections.split(",") if p]
    out.write_text(render(sim, Path(args.bench), Path(args.plots), out, Path(args.notes), sections))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
