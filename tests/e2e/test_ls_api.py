"""backend.labelstudio.client against a real Label Studio 1.23 (fixture ``label_studio`` from tests/conftest.py).

Each test builds its own project, so they are independent. Expected outcomes come from the data the
test itself pushes (e.g. the task with the lowest pushed score must be served first).
"""

from __future__ import annotations

import io
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from backend.labelstudio.client import UNCERTAINTY_SAMPLING, LabelStudioAPI, LabelStudioAPIError
from tests.support.label_studio import LabelStudioServer

pytestmark = pytest.mark.e2e

SIZE = 16  # images are SIZE x SIZE pixels
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="seg" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <RectangleLabels name="det" toName="image"><Label value="car"/></RectangleLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple"><Choice value="seg"/><Choice value="det"/></Choices>
</View>"""


@pytest.fixture(scope="module")
def api(label_studio: LabelStudioServer) -> LabelStudioAPI:
    return LabelStudioAPI(label_studio.url, label_studio.token)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _make_project(api: LabelStudioAPI, ls: LabelStudioServer, name: str, n_tasks: int) -> tuple[int, list[int]]:
    """A project with CONFIG (created through the SDK) and ``n_tasks`` local-file image tasks."""
    project = api.sdk.projects.create(title=f"mtal {name}", label_config=CONFIG)
    files = []
    for i in range(n_tasks):
        path = ls.files_root / name / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(i))
        files.append(f"{name}/img{i}.png")
    # LS 1.23 serves /data/local-files/ only under a local-files storage of the project (else 404).
    storage = requests.post(f"{ls.url}/api/storages/localfiles/", headers=ls.headers, timeout=30, json={
        "project": project.id, "path": str(ls.files_root / name), "use_blob_urls": True, "title": name})
    assert storage.status_code == 201, storage.text
    resp = requests.post(f"{ls.url}/api/projects/{project.id}/import", params={"return_task_ids": "true"},
                         headers=ls.headers, json=[{"image": f"/data/local-files/?d={f}"} for f in files], timeout=30)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["task_count"] == n_tasks
    return project.id, list(body["task_ids"])


def _prediction(task: int, score: float, version: str, seed: int) -> dict[str, Any]:
    mask = (np.random.default_rng(seed).random((SIZE, SIZE)) > 0.5).astype(np.uint8) * 255
    seg = {"from_name": "seg", "to_name": "image", "type": "brushlabels", "original_width": SIZE,
           "original_height": SIZE, "image_rotation": 0,
           "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["road"]}}
    det = {"from_name": "det", "to_name": "image", "type": "rectanglelabels", "original_width": SIZE,
           "original_height": SIZE, "image_rotation": 0,
           "value": {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0, "rectanglelabels": ["car"]}}
    return {"task": task, "result": [seg, det], "score": score, "model_version": version}


def test_local_file_tasks_are_served(api: LabelStudioAPI, label_studio: LabelStudioServer) -> None:
    pid, ids = _make_project(api, label_studio, "files", 2)
    tasks = list(api.iter_tasks(pid))
    assert sorted(t["id"] for t in tasks) == sorted(ids)
    url = label_studio.url + tasks[0]["data"]["image"]
    resp = requests.get(url, headers=label_studio.headers, timeout=10)
    assert resp.status_code == 200
    index = int(tasks[0]["data"]["image"].rsplit("img", 1)[1].split(".")[0])
    assert resp.content == _png(index)


def test_next_serves_lowest_score_of_current_version(api: LabelStudioAPI, label_studio: LabelStudioServer) -> None:
    pid, ids = _make_project(api, label_studio, "ranking", 5)
    rng = random.Random(7)
    scores = dict(zip(ids, rng.sample([0.11, 0.42, 0.27, 0.93, 0.65], k=len(ids)), strict=True))
    by_score = sorted(ids, key=scores.__getitem__)
    preds = [_prediction(t, scores[t], "v1", t) for t in ids]
    # A stale version with even lower scores on the highest-ranked task must not affect the order.
    preds.append(_prediction(by_score[-1], 0.0, "v0", 99))
    assert api.create_predictions_bulk(pid, preds) == len(preds)

    project = api.set_project_ranking(pid, "v1")
    assert (project["model_version"], project["sampling"]) == ("v1", UNCERTAINTY_SAMPLING)
    assert api.get_project(pid)["sampling"] == UNCERTAINTY_SAMPLING

    nxt = api.next_task(pid)
    assert nxt is not None and nxt["id"] == by_score[0]
    stored = {p["model_version"]: p for p in nxt["predictions"]}["v1"]
    assert stored["score"] == pytest.approx(scores[by_score[0]])
    seg = next(r for r in stored["result"] if r["from_name"] == "seg")
    decoded = decode_rle(seg["value"]["rle"]).reshape(SIZE, SIZE, 4)[..., 3]
    expected = (np.random.default_rng(by_score[0]).random((SIZE, SIZE)) > 0.5).astype(np.uint8) * 255
    np.testing.assert_array_equal(decoded, expected)

    # Labelling the lowest-score task with only some modalities: it leaves the queue, LS serves the next one.
    result = [
        {"from_name": "mtal_labelled", "to_name": "image", "type": "choices", "value": {"choices": ["det"]}},
        {"from_name": "det", "to_name": "image", "type": "rectanglelabels", "original_width": SIZE,
         "original_height": SIZE, "image_rotation": 0,
         "value": {"x": 5.0, "y": 6.0, "width": 7.0, "height": 8.0, "rotation": 0, "rectanglelabels": ["car"]}},
    ]
    api.sdk.annotations.create(id=by_score[0], result=result)
    nxt = api.next_task(pid)
    assert nxt is not None and nxt["id"] == by_score[1]

    labelled = list(api.iter_labelled_tasks(pid, page_size=2))
    assert [t["id"] for t in labelled] == [by_score[0]]
    (annotation,) = labelled[0]["annotations"]
    assert {r["from_name"] for r in annotation["result"]} == {"mtal_labelled", "det"}
    det = next(r for r in annotation["result"] if r["from_name"] == "det")
    assert det["value"]["rectanglelabels"] == ["car"] and det["value"]["x"] == pytest.approx(5.0)

    unlabelled = [t["id"] for t in api.iter_tasks(pid, only_unlabelled=True, page_size=2)]
    assert sorted(unlabelled) == sorted(by_score[1:])


def test_all_pages_are_read(api: LabelStudioAPI, label_studio: LabelStudioServer) -> None:
    pid, ids = _make_project(api, label_studio, "pages", 5)
    for t in ids[:3]:
        api.sdk.annotations.create(id=t, result=[
            {"from_name": "mtal_labelled", "to_name": "image", "type": "choices", "value": {"choices": ["seg"]}}])
    api.sdk.annotations.create(id=ids[0], result=[])  # a second annotation on the same task
    assert [t["id"] for t in api.iter_tasks(pid, page_size=3)] == ids
    labelled = {t["id"]: len(t["annotations"]) for t in api.iter_labelled_tasks(pid, page_size=2)}
    assert labelled == {ids[0]: 2, **{t: 1 for t in ids[1:3]}}


def test_cluster_is_stored_and_errors_are_wrapped(api: LabelStudioAPI, label_studio: LabelStudioServer) -> None:
    pid, ids = _make_project(api, label_studio, "clusters", 2)
    preds = [{**_prediction(t, 0.5, "v2", t), "cluster": c} for t, c in zip(ids, (3, 4), strict=True)]
    assert api.create_predictions_bulk(pid, preds) == 2
    resp = requests.get(f"{label_studio.url}/api/predictions/", params={"project": pid},
                        headers=label_studio.headers, timeout=10)
    assert sorted((p["task"], p["cluster"]) for p in resp.json()) == [(ids[0], 3), (ids[1], 4)]

    bad = _prediction(ids[0], 0.1, "v3", 0)
    bad["result"][1]["from_name"] = "no_such_tag"
    with pytest.raises(LabelStudioAPIError, match="created 0 of 1"):
        api.create_predictions_bulk(pid, [bad])
    with pytest.raises(LabelStudioAPIError) as err:
        api.create_predictions_bulk(pid, [_prediction(10**7, 0.1, "v3", 0)])
    assert err.value.status == 400 and "10000000" in err.value.message
    with pytest.raises(LabelStudioAPIError) as err:
        api.get_project(10**7)
    assert err.value.status == 404
    with pytest.raises(ValueError, match=r"predictions\[0\]\.score"):
        api.create_predictions_bulk(pid, [{**preds[0], "score": float("nan")}])
    with pytest.raises(ValueError, match="sampling"):
        api.set_project_ranking(pid, "v1", sampling="lowest first")


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in ML backend that records what LS sends it."""

    calls: list[tuple[str, str, Any]] = []

    def _reply(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.calls.append(("GET", self.path, None))
        self._reply({"status": "UP", "model_class": "Recorder"})

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        self.calls.append(("POST", self.path, body))
        self._reply({"model_version": "rec-1"} if self.path == "/setup" else {"results": []})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list]]:
    _Recorder.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.calls
    server.shutdown()
    server.server_close()


def test_ml_backend_connect_and_train_flow(api: LabelStudioAPI, label_studio: LabelStudioServer,
                                          recorder: tuple[str, list]) -> None:
    url, calls = recorder
    pid, _ = _make_project(api, label_studio, "mlflow", 1)
    resp = requests.post(f"{label_studio.url}/api/ml/", headers=label_studio.headers, timeout=30,
                         json={"url": url, "project": pid, "title": "mtal", "is_interactive": False})
    assert resp.status_code == 201, resp.text
    ml = resp.json()
    assert ml["readable_state"] == "Connected" and ml["model_version"] == "rec-1"
    setup = [body for method, path, body in calls if path == "/setup"]
    assert setup and setup[0]["schema"] == CONFIG and setup[0]["project"].startswith(f"{pid}.")
    assert setup[0]["access_token"] == label_studio.token
    hooks = requests.get(f"{label_studio.url}/api/webhooks/", params={"project": pid},
                         headers=label_studio.headers, timeout=10).json()
    assert [(h["url"], h["send_for_all_actions"], h["send_payload"]) for h in hooks] == [(f"{url}/webhook", True, True)]

    resp = requests.post(f"{label_studio.url}/api/ml/{ml['id']}/train", headers=label_studio.headers, json={},
                         timeout=30)
    assert resp.status_code == 200, resp.text
    train = [body for method, path, body in calls if path == "/webhook" and body["action"] == "START_TRAINING"]
    assert len(train) == 1 and "annotation" not in train[0] and train[0]["project"]["id"] == pid


def test_model_versions_listed_and_older_ones_deleted(api: LabelStudioAPI, label_studio: LabelStudioServer) -> None:
    from backend.loop.rank_pass import prune_predictions

    pid, ids = _make_project(api, label_studio, "prune", 2)
    names = [f"mtal-{pid}-v{n}-0000000{n}" for n in (1, 2, 3)]
    for n, version in enumerate(names):
        api.create_predictions_bulk(pid, [_prediction(t, 0.5, version, t + n) for t in ids])
    api.create_predictions_bulk(pid, [_prediction(ids[0], 0.5, "imported", 9)])
    api.set_project_ranking(pid, names[2])
    assert api.model_versions(pid) == {names[0]: 2, names[1]: 2, names[2]: 2, "imported": 1}
    assert prune_predictions(api, str(pid), names[2], keep=2) == [names[0]]
    assert api.model_versions(pid) == {names[1]: 2, names[2]: 2, "imported": 1}
    assert api.get_project(pid)["model_version"] == names[2]  # the project still points at the ranking
    with pytest.raises(ValueError, match="every prediction"):
        api.delete_predictions(pid, "")


def test_old_versions_show_in_the_task_view_until_pruned(api: LabelStudioAPI, label_studio: LabelStudioServer) -> None:
    """What an annotator sees in Label Studio 1.23 when a task holds predictions of two versions: the
    label stream (``/next``) gives only the project's ``model_version``, but opening the task from the
    Data Manager (``GET /api/tasks/{id}/``, what the editor loads) gives every version's prediction, so
    the editor lists both. Hence MTAL_KEEP_PREDICTION_VERSIONS=1: older versions are deleted once the
    new ranking is pushed."""
    from backend.loop.rank_pass import prune_predictions

    pid, ids = _make_project(api, label_studio, "versions", 1)
    old, new = f"mtal-{pid}-v1-00000001", f"mtal-{pid}-v2-00000002"
    for n, version in enumerate((old, new)):
        api.create_predictions_bulk(pid, [_prediction(ids[0], 0.1 * n, version, n)])
    api.set_project_ranking(pid, new)

    def shown(path: str) -> list[str]:
        r = requests.get(f"{label_studio.url}{path}", headers=label_studio.headers, timeout=30)
        r.raise_for_status()
        return sorted(p["model_version"] for p in r.json()["predictions"])

    assert shown(f"/api/projects/{pid}/next") == [new]
    assert shown(f"/api/tasks/{ids[0]}/?project={pid}") == [old, new]
    assert prune_predictions(api, str(pid), new, keep=1) == [old]
    assert shown(f"/api/tasks/{ids[0]}/?project={pid}") == [new]
    assert shown(f"/api/projects/{pid}/next") == [new]
