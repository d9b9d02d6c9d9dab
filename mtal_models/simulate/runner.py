"""``simulate(config, out)``: references, every (strategy, seed) run, then the outputs."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtal_models.simulate.config import SimConfig
from mtal_models.simulate.data import load_data
from mtal_models.simulate.report import labels_table, write_outputs
from mtal_models.simulate.rounds import run_reference, run_strategy
from mtal_models.training import resolve_device

__all__ = ["SimResult", "machine_info", "simulate"]


@dataclass
class SimResult:
    """rows: one dict per (strategy, seed, round); table: labels-to-target per strategy; paths: outputs."""

    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    paths: dict[str, Path]
    seconds: float


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """CPU model, cores, torch version, GPU name or None."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0],
        "gpu": gpu, "device": str(device) if device is not None else None, "threads": torch.get_num_threads(),
    }  # fmt: skip


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="simulate", unit="round", disable=not enabled, dynamic_ncols=True)


def simulate(config: SimConfig, out: str | Path, progress: bool = True) -> SimResult:
    """Run (or resume) the whole experiment in ``out``; see :mod:`mtal_models.simulate.rounds`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    start = time.perf_counter()
    data = load_data(config)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    total = len(config.seeds) * (1 + len(config.strategies) * (config.rounds + 1))
    rows: list[dict[str, Any]] = []
    with _bar(total, progress) as bar:

        def tick(message: str) -> None:
            bar.set_postfix_str(message, refresh=False)
            bar.update(1)

        for seed in config.seeds:
            bar.set_postfix_str(f"full-data reference, seed {seed}")
            reference = run_reference(config, data, seed, out)["metrics"]
            tick(f"reference seed {seed} done")
            for name in config.strategies:
                rows.extend(run_strategy(config, data, name, seed, reference, out, tick))
        bar.n = total
        bar.refresh()
    seconds = time.perf_counter() - start
    extra = {"config": config.to_dict(), "machine": machine_info(device), "seconds_this_invocation": seconds}
    paths = write_outputs(rows, data.modalities, config.target, out, extra)
    return SimResult(rows, labels_table(rows, config.target), paths, seconds)
