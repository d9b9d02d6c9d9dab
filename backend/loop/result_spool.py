"""Pre-annotations spooled to a file while a project is ranked.

Ranking must score every task before any score is known (scores are ranks over the whole pool), so
the pre-annotations of every unlabelled task would otherwise sit in memory until the push: with
brush masks as RLE, tens of kilobytes per task and modality, a 10k-task project would hold gigabytes.
:class:`ResultSpool` writes each task's results as one JSON line and reads them back one at a time
while the predictions are pushed in chunks. By default the file is anonymous (already unlinked, so
nothing is left behind even if the job dies); a chunk of a fanned-out ranking
(:mod:`backend.loop.rank_fanout`) spools to a named ``path`` in the model store instead, which the merge
job opens again with :meth:`ResultSpool.reopen` and the line offsets the chunk saved.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ResultSpool"]


class ResultSpool:
    """Append-then-read store of JSON lists: ``key = spool.add(results)``, later ``spool.get(key)``.
    ``path``: write a named file there (created or truncated) instead of an anonymous one in ``directory``."""

    def __init__(self, directory: Path | None = None, path: Path | None = None) -> None:
        if path is None:
            self._file = tempfile.TemporaryFile(mode="w+b", dir=directory, prefix="mtal-spool-")  # noqa: SIM115
        else:
            self._file = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self.path = path
        self._offsets: list[int] = []
        self._end = 0

    @classmethod
    def reopen(cls, path: Path, offsets: Sequence[int]) -> ResultSpool:
        """A spool written to ``path`` earlier (its :attr:`offsets`), to read (and append to) again."""
        spool = cls.__new__(cls)
        spool._file = open(path, "r+b")  # noqa: SIM115 - closed by close()
        spool.path = path
        spool._offsets = [int(o) for o in offsets]
        spool._end = spool._file.seek(0, os.SEEK_END)
        return spool

    @property
    def offsets(self) -> list[int]:
        """Byte offset of each key's line (what :meth:`reopen` needs)."""
        return list(self._offsets)

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

    def sync(self) -> None:
        """Flush the file to disk (a named spool, before the chunk that wrote it says it is done)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultSpool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
