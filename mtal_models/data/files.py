"""File helpers shared by readers and writers: every failure names the file.

Also the partial-label mask file: one row per image id, one 0/1 column per modality, e.g.::

    id,semantic,depth,normals
    0001,1,0,1
    0002,0,1,1

Commas or whitespace separate fields; the header is required; modalities without a column count as
labelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataError",
    "find_file",
    "load_image",
    "load_json",
    "load_npy",
    "load_png_label",
    "read_ids",
    "read_label_mask",
    "save_png",
    "write_label_mask",
]


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent (the message names the file)."""


def find_file(directory: Path, stem: str, exts: Sequence[str]) -> Path:
    """The first existing ``directory/stem.ext``; DataError naming the expected path otherwise."""
    for ext in exts:
        p = directory / f"{stem}.{ext}"
        if p.is_file():
            return p
    want = directory / f"{stem}.{exts[0]}" if len(exts) == 1 else directory / f"{stem}.{{{','.join(exts)}}}"
    raise DataError(f"missing file {want}")


@contextmanager
def _reading(path: Path, kind: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Turn a missing or unreadable file into a DataError naming it (``kind``: "image", "label", ...)."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except errors as e:
        raise DataError(f"corrupt {kind} file {path}: {e}") from None


_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError)


def load_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    with _reading(path, "image", _IMAGE_ERRORS), Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_png_label(path: Path) -> np.ndarray:
    """Integer [H, W] from a single-channel or palette PNG (palette indices, not colours)."""
    with _reading(path, "label", _IMAGE_ERRORS), Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise DataError(f"label file {path} has mode {im.mode}; expected a single-channel or palette PNG")
        return np.asarray(im, dtype=np.int64).copy()


def load_npy(path: Path) -> np.ndarray:
    with _reading(path, "array", (ValueError, OSError, EOFError)):
        return np.load(path, allow_pickle=False)


def load_json(path: Path) -> Any:
    with _reading(path, "JSON", (json.JSONDecodeError, UnicodeDecodeError, OSError)):
        return json.loads(Path(path).read_text())



def save_png(path: Path, array: np.ndarray) -> None:
    """Write uint8 [H, W] or [H, W, 3] RGB losslessly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def read_ids(path: Path) -> list[str]:
    """Ids from a split file: one per line, blank lines skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"missing split file {path}") from None
    ids = [ln.strip() for ln in lines if ln.strip()]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise DataError(f"split file {path} lists ids more than once: {dup[:10]}")
    return ids


def read_label_mask(path: Path, ids: Sequence[str], modalities: Sequence[str]) -> np.ndarray:
    """bool [len(ids), len(modalities)] from a partial-label mask file (see module docstring).

    Raises DataError naming the file for an unknown modality column, a value other than 0/1, or ids of
    ``ids`` without a row. Rows for ids outside ``ids`` are ignored (a mask may cover several splits).
    """
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"missing label mask file {path}") from None
    if not lines:
        raise DataError(f"label mask file {path} is empty")

    def split(line: str) -> list[str]:
        return [f.strip() for f in (line.split(",") if "," in line else line.split())]

    header = split(lines[0])
    if header[0] != "id":
        raise DataError(f"label mask file {path}: the header must start with 'id', got {header[0]!r}")
    unknown = [c for c in header[1:] if c not in modalities]
    if unknown:
        raise DataError(f"label mask file {path}: unknown modality column(s) {unknown}; known: {list(modalities)}")
    rows: dict[str, list[str]] = {}
    for n, line in enumerate(lines[1:], start=2):
        f = split(line)
        if len(f) != len(header) or any(v not in ("0", "1") for v in f[1:]):
            raise DataError(f"label mask file {path} line {n}: expected id and {len(header) - 1} values of 0/1")
        rows[f[0]] = f[1:]
    missing = [i for i in ids if i not in rows]
    if missing:
        raise DataError(f"label mask file {path} has no row for {len(missing)} id(s): {missing[:20]}")
    mask = np.ones((len(ids), len(modalities)), bool)
    cols = [list(modalities).index(c) for c in header[1:]]
    for r, i in enumerate(ids):
        mask[r, cols] = [v == "1" for v in rows[i]]
    return mask


def write_label_mask(path: Path, ids: Sequence[str], modalities: Sequence[str], mask: np.ndarray) -> None:
    """Write ``mask`` bool [len(ids), len(modalities)] as a CSV label mask file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["id", *modalities])]
    lines += [",".join([i, *("1" if v else "0" for v in row)]) for i, row in zip(ids, mask, strict=True)]
    path.write_text("\n".join(lines) + "\n")
