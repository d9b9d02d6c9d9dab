"""Regression: training PAD-Net on two CPU threads used to kill the process inside oneDNN's AVX-512
1x1-convolution backward kernel. Importing mtal_models must prevent that (it caps oneDNN at AVX2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import torch
import mtal_models  # must come before the first convolution
from mtal_models.data import SceneConfig, SyntheticDataset
from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network
from mtal_models.training import TrainConfig, fit

torch.set_num_threads(2)
mods = build_modalities([("semantic", "segmentation", 12), ("parts", "segmentation", 3)])
ds = SyntheticDataset(3, SceneConfig(height=64, width=64), seed=0)
samples = []
for i in range(3):
    s = ds[i]
    s.labels = {"semantic": s.labels["semantic"] + 1, "parts": s.labels["parts"]}
    s.present = {"semantic": i != 1, "parts": i != 0}
    samples.append(s)
result = fit(build_network("padnet", mods, "tiny"), samples, TrainConfig(epochs=2, batch_size=3, device="cpu"))
print("trained", len(result.history))
"""


@pytest.mark.slow
def test_two_thread_training_does_not_crash() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "trained 2" in proc.stdout
