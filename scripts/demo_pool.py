"""``make demo-pool``: what learning from the unlabelled pool changes in the demo's prefill (issues #25, #30).

Runs the demo (``scripts/demo.py --no-wait``) once per arm, each in a fresh Label Studio and backend with the
same project, annotations and training, and prints the edit cost of the prefill after training on the tasks
left to label, side by side:

    off       MTAL_SEMI_WEIGHT=0, MTAL_PRETRAIN_MINUTES=0 (the defaults)
    semi      MTAL_SEMI_WEIGHT=<--semi-weight>: every training also learns from the unlabelled tasks
    pretrain  MTAL_PRETRAIN_MINUTES=<--pretrain-minutes>: the cold start pretrains before any label

Every other option goes to the demo as is (``--data``, ``--epochs``, ...)::

    DEMO_DATA=../shared/datasets/camvid make demo-pool
    python scripts/demo_pool.py --arms off,semi --data ../shared/datasets/camvid --out runs/demo-pool

The arms run one after the other (about the demo's time each, plus the pretrain's minutes); the summary of
each arm is kept in ``--out`` and an arm whose summary is there is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = (("pixels to repaint (mask edit share)", "mask_edit_share", "{:.1%}"),
        ("box precision at IoU 0.5", "box_precision", "{:.2f}"),
        ("box recall at IoU 0.5", "box_recall", "{:.2f}"),
        ("boxes to delete per task", "boxes_to_delete_per_image", "{:.1f}"),
        ("boxes to draw per task", "boxes_to_draw_per_image", "{:.1f}"))


def arm_flags(arm: str, args: argparse.Namespace) -> list[str]:
    """The demo options of one arm (``off``, ``semi`` or ``pretrain``)."""
    flags = {"off": ["--semi-weight", "0", "--pretrain-minutes", "0"],
             "semi": ["--semi-weight", str(args.semi_weight), "--pretrain-minutes", "0"],
             "pretrain": ["--semi-weight", "0", "--pretrain-minutes", str(args.pretrain_minutes)]}
    if arm not in flags:
        raise SystemExit(f"unknown arm {arm!r}: choose from {sorted(flags)}")
    return flags[arm]


def table(summaries: dict[str, dict]) -> str:
    """Markdown rows: the edit cost after training per arm (and before training, from the first arm)."""
    arms = list(summaries)
    first = summaries[arms[0]]
    lines = ["| edit cost after training | before training | " + " | ".join(arms) + " |",
             "|---|---|" + "---|" * len(arms)]
    for label, key, fmt in ROWS:
        values = [first["before"].get(key, float("nan"))] + [s["after"].get(key, float("nan"))
                                                              for s in summaries.values()]
        if all(v != v for v in values):
            continue  # no such modality in this project
        lines.append(f"| {label} | " + " | ".join(fmt.format(v) if v == v else "n/a" for v in values) + " |")
    seconds = [str(s.get("metrics", {}).get("train_seconds", "?")) for s in summaries.values()]
    lines.append("| training seconds | – | " + " | ".join(seconds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo_pool.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", default="off,semi,pretrain", help="comma-separated: off, semi, pretrain")
    p.add_argument("--semi-weight", type=float, default=1.0, help="MTAL_SEMI_WEIGHT of the semi arm (default 1)")
    p.add_argument("--pretrain-minutes", type=float, default=5.0,
                   help="MTAL_PRETRAIN_MINUTES of the pretrain arm (default 5)")
    p.add_argument("--out", type=Path, default=Path("~/.cache/mtal/demo-pool"), help="summaries (JSON) per arm")
    args, demo_args = p.parse_known_args(argv)
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        summary = out / f"{arm}.json"
        if not summary.exists():
            print(f"[demo-pool] arm {arm}: scripts/demo.py {' '.join(arm_flags(arm, args) + demo_args)}", flush=True)
            cmd = [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--no-wait", "--summary", str(summary),
                   *arm_flags(arm, args), *demo_args]
            if subprocess.run(cmd, env=os.environ.copy(), check=False).returncode != 0 or not summary.exists():
                print(f"[demo-pool] arm {arm} failed (see its output above)", file=sys.stderr)
                return 1
        summaries[arm] = json.loads(summary.read_text())
    print(table(summaries), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
