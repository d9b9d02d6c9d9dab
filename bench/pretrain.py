"""Benchmark of the self-supervised start: ``python -m bench.pretrain``.

Pretrains the default network (PAD-Net, ResNet-18 widths; ``--net``) on a pool of synthetic photo-sized
images (CamVid's 360 x 480, uint8, random but smooth) at the default view size (two 96 x 128 views per
image, batch 8) for ``--steps`` steps after ``--warmup`` untimed ones, and prints

    METRIC pretrain_images_per_s=<pool images per second of training; each image gives two views>
    METRIC pretrain_peak_rss_mb=<peak resident memory of the process>

with the steps run, the seconds, the loss and the torch thread count. ``--threads`` (default 1, the
shared development machine) sets torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network
from mtal_models.training.pretrain import PretrainConfig, pretrain


def _pool(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """n smooth random uint8 [H, W, 3] images (low-resolution noise upsampled), like photos in size."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, height // 16, width // 16, generator=gen)
    out = []
    for i in range(n):
        img = torch.nn.functional.interpolate(low[i : i + 1], size=(height, width), mode="bilinear")[0]
        out.append((img.permute(1, 2, 0) * 255).to(torch.uint8).numpy())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="default", help="network preset (tiny, small, default)")
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    modalities = build_modalities([("semantic", "segmentation", 12)])
    torch.manual_seed(0)
    model = build_network("padnet", modalities, args.net)
    pool = _pool(args.pool, args.height, args.width)
    config = PretrainConfig(steps=args.warmup, budget_s=0, batch_size=args.batch, min_images=min(32, args.pool))
    warm = pretrain(model, pool, config)
    t0 = time.perf_counter()
    timed = PretrainConfig(**{**config.to_dict(), "steps": args.warmup + args.steps})
    result = pretrain(model, pool, timed, start=warm.state())
    elapsed = time.perf_counter() - t0
    rate = args.steps * args.batch / elapsed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"net {args.net}, pool {args.pool} x {args.height}x{args.width}, views {config.view_size}, batch "
          f"{args.batch}, {args.steps} timed steps in {elapsed:.1f} s, loss {result.losses[0]:.3f} -> "
          f"{result.losses[-1]:.3f}, torch threads {torch.get_num_threads()}")
    print(f"METRIC pretrain_images_per_s={rate:.2f}")
    print(f"METRIC pretrain_peak_rss_mb={peak:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
