"""backend.loop.result_spool.ResultSpool: what goes in comes back, in any order, and nothing stays on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.loop.result_spool import ResultSpool


def test_round_trip_in_any_order_and_nothing_left_on_disk(tmp_path: Path) -> None:
    stored = [[{"from_name": "semantic", "value": {"rle": list(range(i * 7)), "brushlabels": ["Straße"]}}]
              for i in range(50)] + [[]]
    with ResultSpool(tmp_path) as spool:
        keys = [spool.add(r) for r in stored]
        assert os.listdir(tmp_path) == []  # an anonymous file: a crashed job leaves nothing behind
        assert len(spool) == len(stored)
        for k in [*reversed(keys), *keys[::3]]:
            assert spool.get(k) == stored[k]
        spool.get(keys[5])[0]["value"]["rle"].append(-1)  # callers get copies
        assert spool.get(keys[5]) == stored[5]
        keys.append(spool.add([{"late": True}]))  # adding after reading appends, does not overwrite
        assert spool.get(keys[-1]) == [{"late": True}] and spool.get(keys[-2]) == []
        with pytest.raises(KeyError, match="key 99"):
            spool.get(99)


def test_a_named_spool_is_read_again_by_another_process(tmp_path: Path) -> None:
    """A rank chunk spools to a named file; the merge job reopens it with the offsets the chunk saved."""
    stored = [[{"value": {"rle": [i] * i}}] for i in range(20)]
    path = tmp_path / "chunk-0.jsonl"
    with ResultSpool(path=path) as spool:
        keys = [spool.add(r) for r in stored]
        spool.sync()
        offsets = spool.offsets
    assert os.listdir(tmp_path) == ["chunk-0.jsonl"]  # kept: the merge reads it
    with ResultSpool.reopen(path, offsets) as again:
        assert len(again) == 20 and [again.get(k) for k in reversed(keys)] == stored[::-1]
        with pytest.raises(KeyError):
            again.get(20)
