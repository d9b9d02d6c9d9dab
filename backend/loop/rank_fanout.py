"""A ranking fanned out over RQ (issue #24): chunk jobs score, one merge job selects and pushes.

:func:`start_ranking` (in the rank job, which owns the project's run) splits the tasks to score into chunks of
``MTAL_RANK_CHUNK_TASKS``. One chunk (a small project) is ranked right there, in that job
(:func:`backend.loop.rank_pass.rank_tasks`: no files, no more jobs). More chunks become a *run* (``run`` = the
merge job's id, ``mtal-rank-<hex>``):

1. the plan is written under the model store (``<MODEL_DIR>/<project>/tmp/rank-<run>/``: ``plan.json`` with
   the version, label config, labelled and unscored task ids; ``tasks-<i>.json`` per chunk), and any older
   run's folder of the project is deleted (its chunks are stale);
2. the run is handed over to the merge job (the coordinator's ``job_id`` becomes ``run``, atomically with the
   owner check), so every later write of the run is checked against it;
3. the chunk jobs (``rank_chunk_job``, ``Retry(max=CHUNK_TRIES - 1)``, at-least-once) and the merge job
   (``rank_merge_job``, depending on every chunk with ``allow_failure``, so that it also runs to report a chunk
   that failed for good) are enqueued. While they wait the merge job is DEFERRED in RQ, which the coordinator
   counts as a live run (no take-over).

A chunk job (:func:`score_chunk`) drops its work when the run is no longer the project's (a new training run
or a take-over replaced it: stale), else fetches, decodes and scores its tasks (a task whose image fails is
logged and left out; the chunk goes on), spools the pre-annotations to a named file and writes its rows,
strategy scores and pooled features [n, D] with ``torch.save`` (atomic rename: a chunk killed mid-write
leaves nothing); a second execution of the same chunk writes the same files again. The worker keeps a
short heartbeat on it in RQ's started-job registry (:class:`backend.loop.worker.HeartbeatWorker`), so a chunk
whose worker died is found abandoned by any worker's registry maintenance and retried by RQ.

The merge job (:func:`merge_ranking`) counts the chunks' files: one missing (its chunk failed
``CHUNK_TRIES`` times) fails the ranking with the chunk's error in ``/status``; nothing is pushed, and the
previous ranking stays in Label Studio. With all of them it selects over the whole pool (diversity needs
every feature) and pushes through :func:`backend.loop.rank_pass.select_and_push`. Idempotent: the stored
ranking records ``run``, so a merge that runs again after publishing pushes nothing; a merge that died in
the middle of its push leaves a ``pushing`` marker, and the next one deletes the version's predictions
before pushing them all again (one prediction per task either way).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job

from backend.labelstudio.label_config import ProjectSchema
from backend.loop.rank_pass import NothingFetched, _score_tasks, load_ranker, rank_tasks, select_and_push
from backend.loop.rank_progress import RankProgress
from backend.loop.result_spool import ResultSpool
from backend.serving.model import load_schema
from backend.serving.store import atomic_write_bytes, atomic_write_json
from backend.serving.strategy import strategy_for

__all__ = ["CHUNK_TRIES", "RankRun", "RankingFailed", "is_current", "merge_ranking", "score_chunk", "split",
           "start_ranking", "unscored_of"]

log = logging.getLogger(__name__)
CHUNK_TRIES = 3  # a chunk that fails this many times (an error, or its worker died) fails the ranking
CHUNK_JOB = "backend.loop.jobs.rank_chunk_job"
MERGE_JOB = "backend.loop.jobs.rank_merge_job"


class RankingFailed(RuntimeError):
    """A fanned-out ranking cannot be published: a chunk failed for good (the message says which and why)."""


def split(tasks: Sequence[Any], size: int) -> list[list[Any]]:
    """``tasks`` in order, in chunks of ``size`` (the last may be shorter); [] for no task."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [list(tasks[i:i + size]) for i in range(0, len(tasks), size)]


class RankRun:
    """The files of one fanned-out ranking: ``<MODEL_DIR>/<project>/tmp/rank-<run>/``."""

    def __init__(self, store: Any, project: str, run: str) -> None:
        self.store, self.project, self.run = store, project, run
        self.dir = store.tmp_dir(project) / f"rank-{run}"

    def write_plan(self, plan: Mapping[str, Any], chunks: Sequence[Sequence[Mapping[str, Any]]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for i, tasks in enumerate(chunks):
            atomic_write_json(self.dir / f"tasks-{i}.json", list(tasks))
        atomic_write_json(self.dir / "plan.json", {**plan, "chunks": len(chunks)})

    def plan(self) -> dict[str, Any]:
        return json.loads((self.dir / "plan.json").read_text(encoding="utf-8"))

    def tasks(self, index: int) -> list[dict[str, Any]]:
        return json.loads((self.dir / f"tasks-{index}.json").read_text(encoding="utf-8"))

    def spool_path(self, index: int) -> Path:
        """A fresh spool file for one execution of chunk ``index`` (two executions never share one)."""
        return self.dir / f"chunk-{index}.{uuid.uuid4().hex[:12]}.jsonl"

    def save_chunk(self, index: int, rows: list[dict[str, Any]], parts: list[Any], pooled: list[torch.Tensor],
                   spool: ResultSpool) -> None:
        """Chunk ``index``'s results (``spool`` already synced), atomically: the chunk is done once this returns."""
        spool.sync()
        buf = _bytes({"rows": rows, "parts": parts, "pooled": pooled, "spool": spool.path.name if spool.path else None,
                      "offsets": spool.offsets})
        atomic_write_bytes(self.dir / f"chunk-{index}.pt", buf)

    def load_chunks(self, n: int) -> tuple[list[dict[str, Any]], list[int]]:
        """(results of the chunks that are done, in index order, each with its reopened ``spool``; indices of the
        chunks without results)."""
        done, missing = [], []
        for i in range(n):
            path = self.dir / f"chunk-{i}.pt"
            if not path.exists():
                missing.append(i)
                continue
            chunk = torch.load(path, map_location="cpu", weights_only=False)
            chunk["spool"] = ResultSpool.reopen(self.dir / chunk["spool"], chunk["offsets"])
            done.append(chunk)
        return done, missing

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_others(self) -> None:
        """Delete the folders of the project's other (older, stale) runs."""
        for path in self.dir.parent.glob("rank-*"):
            if path != self.dir and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def _bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def start_ranking(ctx: Any, project: str, schema: ProjectSchema, label_config: str, version: str,
                  tasks: Sequence[Mapping[str, Any]], labelled_ids: set[Any], unscored: set[str],
                  guard: Callable[[], None]) -> dict[str, Any]:
    """Rank ``tasks`` (labelled first or not: the order is kept) of ``project`` with ``version``: in this job when
    they fit in one chunk (returns the ranking's summary, ``"chunks": 1``), else as a fanned-out run (returns
    {"version", "run", "chunks", "tasks"}; the merge job ends the run). ``ctx``: a job context that owns the run."""
    chunks = split(tasks, ctx.settings.rank_chunk_tasks)
    progress = RankProgress(ctx.coordinator.redis, project)
    if len(chunks) <= 1:
        run = ctx.owner or f"mtal-rank-{uuid.uuid4().hex}"
        progress.start(run, version, 1, len(tasks))
        summary = rank_tasks(ctx, project, schema, version, tasks, labelled_ids, guard=guard, unscored=unscored,
                             progress=lambda done, failed: progress.chunk(run, 0, done, failed))
        progress.chunk(run, 0, summary["tasks"], len(tasks) - summary["tasks"], done=True)
        progress.state(run, "done")
        return {**summary, "chunks": 1}
    run = f"mtal-rank-{uuid.uuid4().hex}"
    files = RankRun(ctx.store, project, run)
    guard()  # this job still owns the run: every other run's folder is stale
    files.remove_others()
    files.write_plan({"version": version, "label_config": label_config, "labelled": sorted(map(str, labelled_ids)),
                      "unscored": sorted(unscored)}, chunks)
    progress.start(run, version, len(chunks), len(tasks))
    ctx.coordinator.progress(project, ctx.owner, job_id=run)  # hand the run to the merge job (owner-checked)
    queue: Queue = ctx.coordinator.handle.queue
    timeout, kept = ctx.coordinator.job_timeout, {"result_ttl": 24 * 3600, "failure_ttl": 7 * 24 * 3600}
    retry = Retry(max=CHUNK_TRIES - 1, enqueue_at_front=True)
    chunk_jobs = queue.enqueue_many([
        Queue.prepare_data(CHUNK_JOB, (project, run, i), job_id=f"{run}-chunk-{i}", timeout=timeout, retry=retry,
                           description=f"rank chunk {i + 1}/{len(chunks)} of project {project}", **kept)
        for i in range(len(chunks))])
    queue.enqueue(MERGE_JOB, project, run, len(chunks), job_id=run, job_timeout=timeout, retry=retry,
                  depends_on=Dependency(jobs=chunk_jobs, allow_failure=True, enqueue_at_front=True), **kept)
    log.info("project %s: ranking %d tasks with %s in %d chunk jobs, merged by job %s", project, len(tasks), version,
             len(chunks), run)
    return {"version": version, "run": run, "chunks": len(chunks), "tasks": len(tasks)}


def is_current(coordinator: Any, project: str, run: str) -> bool:
    """Whether ``run`` is still the project's ranking (the state is ``ranking`` and the merge job owns it)."""
    return coordinator.run_owner(project) == ("ranking", run)


def score_chunk(ctx: Any, project: str, run: str, index: int) -> dict[str, Any]:
    """Chunk ``index`` of ranking ``run`` (see the module docstring). Returns {"run", "chunk", "scored",
    "failed"} or, for a stale run, {"run", "chunk", "stale": True} (nothing scored or written)."""
    if not is_current(ctx.coordinator, project, run):
        log.info("project %s: rank chunk %d of %s dropped: the ranking was superseded", project, index, run)
        return {"run": run, "chunk": index, "stale": True}
    files, progress = RankRun(ctx.store, project, run), RankProgress(ctx.coordinator.redis, project)
    plan = files.plan()
    tasks = files.tasks(index)
    schema = load_schema(plan["label_config"], ctx.settings.dense_fields)
    job = get_current_job()
    counts = [0, 0]

    def report(done: int, failed: int) -> None:
        counts[:] = [done, failed]
        progress.chunk(run, index, done, failed)
        if job is not None:
            job.meta["rank"] = {"run": run, "chunk": index, "tasks": len(tasks), "scored": done, "failed": failed}
            job.save_meta()

    model, strategy, prefill, _ = load_ranker(ctx, project, schema, plan["version"])
    labelled = set(plan["labelled"])
    with ResultSpool(path=files.spool_path(index)) as spool:
        rows, parts, pooled = _score_tasks(ctx, model, strategy, schema, tasks,
                                           {t["id"] for t in tasks if str(t["id"]) in labelled}, spool, prefill,
                                           progress=report)
        if tasks and not rows:
            Path(spool.path).unlink(missing_ok=True)
            raise NothingFetched(f"project {project}: rank chunk {index}: no task image of {len(tasks)} "
                                 "could be fetched")
        if not is_current(ctx.coordinator, project, run):
            Path(spool.path).unlink(missing_ok=True)
            log.info("project %s: rank chunk %d of %s scored but dropped: the ranking was superseded",
                     project, index, run)
            return {"run": run, "chunk": index, "stale": True}
        files.save_chunk(index, rows, parts, pooled, spool)
    progress.chunk(run, index, counts[0], counts[1], done=True)
    log.info("project %s: rank chunk %d of %s: %d tasks scored, %d failed", project, index, run, *counts)
    return {"run": run, "chunk": index, "scored": counts[0], "failed": counts[1]}


def merge_ranking(ctx: Any, project: str, run: str, n_chunks: int, guard: Callable[[], None]) -> dict[str, Any]:
    """Select over the chunks of ``run`` and publish (see the module docstring); ``ctx`` owns the run. Returns
    the ranking's summary ({"already_published": True, ...} when ``run`` was published before); RankingFailed
    when a chunk has no results."""
    if ctx.store.ranking(project).get("run") == run:
        log.info("project %s: ranking %s was published already; nothing pushed again", project, run)
        return {"run": run, "already_published": True, "pushed": 0}
    guard()  # a superseded run stops here (LeaseLost)
    files, progress = RankRun(ctx.store, project, run), RankProgress(ctx.coordinator.redis, project)
    chunks, missing = files.load_chunks(n_chunks)
    try:
        if missing:
            reason = f"{len(missing)} of {n_chunks} rank chunks failed; {_chunk_failure(ctx, run, missing[0])}"
            progress.state(run, "failed", reason)
            raise RankingFailed(reason)
        progress.state(run, "merging")
        plan = files.plan()
        version = plan["version"]
        schema = load_schema(plan["label_config"], ctx.settings.dense_fields)
        strategy = strategy_for(ctx.settings, schema, ctx.store.metadata(project, version))
        previous = ctx.store.ranking(project)
        strategy.load_state((previous.get("strategy_state") or {}).get(strategy.name, {}))
        rows, parts, pooled = [], [], []
        for i, chunk in enumerate(chunks):
            rows += [{**r, "spooled": None if r["spooled"] is None else (i, r["spooled"])} for r in chunk["rows"]]
            parts += chunk["parts"]
            pooled += chunk["pooled"]
        marker = files.dir / "pushing"
        guard()
        if marker.exists():  # a merge of this run died while pushing: start its push again from nothing
            log.warning("project %s: ranking %s was partly pushed; deleting %s's predictions first", project, run,
                        version)
            ctx.ls.delete_predictions(int(project), version)
        marker.touch()
        summary = select_and_push(ctx, project, schema, version, strategy, previous, rows, parts, pooled,
                                  lambda key: chunks[key[0]]["spool"].get(key[1]), guard, set(plan["unscored"]),
                                  run=run)
    finally:
        for chunk in chunks:
            chunk["spool"].close()
    progress.state(run, "done")
    return {**summary, "run": run, "chunks": n_chunks}


def _chunk_failure(ctx: Any, run: str, index: int) -> str:
    """Why chunk ``index`` of ``run`` has no results, from its RQ job (its last error, or its status)."""
    try:
        job = Job.fetch(f"{run}-chunk-{index}", connection=ctx.coordinator.redis)
    except NoSuchJobError:
        return f"chunk {index + 1}: its job is gone"
    result = job.latest_result()
    error = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
    tries = CHUNK_TRIES - (job.retries_left or 0)
    status = getattr(job.get_status(), "value", job.get_status())
    return f"chunk {index + 1} ({status} after {tries} tries): {error[0] if error else 'no error recorded'}"


def unscored_of(ctx: Any, project: str, run: str) -> set[str]:
    """The unlabelled tasks ``run`` left out on purpose (MTAL_RANK_MAX_TASKS), from its plan ({} without one)."""
    try:
        return set(RankRun(ctx.store, project, run).plan()["unscored"])
    except (OSError, ValueError, KeyError):
        return set()

