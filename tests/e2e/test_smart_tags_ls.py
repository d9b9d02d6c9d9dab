"""A project whose labeling config has Label Studio's smart tags connects to MTAL (issue #31, item 1): a real
Label Studio 1.23 accepts the config, POSTs /setup, and adds the backend (201), with the strategy that needs
exactly one detection tag (boxmask)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from backend.settings import Settings
from tests.support.backend_server import serve_backend
from tests.support.label_studio import LabelStudioServer

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <RectangleLabels name="objects" toName="image"><Label value="car"/></RectangleLabels>
  <RectangleLabels name="box_smart" toName="image" smart="true"><Label value="car"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="road" smart="true"/><Label value="car" smart="true"/>
  </KeyPointLabels>
</View>"""


def test_project_with_smart_tags_connects(label_studio: LabelStudioServer, tmp_path: Path) -> None:
    ls = label_studio
    project = requests.post(f"{ls.url}/api/projects/", headers=ls.headers, timeout=30,
                            json={"title": "mtal smart tags", "label_config": CONFIG})
    assert project.status_code == 201, project.text
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=ls.token, model_dir=tmp_path / "models",
                        redis_url=None, net_config="tiny", image_size=32, device="cpu", strategy="boxmask",
                        cache_dir=tmp_path / "cache")
    with serve_backend(settings) as backend_url:
        resp = requests.post(f"{ls.url}/api/ml/", headers=ls.headers, timeout=60,
                             json={"url": backend_url, "project": project.json()["id"], "title": "mtal",
                                   "is_interactive": True})
    assert resp.status_code == 201, resp.text
    ml = resp.json()
    assert ml["readable_state"] == "Connected" and ml["model_version"].startswith(f"mtal-{project.json()['id']}-v1")
