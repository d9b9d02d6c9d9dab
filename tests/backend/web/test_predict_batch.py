"""/predict for any number of tasks (backend.web.predict_batch), unit level: a model whose predict takes a
known time per task, a recording queue and fakeredis claims. The real app under gunicorn with a fake Label
Studio: tests/backend/system/test_whole_project.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from backend.loop.predict_rest import JOB
from backend.loop.served import PUSH, ServedTasks
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.predict_batch import SLICE, BatchPredictor, summarize


class Model:
    """predict(): ``per_task_s`` per task; task ids in ``fail`` get an empty prediction (no image)."""

    def __init__(self, store: ModelStore, per_task_s: float = 0.0, fail: set[int] = frozenset()) -> None:
        self.store, self.per_task_s, self.fail = store, per_task_s, fail
        self.model_version = "mtal-3-v2-abc"
        self.label_config = "<View/>"
        self.calls: list[list[int]] = []

    def predict(self, tasks: list[dict[str, Any]], context: Any = None) -> list[dict[str, Any]]:
        self.calls.append([t["id"] for t in tasks])
        time.sleep(self.per_task_s * len(tasks))
        return [{"result": [], "model_version": self.model_version} if t["id"] in self.fail else
                {"result": [{"id": "r"}], "score": 0.5, "model_version": self.model_version} for t in tasks]


class Queue:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def enqueue(self, func: str, *args: Any, **kwargs: Any) -> None:
        self.jobs.append((func, args, kwargs))


def _tasks(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "data": {"image": f"/data/upload/3/{i}.png"}, "annotations": [], "predictions": []}
            for i in range(1, n + 1)]


def _predictor(tmp: Path, **kw: Any) -> tuple[BatchPredictor, Queue, fakeredis.FakeRedis, ModelStore]:
    settings = Settings(model_dir=tmp, label_studio_url="http://ls:8080", label_studio_api_key="t", **kw)
    conn, queue = fakeredis.FakeRedis(server=fakeredis.FakeServer()), Queue()
    return BatchPredictor(settings, queue, conn), queue, conn, ModelStore(tmp)


def test_everything_within_the_limits_is_computed_in_slices(tmp_path: Path) -> None:
    batch, queue, _, store = _predictor(tmp_path)
    model = Model(store, fail={7})
    answer = batch.answer(model, "3", _tasks(150))
    assert [len(c) for c in model.calls] == [SLICE, SLICE, 150 - 2 * SLICE]
    assert all(isinstance(r, dict) for r in answer.results) and answer.results[6]["result"] == []
    assert (answer.predicted, answer.failed, answer.handed_over) == (149, 1, 0) and queue.jobs == []
    assert answer.version == model.model_version


def test_the_tasks_over_the_deadline_are_handed_to_the_background(tmp_path: Path) -> None:
    batch, queue, _, store = _predictor(tmp_path, predict_deadline_s=0.5)
    model = Model(store, per_task_s=0.1 / SLICE)  # 0.1 s a slice: 5 fit in 0.5 s, the 6th would not start
    tasks = _tasks(20 * SLICE)
    t0 = time.monotonic()
    answer = batch.answer(model, "3", tasks)
    took = time.monotonic() - t0
    done = sum(map(len, model.calls))
    assert SLICE <= done <= 5 * SLICE and done % SLICE == 0  # 5 fit on an idle machine (fewer when loaded)
    assert took < 0.5 + 2 * (took / len(model.calls)) + 0.2  # the deadline, plus the last slice that started
    assert all(isinstance(r, dict) for r in answer.results[:done])
    assert answer.results[done:] == [[]] * (len(tasks) - done)
    ((func, (project, name), kwargs),) = queue.jobs
    assert func == JOB and project == "3" and kwargs["at_front"] is True
    lines = (store.tmp_dir("3") / name).read_text().splitlines()
    assert json.loads(lines[0]) == {"label_config": "<View/>"}
    assert [json.loads(x)["id"] for x in lines[1:]] == [t["id"] for t in tasks[done:]]
    assert answer.handed_over == len(tasks) - done


def test_max_predict_tasks_caps_the_tasks_computed_in_the_request(tmp_path: Path) -> None:
    batch, queue, _, store = _predictor(tmp_path, max_predict_tasks=100)
    model = Model(store)
    answer = batch.answer(model, "3", _tasks(250))
    assert [len(c) for c in model.calls] == [SLICE, 100 - SLICE] and answer.handed_over == 150
    assert len(queue.jobs) == 1


def test_tasks_holding_a_prediction_of_the_version_are_not_predicted_again(tmp_path: Path) -> None:
    batch, _, _, store = _predictor(tmp_path)
    model = Model(store)
    tasks = _tasks(3)
    tasks[1]["predictions"] = [{"model_version": model.model_version, "result": []}]
    tasks[2]["predictions"] = [{"model_version": "mtal-3-v1-old", "result": []}]
    answer = batch.answer(model, "3", tasks)
    assert model.calls == [[1, 3]] and answer.results[1] == [] and isinstance(answer.results[2], dict)


def test_a_task_pushed_meanwhile_is_answered_empty(tmp_path: Path) -> None:
    batch, _, conn, store = _predictor(tmp_path)
    model = Model(store)
    ServedTasks(conn).claim("3", model.model_version, [2], PUSH)
    answer = batch.answer(model, "3", _tasks(3))
    assert answer.results[1] == [] and isinstance(answer.results[0], dict) and isinstance(answer.results[2], dict)


@pytest.mark.parametrize("queue", [None, "no-ls"])
def test_without_a_queue_or_label_studio_the_rest_is_logged(tmp_path: Path, queue: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_dir=tmp_path, max_predict_tasks=2,
                        **({} if queue == "no-ls" else {"label_studio_url": "http://ls", "label_studio_api_key": "t"}))
    recording = Queue()
    batch = BatchPredictor(settings, None if queue is None else recording)
    answer = batch.answer(Model(ModelStore(tmp_path)), "3", _tasks(3))
    assert answer.results[2] == [] and recording.jobs == []
    assert "1 of 3 tasks not computed" in caplog.text and "get no prediction" in caplog.text


def test_summarize_counts_predictions_failures_and_empty_items() -> None:
    results = [{"result": [{"id": "r"}], "score": 0.5, "model_version": "v"}, {"result": [], "model_version": "v"}, []]
    answer = summarize(results, handed_over=1)
    assert (answer.predicted, answer.failed, answer.handed_over, answer.version) == (1, 1, 1, "v")
    assert summarize([[]]).version is None



def test_with_redis_away_every_task_is_still_answered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import redis

    from tests.support._proc import free_port

    settings = Settings(model_dir=tmp_path)
    batch = BatchPredictor(settings, Queue(), redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    answer = batch.answer(Model(ModelStore(tmp_path)), "3", _tasks(3))
    assert all(isinstance(r, dict) for r in answer.results) and "could not check" in caplog.text
