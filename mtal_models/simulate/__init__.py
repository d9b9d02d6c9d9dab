"""Offline active-learning simulator: oracle labels, rounds with a budget in (image, modality) labels,
any registry strategy, continuous training, several seeds, resumable; CSV/JSON/PNG/markdown outputs.

    from mtal_models.simulate import load_config, simulate
    result = simulate(load_config("tiny"), "runs/tiny")

See docs/simulate.md.
"""

from mtal_models.simulate.config import PRESETS, SimConfig, load_config
from mtal_models.simulate.data import load_data
from mtal_models.simulate.report import labels_table, write_outputs
from mtal_models.simulate.rounds import initial_images, run_reference, run_strategy
from mtal_models.simulate.runner import SimResult, machine_info, simulate
from mtal_models.simulate.score import labels_to_target, task_scores
from mtal_models.simulate.sim_data import SimData

__all__ = [
    "PRESETS",
    "SimConfig",
    "SimData",
    "SimResult",
    "initial_images",
    "labels_table",
    "labels_to_target",
    "load_config",
    "load_data",
    "machine_info",
    "run_reference",
    "run_strategy",
    "simulate",
    "task_scores",
    "write_outputs",
]
