"""The rest of a large /predict, predicted and pushed to Label Studio in the background.

*Retrieve Predictions* on a whole project sends every task without a prediction of the current version in
one /predict and waits 100 s for it (gateways in front of Label Studio cut at ~90 s). /predict computes what
fits (:mod:`backend.web.predict_batch`) and hands the other tasks here: :func:`hand_over` writes them (their
``id``, ``data`` and non-cancelled ``annotations``, and the request's labeling config) as JSON lines to a file
in the project's ``tmp/`` of the model store (shared with separate workers, as the checkpoints are) and
enqueues :func:`predict_rest_job`, which predicts them with the current version exactly as /predict would
(:meth:`backend.serving.model.MTALModel.predict`, in slices of :data:`SLICE` tasks) and pushes each slice
through the API (``POST /api/projects/{id}/import/predictions``), skipping tasks another path served
meanwhile (:mod:`backend.loop.served`). It needs ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``, as training
does. Tasks whose image cannot be fetched get no prediction (logged): a later Retrieve Predictions asks again.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.loop.served import PUSH, ServedTasks
from backend.serving.store import ModelStore

__all__ = ["JOB", "SLICE", "hand_over", "predict_rest_job", "spool_tasks"]

log = logging.getLogger(__name__)
JOB = "backend.loop.predict_rest.predict_rest_job"
SLICE = 64  # tasks predicted and pushed at once
_NAME = re.compile(r"rest-[0-9a-f]{32}\.jsonl")


def spool_tasks(store: ModelStore, project: str, label_config: str | None,
                tasks: Sequence[Mapping[str, Any]]) -> str:
    """Write ``tasks`` for :func:`predict_rest_job` to ``<project>/tmp/rest-<uuid>.jsonl``; returns the name.
    First line: ``{"label_config": ...}``; then one task per line: ``id``, ``data``, non-cancelled
    ``annotations`` (the ground truth /predict conditions on, and what makes a task "labelled")."""
    name = f"rest-{uuid.uuid4().hex}.jsonl"
    path = store.tmp_dir(project) / name
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"label_config": label_config}) + "\n")
        for t in tasks:
            annotations = [a for a in t.get("annotations") or []
                           if isinstance(a, Mapping) and not a.get("was_cancelled")]
            f.write(json.dumps({"id": t["id"], "data": t["data"], "annotations": annotations}) + "\n")
    return name


def hand_over(queue: Any, store: ModelStore, project: str, label_config: str | None,
              tasks: Sequence[Mapping[str, Any]]) -> str:
    """Spool ``tasks`` and enqueue their job (at the front: a Retrieve Predictions waits on it); returns the
    job id."""
    name = spool_tasks(store, project, label_config, tasks)
    job_id = f"mtal-rest-{name[5:-6]}"
    queue.enqueue(JOB, str(project), name, job_id=job_id, job_timeout=6 * 3600, at_front=True, result_ttl=3600,
                  failure_ttl=7 * 24 * 3600)
    return job_id


def _read(path: Path) -> tuple[str | None, list[dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        head = json.loads(f.readline())
        return head.get("label_config"), [json.loads(line) for line in f if line.strip()]


def predict_rest_job(project: Any, name: str) -> dict[str, Any]:
    """Predict and push the tasks spooled under ``name`` (module docstring); returns {"tasks", "pushed",
    "failed", "served"} (served: tasks another path gave their prediction meanwhile). The file is removed."""
    from backend.loop.jobs import JobContext, _project_id  # jobs imports the job modules, not the reverse
    from backend.serving.model import MTALModel

    project = _project_id("predict_rest", project)
    if not _NAME.fullmatch(str(name)):
        raise ValueError(f"predict_rest: {str(name)[:60]!r} is not a spooled task file name")
    ctx = JobContext.create()
    path = ctx.store.tmp_dir(project) / name
    try:
        label_config, tasks = _read(path)
        model = MTALModel(project, label_config, ctx.settings, ctx.store, fetcher=ctx.fetcher)
        served = ServedTasks(ctx.coordinator.redis)
        pushed = failed = skipped = 0
        for start in range(0, len(tasks), SLICE):
            part = tasks[start:start + SLICE]
            results = model.predict(part)
            preds = [{"task": int(t["id"]), "result": r["result"], "score": r["score"],
                      "model_version": r["model_version"]} for t, r in zip(part, results, strict=True) if "score" in r]
            failed += len(part) - len(preds)
            if not preds:
                continue
            version = preds[0]["model_version"]
            mine = served.claim(project, version, [p["task"] for p in preds], PUSH)
            todo = [p for p in preds if str(p["task"]) in mine]
            skipped += len(preds) - len(todo)
            try:
                pushed += ctx.ls.create_predictions_bulk(int(project), todo) if todo else 0
            except Exception:
                served.release(project, version, [p["task"] for p in todo], PUSH)
                raise
    finally:
        path.unlink(missing_ok=True)
    log.info("project %s: pushed %d predictions for the rest of a large /predict (%d tasks; %d without an image, "
             "%d served meanwhile)", project, pushed, len(tasks), failed, skipped)
    return {"tasks": len(tasks), "pushed": pushed, "failed": failed, "served": skipped}
