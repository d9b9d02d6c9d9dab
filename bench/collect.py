"""Run every ``bench.*`` module and collect their ``METRIC`` lines into one table (``make bench``).

    python -m bench.collect [--out bench-results.md] [--json F] [--only model_cost,strategies] [--skip loop]
                            [--module-args "loop=--sizes 1000"] [--timeout 900]

Each module runs as ``python -m bench.<name>`` in its own subprocess (from the repository root), one
after the other, so they do not compete for the CPU. A line ``METRIC <name> <value>`` or
``METRIC <name>=<value>`` (anywhere in stdout or stderr) becomes a row ``| name | value | module |``.
A module that fails or times out gets a row saying so (and its last stderr line); the exit status is 1
when any module failed. The markdown table is printed and written to ``--out``; ``--json`` writes the
rows as JSON too.
"""

from __future__ import annotations

import argparse
import json
import pkgutil
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Metric", "bench_modules", "collect", "main", "parse_metrics", "to_markdown"]

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"collect", "__main__", "fake_ls"}
_LINE = re.compile(r"^\s*METRIC\s+([A-Za-z0-9_.:/\-]+)\s*(?:=\s*|\s+)(\S+)(?:\s+(.*))?$")


@dataclass
class Metric:
    """One collected figure: ``value`` as printed (kept as text so units and 'n/a' survive)."""

    name: str
    value: str
    module: str
    note: str = ""


def parse_metrics(text: str, module: str) -> list[Metric]:
    """The ``METRIC`` lines of ``text`` (both ``METRIC a 1.0`` and ``METRIC a=1.0``; trailing words = note)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(Metric(m.group(1), m.group(2), module, (m.group(3) or "").strip()))
    return out


def bench_modules() -> list[str]:
    """Names of the ``bench`` package's benchmark modules, sorted: those whose source prints ``METRIC``
    lines (helpers such as ``bench.fake_ls`` and this collector are left out)."""
    names = []
    for m in pkgutil.iter_modules([str(ROOT / "bench")]):
        path = ROOT / "bench" / f"{m.name}.py"
        if m.name not in SKIP and path.is_file() and "METRIC" in path.read_text():
            names.append(m.name)
    return sorted(names)


def parse_module_args(items: Sequence[str]) -> dict[str, list[str]]:
    """``["loop=--sizes 1000 --image-size 32"]`` -> ``{"loop": ["--sizes", "1000", "--image-size", "32"]}``."""
    out = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--module-args: expected NAME=ARGS, got {item!r}")
        out[name.strip()] = shlex.split(rest)
    return out


def run_module(name: str, timeout: float, args: Sequence[str] = ()) -> tuple[list[Metric], float]:
    """Run ``python -m bench.<name>``; returns its metrics (a ``FAILED`` row when it fails) and seconds."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return [Metric("(module)", "TIMEOUT", name, f"killed after {timeout:.0f} s")], time.perf_counter() - start
    seconds = time.perf_counter() - start
    metrics = parse_metrics(proc.stdout + "\n" + proc.stderr, name)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no stderr"])[-1]
        metrics.append(Metric("(module)", "FAILED", name, f"exit {proc.returncode}: {last[:200]}"))
    return metrics, seconds


def to_markdown(rows: Sequence[Metric]) -> str:
    lines = ["| name | value | module | note |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.value} | bench.{r.module} | {r.note} |" for r in rows]
    return "\n".join(lines) + "\n"


def collect(
    modules: Sequence[str], timeout: float, module_args: dict[str, list[str]] | None = None
) -> tuple[list[Metric], dict[str, float]]:
    """Run ``modules`` one after the other (``module_args[name]`` on the command line); returns all rows and
    each module's wall time."""
    rows: list[Metric] = []
    times: dict[str, float] = {}
    for name in modules:
        args = (module_args or {}).get(name, [])
        print(f"[bench.collect] running bench.{name} {' '.join(args)}", file=sys.stderr, flush=True)
        metrics, times[name] = run_module(name, timeout, args)
        if args:
            for m in metrics:
                m.note = (m.note + f" (args: {' '.join(args)})").strip()
        rows.extend(metrics)
    return rows, times


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.collect", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-results.md", help="markdown file to write")
    ap.add_argument("--json", default="", help="also write the rows as JSON here")
    ap.add_argument("--only", default="", help="comma-separated module names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated module names to leave out")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per module")
    ap.add_argument("--module-args", action="append", default=[], help='e.g. "loop=--sizes 1000" (repeatable)')
    args = ap.parse_args(argv)
    try:
        module_args = parse_module_args(args.module_args)
    except ValueError as e:
        print(f"bench.collect: {e}", file=sys.stderr)
        return 2
    available = bench_modules()
    skip = {m.strip() for m in args.skip.split(",") if m.strip()}
    modules = [m for m in ([m.strip() for m in args.only.split(",") if m.strip()] or available) if m not in skip]
    unknown = [m for m in modules if m not in available]
    if unknown:
        print(f"bench.collect: unknown module(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    rows, times = collect(modules, args.timeout, module_args)
    table = to_markdown(rows)
    print(table)
    Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows], "seconds": times}, indent=1))
    return 1 if any(r.value in ("FAILED", "TIMEOUT") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
