"""PAD-Net inference cost on CPU: forward time per image and the MC-dropout overhead.

Run from the repository root: ``python -m bench.model_cost [--config default] [--size 256] [--batch 4]
[--threads N]``.
Model: PAD-Net, semantic (13 classes) + depth + normals + edges (binary), random weights, eval mode.
Prints ``METRIC forward_ms_per_image=<v>`` (median of ``--runs`` timed forwards after warm-up, no_grad,
interleaved with the MC runs)
and ``METRIC mc_dropout_vs_forward=<ratio>`` = median time of ``mc_samples(n=8)`` / median forward time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network


def _median_seconds(fns: list[Callable[[], object]], runs: int, warmup: int) -> list[float]:
    """Median wall time of each function; runs are interleaved so machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="network config preset (tiny, small, default)")
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--mc", type=int, default=8, help="MC-dropout samples")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

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
        f"cpus {os.cpu_count()} | threads {torch.get_num_threads()} | config {args.config} | "
        f"params {params / 1e6:.2f} M | "
        f"input {args.batch}x3x{args.size}x{args.size} | mc n={args.mc}"
    )
    with torch.no_grad():
        fns = [lambda: net(images), lambda: net.mc_samples(images, args.mc)]
        forward_s, mc_s = _median_seconds(fns, args.runs, args.warmup)
    print(f"forward {forward_s * 1e3:.1f} ms/batch, mc_samples(n={args.mc}) {mc_s * 1e3:.1f} ms/batch")
    print(f"METRIC forward_ms_per_image={forward_s * 1e3 / args.batch:.2f}")
    print(f"METRIC mc_dropout_vs_forward={mc_s / forward_s:.3f}")


if __name__ == "__main__":
    main()
