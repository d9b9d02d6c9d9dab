"""Real photographs through a real Label Studio 1.23 (issue 15): CamVid val images (480x360) in a
two-brush-tag project, prefilled by the backend and annotated from CamVid's human labels.

What an annotator would see and save is checked on the image's own grid: every prefilled brush region
is encoded at the photograph's size (``original_width`` x ``original_height`` = 480 x 360, not the
network's) and decodes to a label map of that size, and an annotation painted from the human label map,
saved by Label Studio and read back through its API, converts to the same label map (pixel agreement
>= 0.999 on the labelled pixels, mIoU >= 0.99). Skipped when ``../shared/datasets/camvid`` is absent
(a user's machine).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import requests

from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.label_config import parse_label_config
from backend.settings import Settings
from tests.support.backend_server import serve_backend
from tests.support.label_studio import LabelStudioServer
from tests.support.mtal_processes import REPO_ROOT
from tests.support.photo_project import PhotoProject, create_photo_project
from tests.support.scene_project import CHOICES_TAG, annotate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"


@pytest.fixture(scope="module")
def photo_stack(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"no CamVid at {CAMVID} (real-data tests run only where ../shared/datasets is)")
    tmp = tmp_path_factory.mktemp("real-photo")
    settings = Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                        model_dir=tmp / "models", redis_url=None, net_config="tiny", image_size=96, device="cpu",
                        train_threshold=1000, cache_dir=tmp / "cache")
    project = create_photo_project(label_studio.url, label_studio.headers, label_studio.files_root,
                                   "mtal real photo", CAMVID, 2, split="val")
    with serve_backend(settings) as backend_url:
        yield label_studio, project, backend_url


def _miou(got: np.ndarray, want: np.ndarray, keep: np.ndarray) -> float:
    ious = [((got == c) & (want == c) & keep).sum() / (((got == c) | (want == c)) & keep).sum()
            for c in np.unique(want[keep])]
    return float(np.mean(ious))


def test_photo_prefill_is_at_the_photographs_size(photo_stack: tuple) -> None:
    ls, project, backend_url = photo_stack
    project: PhotoProject
    api = LabelStudioAPI(ls.url, ls.token)
    api.sdk.ml.create(url=backend_url, project=project.id, title="MTAL", is_interactive=False)
    api.sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True})
    r = requests.get(f"{ls.url}/api/predictions/", params={"project": project.id}, headers=ls.headers, timeout=60)
    r.raise_for_status()
    preds = {p["task"]: p for p in r.json()}
    assert sorted(preds) == sorted(project.task_ids)
    schema = parse_label_config(project.label_config)
    for task_id, sample in zip(project.task_ids, project.samples, strict=True):
        h, w = sample.image.shape[:2]
        assert (h, w) == (360, 480)
        regions = [x for x in preds[task_id]["result"] if x["from_name"] != CHOICES_TAG]
        assert regions, "an untrained network still paints every pixel of some class"
        assert {(x["original_width"], x["original_height"]) for x in regions} == {(w, h)}
        labels, _ = annotation_to_labels(regions, schema, h, w)
        for m in project.modalities:
            assert labels[m].shape == (h, w)


def test_annotation_of_a_photo_round_trips_through_label_studio(photo_stack: tuple) -> None:
    ls, project, _ = photo_stack
    project: PhotoProject
    annotation_id = annotate(ls.url, ls.headers, project, 0, project.modalities)
    r = requests.get(f"{ls.url}/api/annotations/{annotation_id}/", headers=ls.headers, timeout=60)
    r.raise_for_status()
    saved = r.json()["result"]
    sample = project.samples[0]
    h, w = sample.image.shape[:2]
    labels, present = annotation_to_labels(saved, parse_label_config(project.label_config), h, w)
    assert present == {"stuff": True, "things": True}
    for m in project.modalities:
        want, keep = np.asarray(sample.labels[m]), ~project.ignored(sample, m)
        got = np.asarray(labels[m])
        assert (got[keep] == want[keep]).mean() >= 0.999, m
        assert _miou(got, want, keep) >= 0.99, m
