"""Command line: ``python -m mtal_models.data {synth-nyud,synth-tasks,grid} ...`` (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mtal_models.data.readers import read_mtan, read_nyud, read_pascal
from mtal_models.data.synth import SceneConfig, SyntheticDataset
from mtal_models.data.viz import save_grid
from mtal_models.data.writers import write_nyud, write_tasks


def _synth(args: argparse.Namespace) -> SyntheticDataset:
    cfg = SceneConfig(height=args.size, width=args.size, objects=(args.min_objects, args.max_objects),
                      occlusion=args.occlusion, noise=args.noise)
    return SyntheticDataset(args.n, cfg, seed=args.seed)


def _add_synth_args(p: argparse.ArgumentParser, n: int) -> None:
    p.add_argument("--n", type=int, default=n, help="number of scenes")
    p.add_argument("--size", type=int, default=128, help="image height and width (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-objects", type=int, default=3)
    p.add_argument("--max-objects", type=int, default=8)
    p.add_argument("--occlusion", type=float, default=0.3)
    p.add_argument("--noise", type=float, default=0.02)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtal_models.data", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("synth-nyud", help="write synthetic scenes in the NYUD_MT layout")
    p.add_argument("out")
    p.add_argument("--split", default="train")
    _add_synth_args(p, 100)
    p = sub.add_parser("synth-tasks", help="synthetic NYUD_MT folder + Label Studio tasks.json")
    p.add_argument("out")
    p.add_argument("--split", default="train")
    p.add_argument("--url-prefix", default="/data/local-files/?d=",
                   help="prepended to each file path relative to OUT (e.g. /data/local-files/?d=synth/)")
    _add_synth_args(p, 100)
    p = sub.add_parser("grid", help="render a PNG grid of samples with every modality coloured")
    p.add_argument("out")
    p.add_argument("--from", dest="source", default=None, help="dataset folder (default: synthetic scenes)")
    p.add_argument("--layout", choices=("nyud", "pascal", "mtan"), default="nyud")
    p.add_argument("--split", default="train")
    p.add_argument("--cell", type=int, default=128, help="cell size in the grid (px)")
    _add_synth_args(p, 8)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as e:  # DataError included: the message names the file
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "synth-nyud":
        ds = _synth(args)
        write_nyud((ds[i] for i in range(len(ds))), args.out, ds.modalities, args.split)
        print(f"wrote {len(ds)} scenes to {args.out} (NYUD_MT layout, split {args.split})")
    elif args.cmd == "synth-tasks":
        ds = _synth(args)
        write_nyud((ds[i] for i in range(len(ds))), args.out, ds.modalities, args.split)
        tasks = write_tasks(args.out, args.split, args.url_prefix)
        print(f"wrote {len(tasks)} tasks to {args.out}/tasks.json")
    else:
        if args.source is None:
            ds = _synth(args)
        else:
            ds = {"nyud": read_nyud, "pascal": read_pascal, "mtan": read_mtan}[args.layout](args.source, args.split)
        n = min(args.n, len(ds))
        save_grid(args.out, [ds[i] for i in range(n)], ds.modalities, args.cell)
        print(f"wrote a grid of {n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
