"""``POST /webhook`` answered below Flask: the hot path of the loop, in a plain WSGI middleware.

Label Studio posts one webhook per saved annotation, from the annotator's request, and gives up after
about a second; with many annotators the events arrive in bursts. Flask's request machinery (context
push, URL routing, before/after hooks, ``jsonify``) costs about as much CPU as the work itself (parse
the JSON, one Lua call in Redis), so :class:`WebhookFastPath` answers well-formed, authorised
``POST /webhook`` requests directly. Everything else - other routes, other methods, missing or wrong
credentials, a body that is not JSON - goes to Flask unchanged (the body is handed on re-readable), so
error answers stay those of :mod:`backend.app`.

The answer, the 4xx/500 JSON error bodies and the Prometheus counters are the same as for any route of
the app: ``{"status": "ok", "action", "project", "result"}``; ``{"error", "message"}``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from werkzeug.datastructures import Authorization

__all__ = ["WebhookAnswer", "WebhookFastPath"]

log = logging.getLogger(__name__)
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# body (a JSON object) -> (HTTP status, JSON-able answer or error body)
WebhookAnswer = Callable[[Mapping[str, Any]], tuple[int, dict[str, Any]]]


class WebhookFastPath:
    """WSGI middleware: ``POST /webhook`` with a JSON-object body and valid credentials is answered by
    ``answer(body) -> (status, json)``; anything else is passed to ``inner`` (the Flask app's ``wsgi_app``).

    ``authorized(auth)`` checks the parsed basic-auth header (None when absent); ``metrics`` is the app's
    ``_Metrics`` (``requests``, ``latency``, ``errors``). An exception from ``answer`` is logged and
    answered 500, as the app answers genuine bugs.
    """

    def __init__(
        self,
        inner: WSGIApp,
        answer: WebhookAnswer,
        authorized: Callable[[Authorization | None], bool],
        metrics: Any,
        path: str = "/webhook",
    ) -> None:
        self.inner = inner
        self.answer = answer
        self.authorized = authorized
        self.metrics = metrics
        self.path = path

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self.inner(environ, start_response)
        t0 = time.perf_counter()
        body = self._json_body(environ)
        if body is None or not self.authorized(Authorization.from_header(environ.get("HTTP_AUTHORIZATION"))):
            return self.inner(environ, start_response)  # Flask answers 400 / 401 as for any route
        try:
            status, out = self.answer(body)
        except Exception as e:
            log.exception("unhandled error in POST %s", self.path)
            self.metrics.errors.inc()
            status, out = 500, {"error": "Internal Server Error", "message": f"{type(e).__name__}: {e}"}
        data = (json.dumps(out, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n").encode()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        self.metrics.requests.labels("webhook", "POST", str(status)).inc()
        self.metrics.latency.labels("webhook").observe(time.perf_counter() - t0)
        return [data]

    @staticmethod
    def _json_body(environ: dict[str, Any]) -> dict[str, Any] | None:
        """The body as a JSON object, or None (not JSON, not an object, or no Content-Length). The body is
        put back as a fresh stream so the inner app can read it again."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None  # chunked or missing length: let werkzeug deal with it
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None
