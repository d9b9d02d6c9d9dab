"""``mtal simulate`` / ``python -m mtal_models.simulate``: the offline active-learning simulator CLI.

    mtal simulate --config default --out runs/sim [--strategies random,partal] [--seeds 0,1]
                  [--rounds 5] [--budget 72] [--device auto] [--threads 2] [--no-progress]

Rerunning with the same ``--out`` resumes: finished rounds and references are not recomputed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["build_parser", "main"]


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtal simulate", description="Offline multi-task active-learning simulation.")
    p.add_argument(
        "--config", default="default",
        help="preset (tiny, default, detseg, camvid, camvid-2tag, pennfudan, ls-export) or a JSON file "
        "(default: default)",
    )
    p.add_argument("--out", required=True, help="output folder (reused to resume)")
    p.add_argument("--strategies", type=_names, help="comma-separated registry names")
    p.add_argument("--seeds", type=_ints, help="comma-separated seeds")
    p.add_argument("--rounds", type=int)
    p.add_argument("--budget", type=int, help="(image, modality) labels per round")
    p.add_argument("--n-images", dest="n_images", type=int)
    p.add_argument("--val-images", dest="val_images", type=int, help="held-out images")
    p.add_argument("--initial", type=float, help="initial labelled images: a count, or a fraction < 1 of the pool")
    p.add_argument("--image-size", dest="image_size", type=int)
    p.add_argument("--modalities", type=_names, help="comma-separated modality names (default: the config's)")
    p.add_argument("--epochs-per-round", dest="epochs_per_round", type=int)
    p.add_argument("--steps-per-round", dest="steps_per_round", type=int, help="optimizer steps per round (0 = epochs)")
    p.add_argument("--net", help="network preset: tiny, small, default")
    p.add_argument(
        "--dataset", help="synthetic, nyud, pascal, camvid, camvid-2tag, pennfudan or ls-export (a Label Studio export)"
    )
    p.add_argument("--path", "--data-dir", dest="path", help="dataset folder (all but synthetic)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = torch default)")
    p.add_argument("--semi-weight", dest="semi_weight", type=float,
                   help="semi-supervised term on the unlabelled images (0 = off; the backend's MTAL_SEMI_WEIGHT)")
    p.add_argument("--semi-class-share", dest="semi_class_share", type=float,
                   help="semi-supervised pseudo-labels: each predicted class keeps this share of its most confident "
                        "pixels below the threshold (default 0.5; 0 = off)")
    p.add_argument("--min-steps", dest="min_steps", type=int,
                   help="step budget: a training takes max(min_steps, steps_per_label x labelled images) steps")
    p.add_argument("--steps-per-label", dest="steps_per_label", type=float, help="step budget (see --min-steps)")
    p.add_argument("--pretrain-steps", dest="pretrain_steps", type=int,
                   help="cold start: pretrain each seed's trunk on the pool this many steps first (0 = off)")
    p.add_argument("--initial-strategy", dest="initial_strategy", choices=("random", "typiclust"),
                   help="how round 0's images are chosen (typiclust: typical images of the pool's clusters)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, readers: Mapping[str, Callable[[Any], Any]] | None = None) -> int:
    """Entry point; ``argv`` may start with the sub-command ``simulate``. ``readers``: extra datasets
    (name -> reader(config) -> SimData) registered before the config is read; the ``mtal`` command passes
    the Label Studio export reader this way (``backend.cli``)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "simulate":
        args_in = args_in[1:]
    args = build_parser().parse_args(args_in)
    from mtal_models.simulate.config import load_config, register_dataset
    from mtal_models.simulate.report import labels_markdown
    from mtal_models.simulate.runner import simulate

    overrides = {
        k: getattr(args, k)
        for k in (
            "strategies",
            "seeds",
            "rounds",
            "budget",
            "n_images",
            "val_images",
            "initial",
            "image_size",
            "modalities",
            "epochs_per_round",
            "steps_per_round",
            "net",
            "dataset",
            "path",
            "device",
            "threads",
            "semi_weight",
            "semi_class_share",
            "min_steps",
            "steps_per_label",
            "pretrain_steps",
            "initial_strategy",
        )
    }
    try:
        for name, reader in (readers or {}).items():
            register_dataset(name, reader)
        config = load_config(args.config, **overrides)
        result = simulate(config, args.out, progress=args.progress)
    except ValueError as e:
        print(f"mtal simulate: error: {e}", file=sys.stderr)
        return 2
    print(labels_markdown(result.table, config.target))
    print(f"wrote {args.out} in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
