"""Benchmark of the diversity distance (MTAL-WACV div(x), CoreSet): ``python -m bench.strategies``.

Pool 100k x labelled 10k, 512-d float32 codes (inputs alone: 195 MB + 20 MB). The distance matrix
(100k x 10k x 4 B = 4 GB) is never materialised: :func:`nearest_distance` works in row x column chunks.
Prints ``METRIC diversity_100k_x_10k_s`` (wall time) and ``METRIC diversity_peak_mb`` (peak resident
memory added by the computation above the inputs, measured with getrusage's max RSS, so it includes
torch's own buffers; tracemalloc cannot see torch allocations).

Options: ``--pool``, ``--labelled``, ``--dim``, ``--chunk``, ``--threads``. If the full size would take
longer than ``--max-s`` (estimated from a 10k x 10k run), the full size is skipped and an extrapolation,
clearly labelled, is printed instead.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch

from mtal_models.strategies.diversity import nearest_distance


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(pool: int, labelled: int, dim: int, chunk: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(pool, dim, generator=gen)
    y = torch.randn(labelled, dim, generator=gen)
    base = _rss_mb()
    t0 = time.perf_counter()
    d = nearest_distance(x, y, chunk, chunk)
    elapsed = time.perf_counter() - t0
    peak = max(_rss_mb() - base, 0.0)
    # sanity: compare a few rows with a direct computation
    check = torch.cdist(x[:64], y).min(dim=1).values
    if not torch.allclose(d[:64], check, rtol=1e-4, atol=1e-3):
        raise RuntimeError("chunked nearest distance disagrees with torch.cdist")
    return elapsed, peak


def _measure(pool: int, labelled: int, dim: int, chunk: int, threads: int) -> tuple[float, float]:
    """Run one size in a fresh process so max-RSS readings of different sizes do not mix."""
    cmd = [sys.executable, "-m", "bench.strategies", "--child", "--pool", str(pool), "--labelled", str(labelled),
           "--dim", str(dim), "--chunk", str(chunk), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    elapsed, peak = res.stdout.split()[-2:]
    return float(elapsed), float(peak)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--labelled", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--max-s", type=float, default=600.0, help="skip the full size if estimated slower")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(*_run(args.pool, args.labelled, args.dim, args.chunk))
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, chunk {args.chunk}x{args.chunk}")
    small = min(args.pool, 10_000)
    t_small, p_small = _measure(small, args.labelled, args.dim, args.chunk, args.threads)
    print(f"diversity {small}x{args.labelled}x{args.dim}: {t_small:.2f} s, peak +{p_small:.0f} MB")
    estimate = t_small * args.pool / small
    if small == args.pool:
        t_full, p_full = t_small, p_small
    elif estimate > args.max_s:
        print(f"EXTRAPOLATED (not measured) diversity_{args.pool}x{args.labelled}: ~{estimate:.0f} s")
        print(f"METRIC diversity_peak_mb={p_small:.0f}  # measured at {small} x {args.labelled}")
        return 0
    else:
        t_full, p_full = _measure(args.pool, args.labelled, args.dim, args.chunk, args.threads)
    inputs_mb = (args.pool + args.labelled) * args.dim * 4 / 2**20
    print(f"inputs {inputs_mb:.0f} MB; full matrix would be {args.pool * args.labelled * 4 / 2**20:.0f} MB")
    full = (args.pool, args.labelled, args.dim) == (100_000, 10_000, 512)
    name = "diversity_100k_x_10k_s" if full else f"diversity_{args.pool}_x_{args.labelled}_d{args.dim}_s"
    print(f"METRIC {name}={t_full:.2f}")
    print(f"METRIC diversity_peak_mb={p_full:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
