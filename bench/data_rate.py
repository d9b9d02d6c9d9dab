"""Scene generator throughput on one core: prints ``METRIC scenes_per_s=<value>`` for 128x128 scenes.

Run: ``python -m bench.data_rate [--n 200] [--size 128]``. Target: >= 17 scenes/s (1000 in under a minute).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402

from mtal_models.data.synth import SceneConfig, SyntheticDataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    ds = SyntheticDataset(args.n + 5, SceneConfig(height=args.size, width=args.size), seed=0)
    for i in range(5):  # warm-up
        ds[args.n + i]
    t0 = time.perf_counter()
    for i in range(args.n):
        ds[i]
    dt = time.perf_counter() - t0
    print(f"{args.n} scenes of {args.size}x{args.size} in {dt:.2f} s on one core")
    print(f"METRIC scenes_per_s={args.n / dt:.1f}")


if __name__ == "__main__":
    main()
