"""Shared fixtures of the model-core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread for the tiny nets of these tests: on a 2-core machine shared with other
    processes, a second thread only adds contention (measured 20-25x slower per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
