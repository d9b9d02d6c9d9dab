"""ImageFiles: image-only samples decoded one at a time from disk (the semi-supervised pool)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtal_models.data.files import DataError, save_png
from mtal_models.data.unlabelled import ImageFiles


def test_reads_lazily_resizes_and_names_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        save_png(paths[-1], rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    pool = ImageFiles(paths, size=(12, 16))
    assert len(pool) == 3 and pool.ids == ["img0", "img1", "img2"]
    s = pool[1]
    assert s.id == "img1" and s.image.shape == (12, 16, 3) and s.image.dtype == np.uint8 and s.labels == {}
    assert ImageFiles(paths[:1])[0].image.shape == (30, 40, 3)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="img2"):
        pool[2]
    with pytest.raises(ValueError, match="ids"):
        ImageFiles(paths, ids=["a"])
