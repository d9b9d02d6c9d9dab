"""scripts/overlay.py draws a task's pre-annotation beside its ground truth over the photo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from backend.labelstudio.convert import mask_to_rle
from tests.support.mtal_processes import REPO_ROOT

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="seg" toName="image"><Label value="road"/></BrushLabels>
<RectangleLabels name="boxes" toName="image"><Label value="car"/></RectangleLabels></View>"""


def test_overlay_side_by_side(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "config.xml").write_text(CONFIG)
    mask = np.zeros((40, 60), bool)
    mask[20:, :] = True
    brush = {"from_name": "seg", "to_name": "image", "type": "brushlabels", "original_width": 60,
             "original_height": 40, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["road"]}}
    rect = {"from_name": "boxes", "to_name": "image", "type": "rectanglelabels", "original_width": 60,
            "original_height": 40, "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rectanglelabels": ["car"]}}
    task = {"id": 1, "data": {"image": "photo.png"}, "predictions": [{"result": [rect]}],
            "annotations": [{"id": 1, "result": [brush]}]}
    (tmp_path / "task.json").write_text(json.dumps(task))
    out = tmp_path / "overlay.png"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "overlay.py"), "--image", str(tmp_path / "photo.png"),
                    "--config", str(tmp_path / "config.xml"), "--task", str(tmp_path / "task.json"),
                    "--out", str(out)], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(out))
    assert img.shape == (40, 128, 3)
    left, right = img[:, :60].astype(int), img[:, 68:].astype(int)
    assert (right[35, 5] != 100).any() and (right[5, 55] == 100).all()  # truth: the lower half painted
    assert (left[35, 5] == 100).all() and (left[4, 30] != 100).any()  # prediction: only the box outline
