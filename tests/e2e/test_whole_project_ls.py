"""*Retrieve Predictions* on a whole project through a real Label Studio 1.23.2 (issue #31, item 4): 1,500 tasks,
a /predict deadline of a few seconds, so Label Studio stores what /predict computed in time and the backend's
background job pushes the rest through the API; in the end every task holds exactly one prediction of the
version (it was a 413 and none). Then a task imported and retrieved at once, as in the race noted in
test_loop_embedded.py: still one prediction of the version (here before any ranking: /predict serves it)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from backend.labelstudio.client import LabelStudioAPI
from backend.settings import Settings
from tests.support.backend_server import serve_backend
from tests.support.label_studio import LabelStudioServer
from tests.support.scene_project import SceneProject, create_scene_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_TASKS, SIZE, DEADLINE_S = 1500, 32, 3.0


@pytest.fixture(scope="module")
def rig(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[tuple[LabelStudioServer, SceneProject, str]]:
    tmp = tmp_path_factory.mktemp("whole-project")
    ls = label_studio
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=ls.token, model_dir=tmp / "models",
                        redis_url=None, net_config="tiny", image_size=SIZE, device="cpu", train_threshold=0,
                        cache_dir=tmp / "cache", predict_deadline_s=DEADLINE_S)
    project = create_scene_project(ls.url, ls.headers, ls.files_root, "mtal whole project", N_TASKS, size=SIZE)
    with serve_backend(settings) as backend_url:
        LabelStudioAPI(ls.url, ls.token).sdk.ml.create(url=backend_url, project=project.id, title="MTAL",
                                                       is_interactive=False)
        yield ls, project, backend_url


def _predictions(ls: LabelStudioServer, pid: int) -> list[dict]:
    """Stored predictions (not GET /api/tasks/{id}, which asks the backend for one on the fly)."""
    r = requests.get(f"{ls.url}/api/predictions/", params={"project": pid}, headers=ls.headers, timeout=120)
    r.raise_for_status()
    return r.json()


def _retrieve(ls: LabelStudioServer, pid: int) -> dict:
    r = requests.post(f"{ls.url}/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": pid},
                      headers=ls.headers, json={"selectedItems": {"all": True, "excluded": []}}, timeout=300)
    r.raise_for_status()
    return r.json()


def _one_each(ls: LabelStudioServer, pid: int, want: int, timeout: float) -> Counter:
    deadline = time.time() + timeout
    while True:
        per_task = Counter((p["task"], p["model_version"]) for p in _predictions(ls, pid))
        if len(per_task) >= want or time.time() > deadline:
            return per_task
        time.sleep(3)


def test_retrieve_predictions_on_1500_tasks_stores_one_prediction_per_task(rig: tuple) -> None:
    ls, project, backend_url = rig
    version = requests.get(f"{backend_url}/versions", timeout=10).json()["current"][str(project.id)]
    started = time.time()
    _retrieve(ls, project.id)
    took = time.time() - started
    in_request = len(_predictions(ls, project.id))
    assert 0 < in_request < N_TASKS, in_request  # Label Studio stored what /predict computed in time
    per_task = _one_each(ls, project.id, N_TASKS, 600)
    assert set(per_task) == {(t, version) for t in project.task_ids}, f"{len(per_task)} of {N_TASKS} tasks"
    time.sleep(5)
    per_task = Counter((p["task"], p["model_version"]) for p in _predictions(ls, project.id))
    assert set(per_task.values()) == {1}, "a task with two predictions of the version"
    print(f"retrieve predictions (real LS): {in_request} of {N_TASKS} stored by the request in {took:.1f} s, "
          f"the rest pushed by the background job")

    r = requests.post(f"{ls.url}/api/projects/{project.id}/import", params={"return_task_ids": "true"},
                      headers=ls.headers, json=[{"image": f"/data/local-files/?d=project-{project.id}/"
                                                          f"{project.samples[0].id}.png"}], timeout=60)
    r.raise_for_status()
    (new_task,) = r.json()["task_ids"]
    _retrieve(ls, project.id)  # at once after the import
    time.sleep(5)
    mine = [p for p in _predictions(ls, project.id) if p["task"] == new_task]
    assert [p["model_version"] for p in mine] == [version], mine
