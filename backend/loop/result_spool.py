"""Pre-annotations spooled to a temporary file while a project is ranked.

Ranking must score every task before any score is known (scores are ranks over the whole pool), so
the pre-annotations of every unlabelled task would otherwise sit in memory until the push: with
brush masks as RLE, tens of kilobytes per task and modality, a 10k-task project would hold gigabytes.
:class:`ResultSpool` writes each task's results as one JSON line to an anonymous temporary file
(already unlinked, so nothing is left behind even if the job dies) and reads them back one at a time
while the predictions are pushed in chunks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ResultSpool"]


class ResultSpool:
    """Append-then-read store of JSON lists: ``key = spool.add(results)``, later ``spool.get(key)``."""

    def __init__(self, directory: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(mode="w+b", dir=directory, prefix="mtal-spool-")  # noqa: SIM115
        self._offsets: list[int] = []
        self._end = 0

    def add(self, results: list[dict[str, Any]]) -> int:
        """Write ``results`` (JSON-serialisable); returns the key to read them back with."""
        line = json.dumps(results, separators=(",", ":")).encode() + b"\n"
        self._file.seek(self._end)
        self._file.write(line)
        self._offsets.append(self._end)
        self._end += len(line)
        return len(self._offsets) - 1

    def get(self, key: int) -> list[dict[str, Any]]:
        """The results stored under ``key`` (a fresh copy)."""
        if not 0 <= key < len(self._offsets):
            raise KeyError(f"no spooled results under key {key} ({len(self._offsets)} stored)")
        self._file.seek(self._offsets[key])
        return json.loads(self._file.readline())

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultSpool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
