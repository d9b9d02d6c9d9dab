"""The cold start end to end at the job level (issue 25): /setup through the Flask app, the real jobs
(``pretrain_job``, ``rank_job``, ``train_job``) on a real redis-server drained by a real RQ worker, Label
Studio's REST API and images served by the in-memory fake (:mod:`bench.fake_ls`) over HTTP, a tiny net,
a pool of 64 px images and a 6-step pretrain (the core's options are shrunk here, the backend code is not).

Covered: the pretrain publishes a version marked pretrained whose trunk changed and heads did not, /status
shows its steps and the refusal of a small pool, a killed pretrain resumes from its checkpoint on the next
trigger, the first ranking is TypiClust and a later training (labels at the start, during the pretrain, or
after a failed pretrain) starts from the right weights and hands the ranking back to the configured strategy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job, JobStatus

from backend.loop import jobs, pretrain_round, rank_fanout, train_round
from backend.loop.queue import QUEUE_NAME, QueueHandle, ThreadWorker
from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app
from bench.fake_ls import FakeLabelStudio
from mtal_models.training import load_checkpoint
from mtal_models.training.pretrain import PretrainConfig, trunk_of
from tests.support.fault_rig import CONFIG, annotation

pytestmark = pytest.mark.redis
PROJECT = "1"
STEPS = 6
MIN_IMAGES = 8


def tiny_config(settings: Settings) -> PretrainConfig:
    return PretrainConfig(steps=STEPS, budget_s=0, batch_size=4, view_size=(32, 32), grid=3, proj_dim=16, pred_dim=8,
                          warmup=1, min_images=MIN_IMAGES, save_every=2, seed=settings.seed)


class Killed(BaseException):
    """A worker dying mid-step: not an Exception, so nothing records a failure (as with kill -9)."""


@dataclass
class Rig:
    client: FlaskClient
    trainer: QueueTrainer
    store: ModelStore
    ls: FakeLabelStudio
    conn: redis.Redis
    ranked: list[str] = field(default_factory=list)  # the strategy of every ranking, in order
    fit_trunks: list[dict[str, torch.Tensor]] = field(default_factory=list)  # the trunk each training started from

    def setup(self) -> None:
        r = self.client.post("/setup", json={"project": f"{PROJECT}.1712345678", "schema": CONFIG})
        assert r.status_code == 200, r.get_json()

    def drain(self) -> None:
        ThreadWorker([self.trainer.handle.queue], connection=self.conn).work(burst=True)

    def status(self) -> dict[str, Any]:
        return self.client.get("/status", query_string={"project": PROJECT}).get_json()

    def versions(self) -> list[dict[str, Any]]:
        return self.store.list_versions(PROJECT)

    def trunk(self, version: str) -> dict[str, torch.Tensor]:
        model = load_checkpoint(self.store.checkpoint_path(PROJECT, version)).model
        return trunk_of(model).state(model)

    def label(self, task_id: int) -> None:
        """Annotate a task in Label Studio and send the webhook LS would."""
        result = annotation(task_id)
        task = self.ls.tasks[task_id - 1]
        task["annotations"] = [{"id": task_id, "task": task_id, "result": result, "was_cancelled": False}]
        task["total_annotations"] = 1
        body = {"action": "ANNOTATION_CREATED", "project": {"id": int(PROJECT), "label_config": CONFIG},
                "annotation": {"id": task_id, "result": result}, "task": {"id": task_id}}
        assert self.client.post("/webhook", json=body).status_code == 200


@pytest.fixture
def make_rig(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Rig]]:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    monkeypatch.setattr(jobs, "pretrain_config", tiny_config)
    monkeypatch.setattr(jobs, "PROGRESS_EVERY_S", 0.0)
    stack: list[FakeLabelStudio] = []

    def make(n_tasks: int = 12, labelled: tuple[int, ...] = (), lease_s: float = 60.0, minutes: float = 5.0) -> Rig:
        ls = FakeLabelStudio.start(CONFIG, n_tasks, n_images=n_tasks, image_hw=(64, 64), project_id=int(PROJECT),
                                   labelled={t: annotation(t) for t in labelled})
        stack.append(ls)
        settings = Settings(label_studio_url=ls.url, label_studio_api_key="t", model_dir=tmp_path / "models",
                            redis_url=redis_url, net_config="tiny", image_size=64, device="cpu", cache_dir=None,
                            strategy="random", clusters=0, train_epochs=1, train_batch_size=4, val_fraction=0.0,
                            train_threshold=2, pretrain_minutes=minutes, lease_s=lease_s, ls_retries=0)
        jobs.configure(settings)
        store = ModelStore(settings.model_dir, device="cpu")
        trainer = QueueTrainer(settings, store, handle=QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), False))
        rig = Rig(create_app(settings, store, trainer).test_client(), trainer, store, ls, conn)
        real_rank, real_fit = rank_fanout.rank_tasks, train_round.fit

        def rank(*a: Any, **k: Any) -> dict[str, Any]:
            summary = real_rank(*a, **k)
            rig.ranked.append(summary["strategy"])
            return summary

        def fit(model: Any, *a: Any, **k: Any) -> Any:
            rig.fit_trunks.append(trunk_of(model).state(model))
            return real_fit(model, *a, **k)

        monkeypatch.setattr(rank_fanout, "rank_tasks", rank)
        monkeypatch.setattr(train_round, "fit", fit)
        return rig

    yield make
    jobs.configure(None)
    for ls in stack:
        ls.stop()


def spy_steps(monkeypatch: pytest.MonkeyPatch, at_step: Callable[[int], None]) -> None:
    """Call ``at_step(step)`` after every pretrain step's report (inside the running job)."""
    real = pretrain_round.pretrain

    def spy(model: Any, images: Any, config: Any, *, progress: Any, **kw: Any) -> Any:
        def step(n: int, loss: float) -> None:
            progress(n, loss)
            at_step(n)

        return real(model, images, config, progress=step, **kw)

    monkeypatch.setattr(pretrain_round, "pretrain", spy)


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_publishes_a_pretrained_version_and_ranks_it_by_typiclust(
        make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig()
    seen: list[tuple[str, Any, Any]] = []

    def look(step: int) -> None:
        st = rig.status()
        seen.append((st["state"], st["step"], st["pretrain"]["step"]))

    spy_steps(monkeypatch, look)
    rig.setup()
    assert rig.status()["state"] == "queued" and rig.trainer.handle.queue.count == 1
    rig.drain()

    assert seen == [("pretraining", n, n) for n in range(1, STEPS + 1)]  # progress in /status at every step
    initial, pretrained = rig.versions()
    assert initial["initial"] and not initial.get("pretrained")
    assert pretrained["pretrained"] is True and pretrained["parent"] == initial["version"] and pretrained["current"]
    summary = pretrained["pretrain"]
    assert summary["steps"] == STEPS and summary["resumed_from"] == 0 and summary["images"] == 12
    assert summary["parent"] == initial["version"] and summary["stopped_by"] == "steps"
    before, after = rig.trunk(initial["version"]), rig.trunk(pretrained["version"])
    assert not any(torch.equal(before[k], after[k]) for k in before if k.endswith(".weight") and "conv" in k)
    heads = [load_checkpoint(rig.store.checkpoint_path(PROJECT, v["version"])).model.state_dict()
             for v in (initial, pretrained)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0] if k.split(".")[0] not in summary["trunk"])
    assert not (rig.store.project_dir(PROJECT) / pretrain_round.CHECKPOINT).exists()  # removed once published

    assert rig.ranked == ["typiclust"]  # the first ranking, before any label
    assert rig.store.ranking(PROJECT)["strategy"] == "typiclust"
    assert rig.ls.project["model_version"] == pretrained["version"]
    assert rig.ls.project["sampling"] == "Uncertainty sampling"
    pushed = [p for p in rig.ls.predictions if p["model_version"] == pretrained["version"]]
    assert sorted(p["task"] for p in pushed) == list(range(1, 13))
    assert len({p["score"] for p in pushed}) == 12  # a full order for LS's /next

    st = rig.status()
    assert st["state"] == "idle" and st["error"] is None and st["step"] == STEPS
    assert st["pretrain"]["state"] == "done" and st["pretrain"]["version"] == pretrained["version"]
    assert st["pool"]["images"] == 12 and st["current_version"] == pretrained["version"]
    listed = rig.client.get("/versions", query_string={"project": PROJECT}).get_json()["details"][PROJECT]
    assert [v["pretrained"] for v in listed] == [None, True] and listed[1]["pretrain"]["steps"] == STEPS

    rig.setup()  # set up again: nothing more is due
    assert rig.trainer.handle.queue.count == 0


def test_labels_at_the_start_train_from_the_pretrained_weights_then_the_strategy_switches_back(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(n_tasks=12, labelled=(1, 2))
    rig.setup()
    rig.drain()
    initial, pretrained, trained = rig.versions()
    assert pretrained["pretrained"] and pretrained["pretrain"]["images"] == 10  # the 10 unlabelled tasks
    assert trained["parent"] == pretrained["version"] and trained["current"] and not trained["initial"]
    assert "pretrained" not in trained and "pretrain" not in trained  # a trained version is no pretrain
    assert len(rig.fit_trunks) == 1 and equal(rig.fit_trunks[0], rig.trunk(pretrained["version"]))
    assert rig.ranked == ["typiclust", "random"]  # after the first training the configured strategy ranks
    assert rig.store.ranking(PROJECT)["strategy"] == "random"
    assert rig.status()["state"] == "idle"


def test_labels_during_the_pretrain_queue_a_training_from_its_weights(
        make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig()
    answers: list[str] = []

    def during(step: int) -> None:
        if step == 3:
            rig.label(1)
            rig.label(2)  # the threshold (2): a run is requested while the pretrain runs
            answers.append(rig.status()["follow_up"])

    spy_steps(monkeypatch, during)
    rig.setup()
    rig.drain()
    assert answers == [True]
    _, pretrained, trained = rig.versions()
    assert pretrained["pretrained"] and pretrained["pretrain"]["images"] == 12  # the pool was read before
    assert trained["parent"] == pretrained["version"]
    assert len(rig.fit_trunks) == 1 and equal(rig.fit_trunks[0], rig.trunk(pretrained["version"]))
    assert rig.ranked == ["typiclust", "random"]


def test_a_failed_pretrain_gives_way_to_training_from_the_current_weights(
        make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig()

    def during(step: int) -> None:
        if step == 3:
            rig.label(1)
            rig.label(2)
            raise RuntimeError("out of memory (simulated)")

    spy_steps(monkeypatch, during)
    rig.setup()
    rig.drain()
    initial, trained = rig.versions()
    assert trained["parent"] == initial["version"] and not trained["initial"]
    assert len(rig.fit_trunks) == 1 and equal(rig.fit_trunks[0], rig.trunk(initial["version"]))
    assert rig.ranked == ["random"]
    st = rig.status()  # the training that followed cleared "error"; "pretrain" keeps the reason
    assert st["state"] == "idle" and st["pretrain"]["state"] == "failed"
    assert st["pretrain"]["reason"] == "RuntimeError: out of memory (simulated)"


def test_a_small_pool_is_refused_with_its_reason_in_status(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(n_tasks=MIN_IMAGES - 1)
    rig.setup()
    rig.drain()
    st = rig.status()
    assert st["state"] == "idle" and st["error"] is None
    assert st["pretrain"]["state"] == "refused" and st["pretrain"]["images"] == MIN_IMAGES - 1
    assert f"needs at least {MIN_IMAGES}" in st["pretrain"]["reason"]
    assert len(rig.versions()) == 1 and rig.ranked == []


def test_images_that_fail_to_download_are_skipped_counted_and_not_images(make_rig: Callable[..., Rig]) -> None:
    """10 tasks, 3 of whose images answer 404: 7 usable images, under the minimum of 8, so refused; the
    failures are counted in /status (pretrain and pool)."""
    rig = make_rig(n_tasks=MIN_IMAGES + 2)
    for task in rig.ls.tasks[:3]:
        task["data"]["image"] = f"/data/upload/{PROJECT}/gone-{task['id']}.png"
    rig.setup()
    rig.drain()
    st = rig.status()
    assert st["pretrain"]["state"] == "refused" and st["pretrain"]["images"] == MIN_IMAGES - 1
    assert st["pretrain"]["failed"] == 3 and st["pool"]["failed"] == 3 and sum(st["pool"]["failures"].values()) == 3
    assert st["state"] == "idle" and len(rig.versions()) == 1


def test_a_killed_pretrain_resumes_from_its_checkpoint_on_the_next_trigger(
        make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(lease_s=0.5)
    steps: list[int] = []
    kill = [True]

    def die(step: int) -> None:
        steps.append(step)
        if step == 5 and kill[0]:  # after the checkpoint of step 4
            raise Killed

    spy_steps(monkeypatch, die)
    rig.setup()
    job = Job.fetch(rig.status()["job_id"], connection=rig.conn)
    rig.trainer.handle.queue.remove(job)
    job.set_status(JobStatus.STARTED)  # the worker took it ...
    with pytest.raises(Killed):
        jobs.pretrain_job(PROJECT)  # ... and died at step 5: no failure recorded, the state says pretraining
    pdir = rig.store.project_dir(PROJECT)
    assert (pdir / pretrain_round.CHECKPOINT).is_file() and rig.status()["state"] == "pretraining"
    assert len(rig.versions()) == 1
    time.sleep(0.6)
    assert rig.status()["lease_expired"]

    steps.clear()
    kill[0] = False
    rig.setup()  # the next trigger takes the dead run over, as a pretrain
    assert rig.status()["state"] == "queued"
    rig.drain()
    assert steps == [5, 6]  # continued from the checkpoint's step 4
    _, pretrained = rig.versions()
    assert pretrained["pretrain"]["resumed_from"] == 4 and pretrained["pretrain"]["steps"] == STEPS
    assert rig.ranked == ["typiclust"] and rig.status()["state"] == "idle"


def test_start_training_before_any_label_asks_for_the_pretrain(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.setup()
    rig.trainer.handle.queue.empty()
    rig.conn.delete(f"mtal:project:{PROJECT}")  # as if the /setup's request had run and failed (nothing published)
    body = {"action": "START_TRAINING", "project": {"id": int(PROJECT)}}
    answer = rig.client.post("/webhook", json=body).get_json()["result"]
    assert answer["status"] == "pretrain_enqueued"
    assert rig.trainer.handle.queue.jobs[0].func_name == "backend.loop.jobs.pretrain_job"
    rig.trainer.handle.queue.empty()
    rig.conn.delete(f"mtal:project:{PROJECT}")
    rig.label(1)  # a label counted: Start Training trains
    answer = rig.client.post("/webhook", json=body).get_json()["result"]
    assert answer["status"] == "enqueued"
    assert rig.trainer.handle.queue.jobs[0].func_name == "backend.loop.jobs.train_job"


def test_off_by_default_and_skipped_over_imagenet_weights(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(minutes=0.0)
    rig.setup()
    assert rig.trainer.handle.queue.count == 0 and rig.status()["state"] == "idle"  # MTAL_PRETRAIN_MINUTES=0

    rig = make_rig()
    (meta,) = rig.versions()
    path = rig.store.project_dir(PROJECT) / "versions" / f"{meta['version']}.json"
    stored = json.loads(path.read_text())
    stored["start"]["weights"] = "ResNet18_Weights.IMAGENET1K_V1"  # as if the trunk had ImageNet weights
    path.write_text(json.dumps(stored))
    rig.setup()
    rig.drain()
    st = rig.status()
    assert st["state"] == "idle" and st["pretrain"]["state"] == "skipped"
    assert "IMAGENET1K_V1" in st["pretrain"]["reason"]
    assert len(rig.versions()) == 1 and rig.ranked == []


def test_a_pretrain_killed_after_publishing_is_ranked_by_the_run_that_takes_over(
        make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(lease_s=0.5)
    real = jobs.pretrain_version

    def publish_then_die(*a: Any, **k: Any) -> Any:
        real(*a, **k)
        raise Killed

    monkeypatch.setattr(jobs, "pretrain_version", publish_then_die)
    rig.setup()
    job = Job.fetch(rig.status()["job_id"], connection=rig.conn)
    rig.trainer.handle.queue.remove(job)
    job.set_status(JobStatus.STARTED)
    with pytest.raises(Killed):
        jobs.pretrain_job(PROJECT)
    _, pretrained = rig.versions()
    assert rig.status()["state"] == "pretraining" and rig.ranked == []
    time.sleep(0.6)
    assert rig.trainer.coordinator.recover_all() == [PROJECT]  # a worker starting
    rig.drain()
    assert rig.ranked == ["typiclust"] and len(rig.versions()) == 2
    st = rig.status()
    assert st["state"] == "idle" and st["pretrain"] == {"state": "done", "version": pretrained["version"]}
