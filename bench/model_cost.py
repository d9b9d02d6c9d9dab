"""PAD-Net inference cost on CPU: forward time per image and the MC-dropout overhead.

Run from the repository root: ``python -m bench.model_cost [--config default] [--size 256] [--batch 4]``.
Model: PAD-Net, semantic (13 classes) + depth + normals + edges (binary), random weights, eval mode.
Prints ``METRIC forward_ms_per_image=<v>`` (median of ``--runs`` timed forwards after warm-up, no_grad)
and ``METRIC mc_dropout_vs_forward=<ratio>`` = median time of ``mc_samples(n=8)`` / median forward time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network


def _median_seconds(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="network config preset (tiny, small, default)")
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--mc", type=int, default=8, help="MC-dropout samples")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    modalities = build_modalities(
        [
            ("semantic", "segmentation", 13),
            ("depth", "depth", 1),
            ("normals", "normals", 3),
            ("edges", "binary", 1, {"metric": "odsf"}),
        ]
    )
    net = build_network("padnet", modalities, args.config).eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    params = sum(p.numel() for p in net.parameters())
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | config {args.config} | params {params / 1e6:.2f} M | "
        f"input {args.batch}x3x{args.size}x{args.size} | mc n={args.mc}"
    )
    with torch.no_grad():
        forward_s = _median_seconds(lambda: net(images), args.runs, args.warmup)
        mc_s = _median_seconds(lambda: net.mc_samples(images, args.mc), args.runs, args.warmup)
    print(f"forward {forward_s * 1e3:.1f} ms/batch, mc_samples(n={args.mc}) {mc_s * 1e3:.1f} ms/batch")
    print(f"METRIC forward_ms_per_image={forward_s * 1e3 / args.batch:.2f}")
    print(f"METRIC mc_dropout_vs_forward={mc_s / forward_s:.3f}")


if __name__ == "__main__":
    main()
