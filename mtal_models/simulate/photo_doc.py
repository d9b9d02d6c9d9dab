"""Write docs/results/photographs.md (the "Real photographs" section of docs/results.md) from finished runs.

    python -m mtal_models.simulate.photo_doc --run camvid=runs/camvid --run pennfudan=runs/pennfudan \\
        [--longer camvid=runs/camvid-longer] [--notes docs/results/photographs-notes.md] \\
        --out docs/results/photographs.md --plots docs/results [--page docs/results.md]

One block per run: its settings, compute and machine, the full-data reference (and, with ``--longer``, the
same reference trained longer: how far it is from convergence), labels to the target per strategy with the
ratio to Random, the per-round tables (mean ± std over seeds), per-class IoU of CamVid's rare classes, the
plots, and each goal of issue 18 judged from the numbers. ``--notes`` (hand-written: load, interruptions,
the reading) is included verbatim. ``results_doc`` appends the page to docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtal_models.data.photos import CAMVID_CONFIGS
from mtal_models.simulate.report import aggregate, labels_markdown, labels_table, round_table

__all__ = ["goals", "main", "rare_class_table", "render_block"]

RARE = ("pole", "sign_symbol", "pedestrian", "bicyclist")
GOALS = {  # preset -> (metric key for labels-to-target, best-strategy ratio goal)
    "camvid": ("mt_score", 0.70), "camvid-2tag": ("mt_score", None), "pennfudan": ("mdsq", 0.77),
}
Row = Mapping[str, Any]


def _mean_std(values: Sequence[float]) -> str:
    a = np.array([v for v in values if v is not None and not math.isnan(v)], float)
    return "n/a" if a.size == 0 else f"{a.mean():.3f} ± {a.std():.3f}"


def rare_class_table(rows: Sequence[Row], references: Sequence[Mapping[str, Any]], dataset: str) -> str:
    """Markdown: IoU of the rare CamVid classes per strategy and round (mean ± std over seeds; a seed
    whose model and labels both miss a class on the held-out set does not count), and the reference."""
    names = CAMVID_CONFIGS.get(dataset, {})
    cols = [(m, c, names[m].index(c)) for m in names for c in RARE if c in names[m]]
    if not cols:
        return ""
    head = "| strategy | round | labels | " + " | ".join(c for _, c, _ in cols) + " |\n"
    lines = [head + "|---|---|---|" + "---|" * len(cols)]
    for name in dict.fromkeys(r["strategy"] for r in rows):
        for rnd in sorted({int(r["round"]) for r in rows if r["strategy"] == name}):
            at = [r for r in rows if r["strategy"] == name and int(r["round"]) == rnd]
            cells = [_mean_std([r.get(f"{m}_iou_{k}") for r in at]) for m, _, k in cols]
            labels = np.mean([float(r["labels"]) for r in at])
            lines.append(f"| {name} | {rnd} | {labels:.0f} | " + " | ".join(cells) + " |")
    ref_values = [[(x["metrics"][m].get("class_iou") or [None] * (k + 1))[k] for x in references] for m, _, k in cols]
    lines.append("| full-data reference | | all | " + " | ".join(_mean_std(v) for v in ref_values) + " |")
    values = [r.get(f"{m}_iou_{k}") for r in rows for m, _, k in cols] + [v for vs in ref_values for v in vs]
    if all(v is None or v == 0 or math.isnan(v) for v in values):
        return (f"IoU 0.000 for {', '.join(c for _, c, _ in cols)} in every round, strategy and seed, and for the "
                "full-data reference: at this training budget the network never predicts these classes.\n")
    return "\n".join(lines) + "\n"


def goals(preset: str, rows: Sequence[Row], table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Issue 18's goal for ``preset``, judged from the run (one markdown bullet per statement)."""
    agg = aggregate(rows, GOALS[preset][0])
    base = next((t for t in table if t["strategy"] == "random"), None)
    others = [t for t in table if t["strategy"] != "random" and t["labels_to_target"] is not None]
    out = []
    if preset in ("camvid", "pennfudan"):
        who = "BoxMask" if preset == "pennfudan" else "the best strategy (other than CoreSet, the baseline)"
        cand = [t for t in others if t["strategy"] == ("boxmask" if preset == "pennfudan" else t["strategy"])
                and t["strategy"] != "coreset"]
        goal = GOALS[preset][1]
        if base is None or base["labels_to_target"] is None:
            got = ", ".join(f"{t['strategy']} at {t['labels_to_target']:.0f}" for t in cand) or "none"
            out.append(f"{who} with <= {goal:.0%} of Random's labels: **not measurable**: Random does not reach "
                       f"the target within {base['final_labels']:.0f} labels (others reaching it: {got})."
                       if base else "Random was not run.")
        elif not cand:
            out.append(f"{who} with <= {goal:.0%} of Random's labels: **does not hold**: Random reaches the target "
                       f"at {base['labels_to_target']:.0f} labels, {who} does not reach it.")
        else:
            best = min(cand, key=lambda t: t["labels_to_target"])
            ratio = best["labels_to_target"] / base["labels_to_target"]
            verdict = "holds" if ratio <= goal else "does not hold"
            out.append(f"{who} with <= {goal:.0%} of Random's labels: **{verdict}**: {best['strategy']} "
                       f"{best['labels_to_target']:.0f} vs Random {base['labels_to_target']:.0f} labels = {ratio:.0%}.")
    if preset == "camvid" and "coreset" in agg:
        rest = [t for t in table if t["strategy"] not in ("random", "coreset")]
        reach = [t for t in rest if t["labels_to_target"] is not None]
        best_name = (min(reach, key=lambda t: t["labels_to_target"]) if reach
                     else max(rest, key=lambda t: t["final_score"], default=None))
        best_name = best_name["strategy"] if best_name else None
        if best_name is None:
            out.append("At or above CoreSet in every round: **not judged** (no strategy besides Random and CoreSet).")
        else:
            b, c = agg[best_name], agg["coreset"]
            diffs = [b["mean"][k] - c["mean"][c["round"].index(rnd)] for k, rnd in enumerate(b["round"])
                     if rnd > 0 and rnd in c["round"]]
            ok = all(d >= 0 for d in diffs)
            out.append(f"{best_name} at or above CoreSet in every round: **{'holds' if ok else 'does not hold'}** "
                       f"(differences of the seed means, rounds 1..: {', '.join(f'{d:+.3f}' for d in diffs)}).")
    if preset == "camvid-2tag" and "partal" in agg:
        pa = agg["partal"]
        for other in (n for n in agg if n not in ("partal",)):
            o = agg[other]
            diffs = [pa["mean"][k] - o["mean"][o["round"].index(rnd)] for k, rnd in enumerate(pa["round"])
                     if rnd > 0 and rnd in o["round"]]
            wins = sum(d > 0 for d in diffs)
            out.append(f"PartAL pairs vs {other} at equal labels: ahead in {wins} of {len(diffs)} rounds "
                       f"({', '.join(f'{d:+.3f}' for d in diffs)}).")
    return out


def _references(run: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run / "reference").glob("seed*.json"))]


def render_block(preset: str, run: Path, plots: Path, doc_dir: Path, longer: Path | None = None) -> str:
    """The markdown block of one finished run (``run``/metrics.json); copies its plots to ``plots``."""
    data = json.loads((run / "metrics.json").read_text())
    rows, config, machine = data["rows"], data["config"], data["machine"]
    key, _ = GOALS.get(preset, ("mt_score", None))
    table = labels_table(rows, config["target"], key=key)
    refs = _references(run)
    mods = list(config["modalities"])
    head_keys = [k for k in rows[0] if any(k == f"{m}_{h}" for m in mods for h in ("miou", "map"))]
    ref_text = "; ".join(
        f"{m} {h} {_mean_std([r['metrics'][m][h] for r in refs])}"
        for m in mods for h in ("miou", "map") if h in refs[0]["metrics"].get(m, {})
    )
    if longer is not None and (longer / "reference").is_dir():
        long_refs = _references(longer)
        steps = json.loads((longer / "config.json").read_text())["full_steps"]
        seeds = [int(p.stem[4:]) for p in sorted((longer / "reference").glob("seed*.json"))]
        m = mods[0]
        short = [r["metrics"][m]["miou"] for s, r in zip(sorted(config["seeds"]), refs, strict=False) if s in seeds]
        lng = [r["metrics"][m]["miou"] for r in long_refs]
        ref_text += (f". The same reference trained {steps} steps (seed {', '.join(map(str, seeds))}): {m} mIoU "
                     f"{np.mean(lng):.3f}, so the {config['full_steps']}-step reference is at "
                     f"{np.mean(short) / np.mean(lng):.0%} of it")
    train_s = sum(float(r["seconds"]) for r in rows) + sum(float(r["seconds"]) for r in refs)
    images = []
    for png in sorted((run / "plots").glob("*.png")):
        target = plots / f"{preset}-{png.name}"
        plots.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)
        images.append(f"![{preset} {png.stem}]({target.relative_to(doc_dir).as_posix()})")
    canvas = f"{config['image_size']} x {config['image_width'] or config['image_size']}"
    absolute = "".join(f"\n{k} (absolute, mean ± std over seeds):\n\n{round_table(rows, k)}" for k in head_keys)
    same = all(r.get(key) == r["mt_score"] for r in rows)  # det+seg with two modalities: mDSQ = the score
    score_note = " (= mDSQ here)" if same and key == "mdsq" else ""
    extra = "" if same else f"\n{key} per round (mean ± std over seeds):\n\n{round_table(rows, key)}"
    rare = rare_class_table(rows, refs, config["dataset"])
    rare_text = f"\nIoU of the rare classes per round (mean ± std over seeds):\n\n{rare}" if rare else ""
    goal_text = "\n".join(f"- {g}" for g in goals(preset, rows, table)) if preset in GOALS else ""
    return f"""### `{preset}` (`mtal simulate --config {preset}`)

Settings: {config['dataset']}, modalities {', '.join(mods)}, canvas {canvas}, pool {config['n_images'] or 'all'} /
held out {config['val_images']} images, {config['initial']:.0f} initial images + {config['rounds']} rounds x
{config['budget']} labels, strategies {', '.join(config['strategies'])}, seeds {', '.join(map(str, config['seeds']))},
net `{config['net']}`, {config['steps_per_round']} steps per round retrained from the seed's weights
(batch {config['batch_size']}, Adam lr {config['lr']:g}), reference {config['full_steps']} steps on every label.

Compute: wall time of the last `mtal simulate` invocation {data.get('seconds_this_invocation', 0) / 60:.1f}
minutes; {train_s / 60:.1f} minutes summed over the rounds (selection + training; round 0 is trained once
per seed and loaded by the other strategies) and the references (training + evaluation). Machine:
{machine['cpu']}, {machine['cores']} cores, torch threads {machine['threads']}, device {machine['device']}.

Full-data reference: {ref_text}.

Labels to {config['target']:.0%} of the full-data {'score' if key == 'mt_score' else key} per strategy:

{labels_markdown(table, config['target'])}
Score relative to the seed's full-data reference{score_note}, per round (mean ± std over seeds):

{round_table(rows)}{extra}{absolute}{rare_text}
{chr(10).join(images)}

Goals (judged from the numbers above):

{goal_text}
"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtal_models.simulate.photo_doc")
    ap.add_argument("--run", action="append", default=[], help="PRESET=FOLDER of a finished run (repeatable)")
    ap.add_argument("--longer", action="append", default=[], help="PRESET=FOLDER of a longer-trained reference")
    ap.add_argument("--notes", default="docs/results/photographs-notes.md", help="hand-written, included verbatim")
    ap.add_argument("--out", default="docs/results/photographs.md")
    ap.add_argument("--plots", default="docs/results")
    ap.add_argument("--page", default="docs/results.md", help="the page the section is appended to (image links)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    runs = dict(item.split("=", 1) for item in args.run)
    longer = dict(item.split("=", 1) for item in args.longer)
    missing = [f for f in runs.values() if not (Path(f) / "metrics.json").is_file()]
    if missing:
        raise SystemExit(f"photo_doc: no metrics.json in {missing}: run (or finish) the simulation first")
    notes = Path(args.notes)
    page_dir = Path(args.page).parent
    blocks = [render_block(p, Path(f), Path(args.plots), page_dir, Path(longer[p]) if p in longer else None)
              for p, f in runs.items()]
    notes_md = notes.read_text().strip() + "\n\n" if notes.is_file() else ""
    out.write_text("## Real photographs\n\n" + notes_md + "\n".join(blocks))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
