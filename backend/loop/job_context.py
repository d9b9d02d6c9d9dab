"""What every RQ job of :mod:`backend.loop.jobs` and :mod:`backend.loop.rank_jobs` shares: the job context
(settings, model store, coordinator, Label Studio client, image fetcher), the run wrapper that holds the run's
lease and records a failure, and the retries while Label Studio is unreachable."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rq import get_current_job

from backend.labelstudio.client import LabelStudioAPI, LabelStudioAPIError
from backend.labelstudio.images import ImageFetcher
from backend.labelstudio.label_config import ProjectSchema
from backend.loop.coordinator import Coordinator, LeaseLost
from backend.loop.queue import open_queue
from backend.loop.rank_pass import NothingFetched
from backend.serving.model import MTALModel, load_schema
from backend.serving.store import ModelStore
from backend.settings import Settings

__all__ = ["JobContext", "configure", "ls_unreachable", "project_id", "retry_ls", "run_job"]

log = logging.getLogger(__name__)
_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Jobs running inside the server (embedded queue) use the server's settings, not the environment."""
    global _configured
    _configured = settings


@dataclass
class JobContext:
    """Everything a job needs, built once per job from the settings."""

    settings: Settings
    store: ModelStore
    coordinator: Coordinator
    ls: LabelStudioAPI
    fetcher: ImageFetcher
    owner: str | None = None  # the RQ job id that owns the run (None outside RQ: unchecked)
    lost: threading.Event = field(default_factory=threading.Event)  # set once the run was taken over

    def check_owner(self, project: str) -> None:
        """LeaseLost when this job's run was taken over (called before every write that outlives it)."""
        self.coordinator.check_owner(project, self.owner)

    @classmethod
    def create(cls) -> JobContext:
        settings = _configured or Settings.from_env()
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise RuntimeError("training needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read annotations")
        return cls(
            settings=settings,
            store=ModelStore(settings.model_dir, device=settings.torch_device()),
            coordinator=Coordinator(open_queue(settings.redis_url, start_worker=False), lease_s=settings.lease_s),
            ls=LabelStudioAPI(settings.label_studio_url, settings.label_studio_api_key),
            fetcher=ImageFetcher(
                settings.label_studio_url,
                settings.label_studio_api_key,
                allow_hosts=settings.allow_hosts,
                cache_dir=settings.cache_dir,
            ),
        )

    def schema(self, project: str) -> ProjectSchema:
        """The project's schema from its current labeling config in Label Studio; makes sure the store
        has a version matching it (a fresh initial one if the config changed its modalities)."""
        return self.config_and_schema(project)[1]

    def config_and_schema(self, project: str) -> tuple[str, ProjectSchema]:
        """(the project's labeling config XML, its schema), as :meth:`schema`."""
        config = self.ls.get_project(int(project))["label_config"]
        MTALModel(project, config, self.settings, self.store).setup()
        return config, load_schema(config, self.settings.dense_fields)


def run_job(stage: str, project: Any, body: Any) -> Any:
    """Run ``body(ctx, project)``; on failure record the error (the state machine gives the label
    counts back and honours follow-ups) and re-raise so RQ keeps the traceback too."""
    project = project_id(stage, project)
    job = get_current_job()
    owner = job.id if job is not None else None
    ctx = None
    try:
        ctx = JobContext.create()
        ctx.owner = owner
        with ctx.coordinator.hold(project, owner) as lost:  # the lease: a killed job's run is taken over
            ctx.lost = lost
            return body(ctx, project)
    except LeaseLost as e:  # another run owns the project now: leave its state, versions and ranking alone
        log.warning("%s job of project %s stopped: %s", stage, project, e)
        raise
    except Exception as e:
        if ctx is not None:
            coordinator = ctx.coordinator
        else:
            coordinator = Coordinator(open_queue((_configured or Settings.from_env()).redis_url, start_worker=False))
        try:
            coordinator.fail(project, f"{stage}: {type(e).__name__}: {e}", owner=owner)
        except LeaseLost:
            log.warning("%s job of project %s failed after its run was taken over: %s", stage, project, e)
        raise


def ls_unreachable(e: BaseException) -> bool:
    """Label Studio did not answer, or answered that it is down or overloaded (no response, 408, 429, 5xx),
    or not one task image could be fetched: worth another try later."""
    if isinstance(e, LabelStudioAPIError):
        return e.status is None or e.status in (408, 429) or e.status >= 500
    return isinstance(e, NothingFetched)


def retry_ls(ctx: JobContext, project: str, what: str, step: Any, in_status: bool = True) -> Any:
    """``step()``, tried again while Label Studio is unreachable: ``ls_retries`` more times after waits of
    ``ls_backoff_s`` doubling up to 60 s (the lease is renewed meanwhile); each wait is logged and, with
    ``in_status`` (a job that owns the run), shown in /status as the ``error``, cleared on success. The last
    failure is raised (the run fails, the project goes back to idle with its counts)."""
    settings, attempt = ctx.settings, 0
    while True:
        try:
            result = step()
        except Exception as e:
            if not ls_unreachable(e) or attempt == settings.ls_retries:
                raise
            wait = min(60.0, settings.ls_backoff_s * 2**attempt)
            attempt += 1
            message = (f"{what}: Label Studio unreachable (try {attempt} of {settings.ls_retries + 1}, "
                       f"next in {wait:g} s): {e}")
            log.warning("project %s: %s", project, message)
            if in_status:
                ctx.coordinator.progress(project, ctx.owner, error=message[:2000], ls_retries=attempt)
            time.sleep(wait)
            continue
        if attempt and in_status:
            with contextlib.suppress(LeaseLost):  # the step handed the run over (to a fanned-out ranking's merge)
                ctx.coordinator.progress(project, ctx.owner, error="", ls_retries=attempt)
        return result


def project_id(stage: str, project: Any) -> str:
    """``project`` as a Label Studio project id string; never "7\\n" (int() accepts it)."""
    project = str(project)
    if not re.fullmatch(r"[0-9]{1,20}", project):
        raise ValueError(f"{stage}: {project[:40]!r} is not a Label Studio project id")
    return project
