"""What the semi-supervised term costs per training step, and the memory of streaming a large pool.

Run from the repository root: ``python -m bench.train_cost [--config tiny] [--size 96] [--batch 4]
[--steps 12] [--pool 1000] [--threads N]``.
Model: PAD-Net, semantic (12 classes) + depth, random weights, CPU. Two ``fit`` runs on the same
labelled images in one process, one with ``unlabelled`` (a pool of the same batch size per step) and
one without; a step's time is read between consecutive ``progress`` calls (the first two steps of each
run are warm-up and dropped).
Prints ``METRIC semi_vs_supervised_step_s=<ratio>`` (median step with the unlabelled branch over median
step without; target <= 2.5), ``METRIC supervised_step_s`` and ``METRIC semi_step_s``; then, in a fresh
subprocess, a run whose pool is ``--pool`` PNG files on disk (:class:`mtal_models.data.unlabelled.ImageFiles`,
streamed, never held), ``METRIC pool_stream_peak_rss_mb=<MB>`` (peak resident memory of that process) and
``METRIC supervised_peak_rss_mb`` (the same run without the pool, for comparison).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtal_models.data.files import save_png
from mtal_models.data.sample import Sample
from mtal_models.data.unlabelled import ImageFiles
from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network
from mtal_models.training import TrainConfig, fit

MODALITIES = build_modalities([("semantic", "segmentation", 12), ("depth", "depth", 1)])


def _labelled(n: int, size: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        labels = {"semantic": rng.integers(0, 12, (size, size)).astype(np.int64),
                  "depth": rng.uniform(0.5, 5, (size, size)).astype(np.float32)}
        out.append(Sample(f"l{i}", image, labels, {"semantic": True, "depth": True}))
    return out


def _step_times(args: argparse.Namespace, unlabelled: object | None) -> list[float]:
    torch.manual_seed(0)
    model = build_network("padnet", MODALITIES, args.config)
    stamps: list[float] = []
    cfg = TrainConfig(epochs=1, batch_size=args.batch, device="cpu", seed=0)
    train = _labelled(args.batch * args.steps, args.size)
    start = time.perf_counter()
    fit(model, train, cfg, unlabelled=unlabelled, progress=lambda *_: stamps.append(time.perf_counter()))  # type: ignore[arg-type]
    times = np.diff([start, *stamps]).tolist()
    return times[2:]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_child(args: argparse.Namespace) -> None:
    """One run streaming ``--pool`` PNGs from a temp folder (or none with --pool 0); prints its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        rng = np.random.default_rng(1)
        for i in range(args.pool):
            p = Path(tmp) / f"u{i:05d}.png"
            save_png(p, rng.integers(0, 256, (args.photo[0], args.photo[1], 3), dtype=np.uint8))
            paths.append(p)
        pool = ImageFiles(paths, size=(args.size, args.size)) if paths else None
        times = _step_times(args, pool)
        name = "pool_stream_peak_rss_mb" if pool is not None else "supervised_peak_rss_mb"
        print(f"METRIC {name}={_rss_mb():.0f}")
        print(f"# rss child: pool {args.pool} photos {args.photo[0]}x{args.photo[1]} -> {args.size}px, "
              f"{len(times) + 2} steps")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="network config preset (tiny, small, default)")
    parser.add_argument("--size", type=int, default=96, help="training image height and width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pool", type=int, default=1000, help="PNG files streamed in the RSS run (0 = skip)")
    parser.add_argument("--photo", type=int, nargs=2, default=(360, 480), help="stored photo height width")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        _rss_child(args)
        return
    pool = [Sample(s.id, s.image) for s in _labelled(64, args.size, seed=7)]
    sup, semi = [], []
    for _ in range(2):  # alternate the two runs so machine load hits both alike
        sup += _step_times(args, None)
        semi += _step_times(args, pool)
    s, u = statistics.median(sup), statistics.median(semi)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; padnet {args.config}, {args.size}px, "
          f"batch {args.batch}, {len(sup)} + {len(semi)} timed steps")
    print(f"METRIC supervised_step_s={s:.4f}")
    print(f"METRIC semi_step_s={u:.4f}")
    print(f"METRIC semi_vs_supervised_step_s={u / s:.2f}")
    if args.pool > 0:
        common = [sys.executable, "-m", "bench.train_cost", "--rss-child", "--config", args.config, "--size",
                  str(args.size), "--batch", str(args.batch), "--steps", str(args.steps), "--threads",
                  str(args.threads), "--photo", *map(str, args.photo)]
        for n in (args.pool, 0):
            done = subprocess.run([*common, "--pool", str(n)], capture_output=True, text=True, check=True)
            print(done.stdout, end="")


if __name__ == "__main__":
    main()
