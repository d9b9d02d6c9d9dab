"""The whole loop in the production topology against a real Label Studio 1.23 (GitHub issue 7).

Processes: Label Studio (``label_studio`` fixture), redis-server (``redis_url``), the backend under
gunicorn (``backend/web/gunicorn.conf.py``) and a separate ``python -m backend.loop.worker`` on that Redis.
Everything else goes through the REST APIs, as a user's Label Studio would:

1. create a det+seg project (semantic BrushLabels + objects RectangleLabels + the ``mtal_labelled``
   modalities Choices tag), import synthetic scenes, connect the backend (``POST /api/ml/``);
2. retrieve predictions: one per task, with the backend's initial version, the brush regions and the
   requested-modalities choice listing *every* modality;
3. submit partial annotations (semantic only, objects only, both) made from the scenes' exact labels;
4. press "Start Training" (``POST /api/ml/{id}/train``) and wait on ``GET /status`` for a new version
   trained by the worker process (never by gunicorn);
5. check the ranking: one new-version prediction per unlabelled task, each with regions for every
   modality, the project switched to uncertainty sampling on that version, and ``/next`` serving the
   task the backend ranked first; plus ``/health``, ``/versions`` and ``/metrics`` content.

"Regions for every modality": an untrained FCOS head scores every box near sqrt(0.01 * 0.5) ≈ 0.07,
below the 0.3 threshold of the pre-annotations, so before training we require the brush regions
(``semantic`` has no background class: every pixel gets a class) and the choices item naming both
modalities. After training on the labelled scenes (E2E_EPOCHS epochs; the objects are large,
distinct, and the training set is small) we require brush *and* rectangle regions in the retrained
predictions, so a detector that does not learn, or a converter that drops a region type, fails here.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from backend.labelstudio.client import UNCERTAINTY_SAMPLING
from tests.support.label_studio import LabelStudioServer
from tests.support.mtal_processes import ManagedProcess, backend_env, start_backend, start_worker
from tests.support.scene_project import CHOICES_TAG, SceneProject, annotate, create_scene_project

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]
N_TASKS = 10
SIZE = 64
EPOCHS = int(os.environ.get("E2E_EPOCHS", "60"))
TRAIN_TIMEOUT_S = float(os.environ.get("E2E_TRAIN_TIMEOUT", "240"))
PARTIAL = ((0, ["semantic"]), (1, ["objects"]), (2, ["semantic", "objects"]), (3, ["objects"]),
           (4, ["semantic", "objects"]), (5, ["objects"]))
MODALITIES = {"semantic": "brushlabels", "objects": "rectanglelabels"}


@dataclass
class Stack:
    ls: LabelStudioServer
    project: SceneProject
    backend: ManagedProcess
    worker: ManagedProcess
    model_dir: Path

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- worker log ---\n{self.worker.log_tail()}\n"
                    f"--- backend log ---\n{self.backend.log_tail(1500)}", pytrace=False)


@pytest.fixture(scope="module")
def stack(label_studio: LabelStudioServer, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("full-loop")
    project = create_scene_project(label_studio.url, label_studio.headers, label_studio.files_root,
                                   "mtal full loop", N_TASKS, size=SIZE, boxes=True, parts=False)
    env = backend_env(label_studio.url, label_studio.token, tmp / "models", redis_url=redis_url,
                      cache_dir=tmp / "cache", MTAL_NET_CONFIG="tiny", MTAL_IMAGE_SIZE=str(SIZE),
                      MTAL_TRAIN_EPOCHS=str(EPOCHS), MTAL_DEVICE="cpu", MTAL_TRAIN_THRESHOLD="0",
                      MTAL_CLUSTERS="2", MTAL_THREADS="2", LOG_LEVEL="INFO")
    with ExitStack() as stack:  # each process is stopped (process group) even when a later one fails
        backend = stack.enter_context(start_backend(env, tmp))
        worker = stack.enter_context(start_worker(env, tmp))
        yield Stack(label_studio, project, backend, worker, tmp / "models")


def _ls(stack: Stack, method: str, path: str, **kwargs: object) -> requests.Response:
    r = requests.request(method, f"{stack.ls.url}{path}", headers=stack.ls.headers, timeout=120, **kwargs)
    assert r.ok, f"{method} {path} -> {r.status_code}: {r.text[:500]}"
    return r


def _predictions(stack: Stack) -> list[dict]:
    return _ls(stack, "GET", "/api/predictions/", params={"project": stack.project.id}).json()


def _region_types(prediction: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in prediction["result"]:
        out.setdefault(r["from_name"], set()).add(r["type"])
    return out


def _wait_for_new_version(stack: Stack, old: str) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    status: dict = {}
    while time.monotonic() < deadline:
        status = requests.get(f"{stack.backend.url}/status", params={"project": stack.project.id}, timeout=10).json()
        if status.get("error"):
            stack.fail(f"the run failed: {status['error']}")
        if not stack.worker.alive():
            stack.fail(f"the worker exited with {stack.worker.process.returncode}")
        if status["state"] == "idle" and status["version"] and status["version"] != old:
            return status
        time.sleep(1)
    stack.fail(f"no new model version within {TRAIN_TIMEOUT_S:.0f} s (E2E_TRAIN_TIMEOUT); last /status: {status}")
    raise AssertionError  # unreachable: pytest.fail raises


def test_full_loop_production_topology(stack: Stack) -> None:
    project, backend = stack.project, stack.backend
    health = requests.get(f"{backend.url}/health", timeout=10).json()
    assert health["status"] == "UP" and health["model_class"] == "MTALModel"
    assert health["queue"]["backend"] == "redis" and health["queue"]["worker_alive"] is None, health

    # 1. connect: LS calls /setup, which publishes the initial (untrained) version
    ml = _ls(stack, "POST", "/api/ml/", json={"url": backend.url, "project": project.id, "title": "MTAL",
                                              "is_interactive": False}).json()
    assert ml["state"] == "CO", f"Label Studio could not connect the backend: {ml}"
    versions = requests.get(f"{backend.url}/versions", params={"project": project.id}, timeout=10).json()
    v1 = versions["current"][str(project.id)]
    assert re.fullmatch(rf"mtal-{project.id}-v1-[0-9a-f]{{8}}", v1 or ""), versions
    assert versions["versions"] == [v1] and versions["details"][str(project.id)][0]["network"] == "detseg"
    health = requests.get(f"{backend.url}/health", timeout=10).json()
    assert health["model_versions"] == {str(project.id): v1}

    # 2. prefill: one prediction per task, version v1, brush regions + every modality requested
    _ls(stack, "POST", "/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": project.id},
        json={"selectedItems": {"all": True, "excluded": []}})
    preds = _predictions(stack)
    assert sorted(p["task"] for p in preds) == sorted(project.task_ids), preds[:1]
    for p in preds:
        assert p["model_version"] == v1, p["model_version"]
        kinds = _region_types(p)
        assert kinds.get("semantic") == {"brushlabels"}, f"task {p['task']}: no brush regions: {kinds}"
        choices = [r["value"]["choices"] for r in p["result"] if r["from_name"] == CHOICES_TAG]
        assert choices and sorted(choices[0]) == sorted(MODALITIES), f"task {p['task']}: requested {choices}"
        assert p["score"] is not None and 0.0 <= p["score"] <= 1.0

    # 3. partial annotations, 4. Start Training (the worker process trains and ranks)
    for index, modalities in PARTIAL:
        annotate(stack.ls.url, stack.ls.headers, project, index, modalities)
    r = requests.get(f"{backend.url}/status", params={"project": project.id}, timeout=10).json()
    assert r["labels_since_last_run"] == {"semantic": 3, "objects": 5}, r  # the webhook counted them
    _ls(stack, "POST", f"/api/ml/{ml['id']}/train", json={})
    status = _wait_for_new_version(stack, v1)
    v2 = status["version"]
    assert re.fullmatch(rf"mtal-{project.id}-v2-[0-9a-f]{{8}}", v2), v2
    assert status["metrics"]["n_train"] + status["metrics"]["n_val"] == len(PARTIAL), status["metrics"]
    assert status["metrics"]["n_unlabelled"] == 0, status["metrics"]  # MTAL_SEMI_WEIGHT=0, the default
    trained_line = f"project {project.id}: trained {v2}"
    assert trained_line in stack.worker.log_tail(1_000_000), "the worker process did not log the training run"
    assert trained_line not in backend.log_tail(1_000_000), "gunicorn trained itself: REDIS_URL was not honoured"

    # 5. ranking: one v2 prediction per unlabelled task, regions for every modality
    unlabelled = sorted(set(project.task_ids) - {project.task_ids[i] for i, _ in PARTIAL})
    new = [p for p in _predictions(stack) if p["model_version"] == v2]
    assert sorted(p["task"] for p in new) == unlabelled
    assert all(0.0 <= p["score"] < 1.0 for p in new), [p["score"] for p in new]
    kinds = [_region_types(p) for p in new]
    assert all(k.get("semantic") == {"brushlabels"} for k in kinds), kinds
    with_boxes = sum(k.get("objects") == {"rectanglelabels"} for k in kinds)
    assert with_boxes >= len(new) // 2, (
        f"only {with_boxes}/{len(new)} retrained predictions have rectangles after {EPOCHS} epochs: {kinds}")
    assert all(k.get(CHOICES_TAG) == {"choices"} for k in kinds), kinds

    project_now = _ls(stack, "GET", f"/api/projects/{project.id}/").json()
    assert project_now["model_version"] == v2 and project_now["sampling"] == UNCERTAINTY_SAMPLING, project_now
    first = min(new, key=lambda p: (p["score"], p["task"]))
    assert sum(p["score"] == first["score"] for p in new) == 1, "tied lowest scores: /next would be ambiguous"
    nxt = _ls(stack, "GET", f"/api/projects/{project.id}/next").json()
    assert nxt["id"] == first["task"], f"/next gave task {nxt['id']}, the backend ranked {first['task']} first"

    versions = requests.get(f"{backend.url}/versions", params={"project": project.id}, timeout=10).json()
    assert versions["versions"] == [v1, v2] and versions["current"] == {str(project.id): v2}, versions
    assert versions["details"][str(project.id)][1]["parent"] == v1
    health = requests.get(f"{backend.url}/health", timeout=10).json()
    assert health["model_versions"] == {str(project.id): v2} and health["queue"]["failed"] == 0, health
    metrics = requests.get(f"{backend.url}/metrics", timeout=10).text
    assert re.search(r'mtal_webhook_events_total\{action="START_TRAINING"\} [1-9]', metrics), metrics[-2000:]
    served = re.search(r"^mtal_predictions_total (\S+)$", metrics, re.M)
    assert served and float(served.group(1)) >= N_TASKS, "the backend served fewer predictions than tasks"
