"""Tasks imported after a ranking get a score and a prefill of the current version (issue #31, item 3), through
a real Label Studio 1.23 and the backend's embedded queue: LS posts TASKS_CREATED inside the import request,
the webhook answers at once, and a small job pushes one prediction per new task, without a re-rank."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from backend.labelstudio.client import LabelStudioAPI
from backend.serving.store import ModelStore
from mtal_models.data import SceneConfig, SyntheticDataset
from tests.support.backend_server import embedded_scene_backend
from tests.support.label_studio import LabelStudioServer
from tests.support.scene_project import annotate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_TASKS, N_NEW, SIZE = 6, 4, 64


@pytest.fixture(scope="module")
def setup(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("imported")
    with embedded_scene_backend(label_studio, tmp, "mtal imported tasks", N_TASKS, SIZE, epochs=1) as rig:
        yield rig


def _predictions(ls: LabelStudioServer, pid: int) -> list[dict]:
    """Stored predictions (not GET /api/tasks/{id}, which asks the backend for one on the fly)."""
    r = requests.get(f"{ls.url}/api/predictions/", params={"project": pid}, headers=ls.headers, timeout=60)
    r.raise_for_status()
    return r.json()


def _wait(what: str, check: object, timeout: float) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what} not within {timeout:g} s")


def test_imported_tasks_get_a_score_and_prefill(setup: tuple) -> None:
    ls, project, backend_url, settings = setup
    api = LabelStudioAPI(ls.url, ls.token)
    ml = api.sdk.ml.create(url=backend_url, project=project.id, title="MTAL", is_interactive=False)
    for index, modalities in ((0, ["semantic"]), (1, ["parts"]), (2, ["semantic", "parts"])):
        annotate(ls.url, ls.headers, project, index, modalities)
    assert requests.post(f"{ls.url}/api/ml/{ml.id}/train", headers=ls.headers, json={}, timeout=60).ok

    def trained() -> str | None:
        status = requests.get(f"{backend_url}/status", params={"project": project.id}, timeout=10).json()
        assert not status.get("error"), status
        return status["version"] if status["state"] == "idle" and status["metrics"] else None

    version = _wait("a trained and ranked version", trained, 300)
    ranked = [p for p in _predictions(ls, project.id) if p["model_version"] == version]
    assert sorted(p["task"] for p in ranked) == sorted(project.task_ids[3:])

    # import N_NEW more scenes into the project's local-files folder
    folder = next(ls.files_root.glob(f"project-{project.id}"))
    scenes = SyntheticDataset(N_NEW, SceneConfig(height=SIZE, width=SIZE), seed=99)
    files = []
    for i in range(N_NEW):
        Image.fromarray(scenes[i].image).save(folder / f"new{i}.png")
        files.append({"image": f"/data/local-files/?d={folder.relative_to(ls.files_root)}/new{i}.png"})
    started = time.time()
    r = requests.post(f"{ls.url}/api/projects/{project.id}/import", params={"return_task_ids": "true"},
                      headers=ls.headers, json=files, timeout=120)
    import_s = time.time() - started
    r.raise_for_status()
    new_ids = sorted(r.json()["task_ids"])
    assert len(new_ids) == N_NEW and import_s < 10, import_s  # the webhook inside the import answered at once

    def scored() -> list[dict]:
        preds = [p for p in _predictions(ls, project.id) if p["model_version"] == version and p["task"] in new_ids]
        return preds if len(preds) >= N_NEW else []

    new = _wait("predictions for the imported tasks", scored, 120)
    assert sorted(p["task"] for p in new) == new_ids  # one each, of the current version
    assert all(0.0 <= p["score"] < 1.0 for p in new)
    assert all("semantic" in {r["from_name"] for r in p["result"]} for p in new)  # the prefill
    assert all(any(r["from_name"] == "mtal_labelled" and r["value"]["choices"] for r in p["result"]) for p in new)
    everything = [p for p in _predictions(ls, project.id) if p["model_version"] == version]
    assert len(everything) == len(ranked) + N_NEW  # the ranked tasks were not pushed again
    ranking = ModelStore(settings.model_dir).ranking(str(project.id))
    assert {str(t) for t in new_ids} <= set(ranking["tasks"]) and ranking["model_version"] == version
