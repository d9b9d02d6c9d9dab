"""The ranking's forwards hold at most /predict's FORWARD_PIXELS input pixels (and MTAL_PREDICT_BATCH images):
a batch of 32 photos at 384x512 held ~1 GB of activations and outputs in a rank worker (bench.rank_rss)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backend.loop.rank_pass as rank_pass
from backend.serving.model import MTALModel, load_schema
from backend.serving.store import ModelStore
from backend.settings import Settings
from tests.backend.loop.test_rank_contract import Ctx, DictFetcher, RecordingLS

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="semantic" toName="image">'
          '<Label value="road"/><Label value="car"/></BrushLabels></View>')


@pytest.mark.parametrize(("pixels_per_forward", "batch", "expected"), [
    (2 * 32 * 64, 32, [2, 2, 1]),  # the pixel bound: 2 inputs of 32x64 per forward
    (100 * 32 * 64, 3, [3, 2]),  # MTAL_PREDICT_BATCH below it
    (10, 32, [1, 1, 1, 1, 1]),  # an input larger than the bound: one per forward
])
def test_rank_forwards_are_bounded_like_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                pixels_per_forward: int, batch: int, expected: list[int]) -> None:
    settings = Settings(model_dir=tmp_path / "models", net_config="tiny", image_size=32, device="cpu", clusters=0,
                        predict_batch_size=batch)
    store = ModelStore(settings.model_dir, device="cpu")
    version = MTALModel("1", CONFIG, settings, store).setup()
    rng = np.random.default_rng(0)
    images = {f"/data/upload/1/{i}.png": rng.integers(0, 255, (36, 72, 3), dtype=np.uint8) for i in range(5)}
    tasks = [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(images)]
    sizes: list[int] = []
    real = rank_pass.batch_outputs

    def recording(model: Any, images: Any, given: Any, needs: Any) -> Any:
        sizes.append(int(images.shape[0]))
        assert images.shape[2:] == (32, 64)
        return real(model, images, given, needs)

    monkeypatch.setattr(rank_pass, "FORWARD_PIXELS", pixels_per_forward)
    monkeypatch.setattr(rank_pass, "batch_outputs", recording)
    ls = RecordingLS()
    summary = rank_pass.rank_tasks(Ctx(settings, store, ls, DictFetcher(images)), "1", load_schema(CONFIG), version,
                                   tasks, set())
    assert sizes == expected
    assert summary["pushed"] == 5 and len(ls.pushed) == 5
