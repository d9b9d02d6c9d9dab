"""The whole loop in embedded mode (no REDIS_URL) against a real Label Studio 1.23.

Connect the backend, retrieve prefilled predictions, submit partial annotations, press "Start
Training" (POST /api/ml/{id}/train), and check that a new version is trained, that the rank job
pushed exactly one prediction per unlabelled task with that version, that the project now uses
uncertainty sampling with that version, and that Label Studio serves the task we ranked first.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from backend.labelstudio.client import UNCERTAINTY_SAMPLING, LabelStudioAPI
from backend.loop import queue as queueing
from backend.serving.store import ModelStore
from tests.support.backend_server import embedded_scene_backend
from tests.support.label_studio import LabelStudioServer
from tests.support.scene_project import SceneProject, annotate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_TASKS = 8
SIZE = 64


@pytest.fixture(scope="module")
def setup(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("loop-embedded")
    with embedded_scene_backend(label_studio, tmp, "mtal loop embedded", N_TASKS, SIZE, epochs=2) as rig:
        yield rig


def _predictions(ls: LabelStudioServer, project: SceneProject) -> list[dict]:
    r = requests.get(f"{ls.url}/api/predictions/", params={"project": project.id}, headers=ls.headers, timeout=60)
    r.raise_for_status()
    return r.json()


def test_start_training_trains_ranks_and_orders_label_studio(setup: tuple) -> None:
    ls, project, backend_url, settings = setup
    api = LabelStudioAPI(ls.url, ls.token)
    ml = api.sdk.ml.create(url=backend_url, project=project.id, title="MTAL", is_interactive=False)
    store = ModelStore(settings.model_dir)
    v1 = store.current(str(project.id))
    assert v1 is not None, "connecting the backend runs /setup, which publishes the initial version"

    # prefill: Label Studio asks /predict for every task. Synthetic "semantic" has no background, so
    # even the untrained net paints regions there ("parts" may be all background before training).
    api.sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True})
    preds = _predictions(ls, project)
    assert sorted(p["task"] for p in preds) == sorted(project.task_ids)
    for p in preds:
        assert p["model_version"] == v1
        assert "semantic" in {r["from_name"] for r in p["result"]}

    # partial labels: semantic only, parts only, both
    for index, modalities in ((0, ["semantic"]), (1, ["parts"]), (2, ["semantic", "parts"])):
        annotate(ls.url, ls.headers, project, index, modalities)
    r = requests.post(f"{ls.url}/api/ml/{ml.id}/train", headers=ls.headers, json={}, timeout=60)
    assert r.status_code == 200, r.text

    deadline = time.time() + 300
    status = {}
    while time.time() < deadline:
        status = requests.get(f"{backend_url}/status", params={"project": project.id}, timeout=10).json()
        if status["state"] == "idle" and status["version"] and status["version"] != v1:
            break
        assert not status.get("error"), status
        time.sleep(1)
    else:
        pytest.fail(f"no new version within 300 s: {status}")
    v2 = status["version"]
    assert store.current(str(project.id)) == v2 and v2 != v1
    worker = queueing.open_queue(None).worker_thread  # the embedded worker ran the jobs below the server
    if sys.platform.startswith("linux"):
        me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == min(19, me + settings.worker_nice) > me
    assert status["metrics"]["n_train"] + status["metrics"]["n_val"] == 3

    # exactly one prediction of the new version per unlabelled task, with a score in [0, 1)
    unlabelled = set(project.task_ids[3:])
    new = [p for p in _predictions(ls, project) if p["model_version"] == v2]
    assert sorted(p["task"] for p in new) == sorted(unlabelled)
    assert all(0.0 <= p["score"] < 1.0 for p in new)
    requested = [r for p in new for r in p["result"] if r["from_name"] == "mtal_labelled"]
    assert len(requested) == len(unlabelled) and all(r["value"]["choices"] for r in requested)

    # Label Studio now orders by our scores: the project points at v2 with uncertainty sampling
    proj = api.get_project(project.id)
    assert proj["model_version"] == v2 and proj["sampling"] == UNCERTAINTY_SAMPLING
    first = min(new, key=lambda p: p["score"])
    nxt = api.next_task(project.id)
    assert nxt is not None and nxt["id"] == first["task"]
    ranking = store.ranking(str(project.id))
    assert ranking["model_version"] == v2 and ranking["tasks"][str(first["task"])]["score"] == 0.0


def _tasks_by_score(ls: LabelStudioServer, project: SceneProject, filters: dict | None = None) -> list[dict]:
    """The project's tasks as the Data Manager lists them sorted by *Prediction score* (ascending)."""
    query = {"ordering": ["tasks:predictions_score"], **({"filters": filters} if filters else {})}
    r = requests.get(f"{ls.url}/api/tasks/", headers=ls.headers, timeout=60,
                     params={"project": project.id, "page_size": 100, "fields": "all", "query": json.dumps(query)})
    r.raise_for_status()
    return r.json()["tasks"]


def test_retrieve_predictions_sorts_every_unlabelled_task_before_the_labelled_ones(setup: tuple) -> None:
    """Issue #32, after the ranking of the test above: a task imported after the ranking, then *Retrieve
    Predictions* on the whole project (Label Studio asks /predict for every task without a prediction of
    the current version: the labelled ones and the new one). Sorted by prediction score, every
    unlabelled task comes before every labelled one, and the Data Manager filter "Annotations = 0"
    leaves exactly the unlabelled tasks."""
    ls, project, _, settings = setup
    store = ModelStore(settings.model_dir)
    version, ranking = store.current(str(project.id)), store.ranking(str(project.id))
    if not ranking or ranking.get("model_version") != version:
        pytest.fail("needs the ranking of test_start_training_trains_ranks_and_orders_label_studio (run the module)")
    labelled = set(project.task_ids[:3])
    # right after the ranking the labelled tasks have no prediction of the version: Label Studio sorts
    # them last (nulls last, either direction)
    before = [t["id"] for t in _tasks_by_score(ls, project)]
    assert set(before[-len(labelled):]) == labelled, before
    first = requests.get(f"{ls.url}/api/tasks/{project.task_ids[3]}/", headers=ls.headers, timeout=60).json()
    r = requests.post(f"{ls.url}/api/projects/{project.id}/import", params={"return_task_ids": "true"},
                      headers=ls.headers, json=[{"image": first["data"]["image"]}], timeout=60)
    r.raise_for_status()
    (new_task,) = r.json()["task_ids"]
    # the import's TASKS_CREATED webhook scores the new task in the background (score_new_job), racing the
    # Retrieve Predictions below: whichever stores first, the task gets one prediction of the version (#31)
    r = requests.post(f"{ls.url}/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": project.id},
                      headers=ls.headers, json={"selectedItems": {"all": True, "excluded": []}}, timeout=300)
    r.raise_for_status()
    deadline = time.time() + 120
    while not any(p["task"] == new_task and p["model_version"] == version for p in _predictions(ls, project)):
        assert time.time() < deadline, "the imported task got no prediction of the current version in 120 s"
        time.sleep(1)
    time.sleep(3)  # the scoring job, if it lost the race, ends without pushing
    stored = [p for p in _predictions(ls, project) if p["model_version"] == version]
    twice = [t for t, n in Counter(p["task"] for p in stored).items() if n > 1]
    assert not twice, f"tasks with two predictions of {version}: {twice}"
    current = {p["task"]: p["score"] for p in stored}
    assert set(current) == {*project.task_ids, new_task}, "every task has a prediction of the current version"

    order = [t["id"] for t in _tasks_by_score(ls, project)]
    assert sorted(order) == sorted(current)
    last_unlabelled = max(i for i, t in enumerate(order) if t not in labelled)
    first_labelled = min(i for i, t in enumerate(order) if t in labelled)
    assert last_unlabelled < first_labelled, f"order by prediction score: {order}, labelled {sorted(labelled)}, " \
                                             f"scores {current}"
    assert all(current[t] == 1.0 for t in labelled) and all(0.0 <= s < 1.0 for t, s in current.items()
                                                            if t not in labelled), current
    left = {"conjunction": "and", "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal",
                                             "type": "Number", "value": 0}]}
    left_ids = [t["id"] for t in _tasks_by_score(ls, project, left)]
    assert sorted(left_ids) == sorted(order[:first_labelled])  # exactly the unlabelled tasks
    assert [current[t] for t in left_ids] == sorted(current[t] for t in left_ids)  # by score (ties in any order)


def test_status_requires_a_project(setup: tuple) -> None:
    _, _, backend_url, _ = setup
    r = requests.get(f"{backend_url}/status", timeout=10)
    assert r.status_code == 400 and "project" in r.json()["message"]


