"""The HTTP side of the ML backend: a Flask 3 app factory implementing Label Studio's ML protocol.

Endpoints (see ``docs/backend.md``): ``GET /health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``GET /versions``, ``GET /metrics``. Every error answer is JSON
``{"error": <name>, "message": <text>}``: 400 for malformed JSON or missing/invalid fields, 401 for
bad basic auth, 404/405 for unknown routes/methods, and a logged 500 only for genuine bugs.

Basic auth (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``) protects every endpoint except ``GET /health``,
which answers ``{"status": "UP"}`` to anyone and adds details (versions, queue) to authenticated
callers, so container health checks work without credentials.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from werkzeug.datastructures import Authorization
from werkzeug.exceptions import HTTPException

from backend.labelstudio.images import ImageFetcher
from backend.labelstudio.interactive import ContextError
from backend.labelstudio.label_config import LabelConfigError
from backend.labelstudio.netguard import UnsafeURL, parse_http_url
from backend.logs import redact
from backend.loop.queue import QueueUnavailable
from backend.loop.trainer import QueueTrainer
from backend.serving.initial import last_start, start_of, weights_fields
from backend.serving.interactive import Interactive
from backend.serving.model import ConfigConflict, ModelSetupError, MTALModel, Trainer
from backend.serving.pool import pool_status
from backend.serving.store import ModelStore, StoreError
from backend.serving.unpublished import UnpublishedModels
from backend.settings import Settings
from backend.web.guard import RETRY_AFTER_S, RequestGuard, internal_error
from backend.web.predict_batch import BatchPredictor, summarize
from backend.web.probe import CachedProbe
from backend.web.request import ApiError, field, json_body, parse_project_id

__all__ = ["ApiError", "create_app", "parse_project_id"]

log = logging.getLogger(__name__)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_KNOWN_ACTIONS = frozenset({
    "START_TRAINING", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
})
FetcherFactory = Callable[[str | None, str | None], Any]


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mtal_requests", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mtal_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100),
            registry=self.registry,
        )
        self.predictions = Counter("mtal_predictions", "Predictions returned (one per task)", registry=self.registry)
        self.failed = Counter("mtal_prediction_failures", "Tasks answered with an empty result", registry=self.registry)
        self.errors = Counter("mtal_errors", "Unhandled errors (HTTP 500)", registry=self.registry)
        self.events = Counter("mtal_webhook_events", "Webhook events", ["action"], registry=self.registry)


class _State:
    """What the views share: settings, store, trainer, image fetchers, /setup connection info."""

    def __init__(
        self, settings: Settings, store: ModelStore, trainer: Trainer, fetcher_factory: FetcherFactory
    ) -> None:
        self.settings = settings
        self.store = store
        self.trainer = trainer
        self.fetcher_factory = fetcher_factory
        self.metrics = _Metrics()
        self.connections: dict[str, tuple[str | None, str | None]] = {}
        self._fetchers: dict[tuple[str | None, str | None], Any] = {}
        self._lock = threading.Lock()
        self.queue_probe = CachedProbe(trainer.state, "the training queue (Redis)")
        self.unpublished = UnpublishedModels(settings.unpublished_models)

    def fetcher(self, project_id: str) -> Any:
        """Image fetcher for a project: LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (or /setup's token);
        without LABEL_STUDIO_URL, /setup's hostname with /setup's token only: the configured key is never
        sent to a host other than LABEL_STUDIO_URL."""
        url, token = self.connections.get(project_id, (None, None))
        if self.settings.label_studio_url:
            key = (self.settings.label_studio_url, self.settings.label_studio_api_key or token)
        else:
            key = (url, token)
        with self._lock:
            if key not in self._fetchers:
                self._fetchers[key] = self.fetcher_factory(*key)
            return self._fetchers[key]

    def model(self, project_id: str, label_config: str | None) -> MTALModel:
        return MTALModel(project_id, label_config, self.settings, self.store, self.trainer,
                         fetcher=self.fetcher(project_id), unpublished=self.unpublished)


def _default_fetcher_factory(settings: Settings) -> FetcherFactory:
    def make(url: str | None, token: str | None) -> Any:
        # a fetch never outlives /predict's deadline by more than one read timeout (see predict_tasks)
        deadline = settings.predict_fetch_s
        return ImageFetcher(url, token, allow_hosts=settings.allow_hosts, cache_dir=settings.cache_dir,
                            timeout=min(10.0, deadline), total_timeout=deadline)

    return make


def create_app(
    settings: Settings | None = None,
    store: ModelStore | None = None,
    trainer: Trainer | None = None,
    fetcher_factory: FetcherFactory | None = None,
) -> Flask:
    """Build the Flask app. Defaults: settings from the environment, a store under MODEL_DIR on the
    configured device, the training queue (:class:`backend.loop.trainer.QueueTrainer`: Redis at REDIS_URL, or
    the embedded queue with its worker thread), and :class:`backend.labelstudio.images.ImageFetcher`."""
    settings = settings or Settings.from_env()
    store = store or ModelStore(settings.model_dir, device=settings.torch_device())
    if trainer is None:
        trainer = QueueTrainer(settings, store)
    state = _State(settings, store, trainer, fetcher_factory or _default_fetcher_factory(settings))
    interactive = Interactive()  # smart tools' clicks, with the per-image feature cache
    handle = getattr(trainer, "handle", None)  # the queue (QueueTrainer): large /predicts' rest, claims
    batches = BatchPredictor(settings, getattr(handle, "queue", None), getattr(handle, "connection", None))
    app = Flask("mtal-backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["mtal"] = state
    app.extensions["mtal_interactive"] = interactive
    m = state.metrics

    def credentials_ok(auth: Authorization | None) -> bool:
        if not settings.auth_enabled:
            return True
        if auth is None or auth.type != "basic":
            return False
        ok_user = hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())  # type: ignore[union-attr]
        ok_pass = hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())  # type: ignore[union-attr]
        return ok_user and ok_pass

    def authorized() -> bool:
        return credentials_ok(request.authorization)

    @app.before_request
    def _start() -> Response | None:
        g.t0 = time.perf_counter()
        if request.endpoint != "health" and not authorized():
            resp = jsonify(error="Unauthorized", message="valid HTTP basic auth credentials required")
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Basic realm="mtal"'
            return resp
        return None

    @app.after_request
    def _count(resp: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        method = request.method if request.method in _METHODS else "other"  # bounded label values
        m.requests.labels(endpoint, method, str(resp.status_code)).inc()
        m.latency.labels(endpoint).observe(time.perf_counter() - g.get("t0", time.perf_counter()))
        return resp

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> tuple[Response, int, dict[str, str]]:
        log.info("%s %s -> %d: %s", request.method, request.path, e.status, e.message)
        return jsonify(e.body()), e.status, ({"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else {})

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> tuple[Response, int]:
        return jsonify(error=e.name, message=e.description), e.code or 500

    @app.errorhandler(Exception)
    def _crash(e: Exception) -> tuple[Response, int]:
        m.errors.inc()
        return jsonify(internal_error(f"{request.method} {request.path}")), 500

    @app.get("/health")
    def health() -> Response:
        out: dict[str, Any] = {"status": "UP", "model_class": "MTALModel"}
        if authorized():  # the queue's state within ~0.3 s, Redis down or hung (see backend.web.probe)
            out["queue"] = state.queue_probe.get()
            versions = {p: store.current(p) for p in store.projects()}
            out["model_versions"] = versions  # per project; a single project's also as model_version
            out["model_version"] = next(iter(versions.values())) if len(versions) == 1 else None
            out.update(weights_fields(last_start(settings)))  # this process's last initial network
        return jsonify(out)

    @app.post("/setup")
    def setup() -> Response:
        body = json_body()
        pid = parse_project_id(body.get("project"))
        schema = field(body, "schema", str)
        hostname = field(body, "hostname", str, required=False)
        token = field(body, "access_token", str, required=False)
        extra = field(body, "extra_params", dict, required=False) or {}
        threshold = extra.get("train_threshold")
        if threshold is not None and (not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0):
            raise ApiError(400, "extra_params.train_threshold must be an integer >= 0")
        if store.current(pid) is None and len(store.projects()) >= settings.max_projects:
            raise ApiError(409, f"the model store holds {settings.max_projects} projects, its limit "
                                "(MTAL_MAX_PROJECTS); remove unused projects from MODEL_DIR or raise the limit")
        if hostname or token:
            state.connections[pid] = (_setup_hostname(settings, hostname), token)
        try:
            version = state.model(pid, schema).setup()
        except LabelConfigError as e:
            raise ApiError(400, f"schema: {e}") from e
        except ModelSetupError as e:
            raise ApiError(422, str(e)) from e
        if threshold is not None:
            store.save_project_info(pid, {**store.project_info(pid), "train_threshold": threshold})
        cold_start = getattr(state.trainer, "cold_start", None)  # MTAL_PRETRAIN_MINUTES > 0: the pretrain run
        if cold_start is not None:
            try:
                cold_start(pid)
            except Exception as e:  # Redis away: /setup still answers (LS waits 3 s); the next trigger retries
                log.warning("/setup: project %s: cold start not requested: %s", pid, e)
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict() -> Response:
        body = json_body()
        tasks = field(body, "tasks", list)
        pid = parse_project_id(body.get("project"))
        label_config = field(body, "label_config", str, required=False)
        params = field(body, "params", dict, required=False) or {}
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise ApiError(400, f"tasks[{i}] must be an object, got {type(task).__name__}")
            if not isinstance(task.get("data"), dict):
                raise ApiError(400, f"tasks[{i}]: missing object field 'data'")
        model = state.model(pid, label_config)
        try:
            _ = model.label_config
            model.schema  # noqa: B018 - parse now so config errors are 400s
        except (LabelConfigError, ValueError) as e:
            raise ApiError(400, f"label_config: {e}") from e
        try:
            if params.get("context") is not None:  # a smart tool's click (is_interactive): the drawn label only
                answer = summarize(interactive.answer(model, tasks, params["context"], pid))
            else:  # any number of tasks: what is not computed in time is pushed in the background
                answer = batches.answer(model, pid, tasks)
        except ContextError as e:
            raise ApiError(400, f"params.context: {e}") from e
        except ConfigConflict as e:
            raise ApiError(409, str(e)) from e
        except ModelSetupError as e:
            raise ApiError(422, str(e)) from e
        m.predictions.inc(answer.predicted + answer.failed)
        m.failed.inc(answer.failed)
        # the version the results came from: CURRENT may have switched while they were computed
        return jsonify(results=answer.results, model_version=answer.version or model.model_version)

    def webhook_answer(body: Mapping[str, Any]) -> dict[str, Any]:
        action = field(body, "action", str)
        pid = parse_project_id(body.get("project"))
        project = body.get("project")
        label_config = project.get("label_config") if isinstance(project, dict) else None
        model = state.model(pid, label_config if isinstance(label_config, str) else None)
        m.events.labels(action if action in _KNOWN_ACTIONS else "other").inc()  # bounded label values
        try:
            answer = model.fit(action, body)
        except ValueError as e:  # the trainer's payload validation (e.g. events.EventError)
            raise ApiError(400, str(e)) from e
        except QueueUnavailable as e:
            log.warning("POST /webhook %s for project %s: %s", action[:40], pid, redact(str(e.__cause__ or e)))
            raise ApiError(503, f"{e}; Label Studio may send the event again later") from None
        return {"status": "ok", "action": action, "project": pid, "result": answer}

    def webhook_fast(body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            return 200, webhook_answer(body)
        except ApiError as e:
            log.info("POST /webhook -> %d: %s", e.status, e.message)
            return e.status, e.body()

    @app.post("/webhook")
    def webhook() -> Response:
        """Reached only when the fast path hands over (no or bad credentials, a body that is not a JSON
        object): see :mod:`backend.web.guard`."""
        return jsonify(webhook_answer(json_body()))

    @app.post("/train")
    def train() -> Response:
        """Label Studio's legacy training call (when its START_TRAINING webhook flag is off)."""
        body = json_body()
        pid = parse_project_id(body.get("project"))
        try:
            answer = state.model(pid, None).fit("START_TRAINING", {"action": "START_TRAINING", "project": {"id": pid}})
        except QueueUnavailable as e:
            log.warning("POST /train for project %s: %s", pid, redact(str(e.__cause__ or e)))
            raise ApiError(503, str(e)) from None
        return jsonify(status="ok", action="START_TRAINING", project=pid, result=answer)

    @app.get("/status")
    def status() -> Response:
        """Per project: run state (idle/queued/pretraining/training/ranking), progress, last version + metrics,
        error, ``pretrain`` (the cold start's last outcome), and ``pool``: the counts of the last fill of its
        unlabelled pool (:class:`backend.serving.pool.PoolFill`)."""
        raw = request.args.get("project")
        if not raw:
            raise ApiError(400, "query parameter 'project' is required, e.g. /status?project=3")
        pid = parse_project_id(raw)
        report = getattr(state.trainer, "status", None)
        try:
            out: dict[str, Any] = report(pid) if report else {"project": pid, "state": "unknown"}
            out["queue"] = state.trainer.state()
        except Exception as e:  # Redis down: say so, without its internals
            log.warning("/status: queue unavailable: %s", e)
            raise ApiError(503, "the training queue (Redis) is unavailable; see the server log") from None
        out["current_version"] = store.current(pid)
        out["pool"] = pool_status(store.root, pid)  # the last fill of the unlabelled pool (None before one)
        try:
            out.update(weights_fields(start_of(store.list_versions(pid), out["current_version"])))
        except StoreError as e:
            log.warning("/status: version metadata unreadable: %s", e)
        return jsonify(out)

    @app.route("/versions", methods=["GET", "POST"])
    def versions() -> Response:
        body = json_body() if request.method == "POST" and request.content_length else None
        raw = request.args.get("project") or (body.get("project") if isinstance(body, dict) else None)
        projects = [parse_project_id(raw)] if raw else store.projects()
        try:
            listed = {p: store.list_versions(p) for p in projects}
        except StoreError as e:
            raise ApiError(400, str(e)) from e
        names = [meta["version"] for p in projects for meta in listed[p]]
        return jsonify(
            versions=names,
            current={p: store.current(p) for p in projects},
            details={p: [_summary(meta) for meta in listed[p]] for p in projects},
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(m.registry), mimetype=CONTENT_TYPE_LATEST)

    app.wsgi_app = RequestGuard(  # type: ignore[method-assign]
        app.wsgi_app, webhook_fast, credentials_ok, m, max_body=settings.max_body_bytes,
        read_timeout=settings.body_read_timeout,
    )
    return app


def _setup_hostname(settings: Settings, hostname: str | None) -> str | None:
    """/setup's ``hostname`` (Label Studio's own URL as LS sees it), when it may be used: never when
    LABEL_STUDIO_URL is set (the configured URL wins; a different one is logged and ignored, as LS often
    knows itself under another name than the backend does), else only a plain http(s) URL."""
    if not hostname:
        return None
    try:
        parsed = parse_http_url(hostname.rstrip("/"))
    except UnsafeURL as e:
        raise ApiError(400, f"hostname: {e}") from None
    if "?" in hostname or "#" in hostname:
        raise ApiError(400, "hostname must be Label Studio's base URL (no query or fragment)")
    if settings.label_studio_url:
        if parsed.origin != parse_http_url(settings.label_studio_url).origin:
            log.warning("/setup: hostname %s ignored: LABEL_STUDIO_URL is %s", parsed.url, settings.label_studio_url)
        return None
    return parsed.url.rstrip("/")


def _summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("version", "number", "parent", "created", "network", "net_config_name", "metrics", "current", "source",
            "candidate", "pretrained", "pretrain")
    return {k: meta.get(k) for k in keys}
