"""The WSGI layer below Flask: request guards for every route, and ``POST /webhook`` answered directly.

Guards, in this order, before any byte of a body is read or parsed (each answers JSON
``{"error", "message"}``, like every error of :mod:`backend.web.app`):

1. credentials (every route but ``GET /health``): 401 without reading the body;
2. a ``POST`` with a body must say ``Content-Type: application/json`` (415): a cross-site form or
   ``text/plain`` POST from a browser is refused, as no CORS preflight protects it;
3. ``Content-Length`` is required for a body (411, no chunked uploads) and at most ``max_body``
   (413, ``MTAL_MAX_BODY_BYTES``), except a ``POST /webhook`` over ``stream_from`` bytes (1 MiB) or over
   ``max_body``: Label Studio's bulk events (5,000 brush annotations are ~44 MiB, sent once with a 1 s
   timeout) are counted as they arrive, in bounded memory and without a size limit
   (:mod:`backend.web.bulk_webhook`);
4. the body is read within ``read_timeout`` seconds in total (408): a watchdog shuts the read side of
   a client socket that is still dripping its body at the deadline, so a slow client holds a server
   thread for at most that long. (Without a socket in the environ, e.g. the test client, the body is
   already in memory.)

Then the body is handed on re-readable to Flask, except ``POST /webhook``: Label Studio posts one per
saved annotation, from the annotator's request, and gives up after about a second; Flask's request
machinery costs about as much CPU as the work itself (parse the JSON, one Lua call in Redis), so
:class:`RequestGuard` parses it (JSON errors, nesting too deep included, are 400s) and calls
``answer(body) -> (status, json)`` directly. The answers and Prometheus counters are those of any route:
``{"status": "ok", "action", "project", "result"}``; ``{"error", "message"}``; a 500 says no more than
"internal error" and an id to find the traceback in the log.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from werkzeug.datastructures import Authorization

from backend.web.bulk_webhook import STREAM_FROM, StreamError, WebhookStream, summary

__all__ = [
    "RETRY_AFTER_S", "BodyRefused", "RequestGuard", "WebhookAnswer", "WebhookFastPath", "internal_error",
    "json_error_body", "parse_object",
]

log = logging.getLogger(__name__)
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# body (a JSON object) -> (HTTP status, JSON-able answer or error body)
WebhookAnswer = Callable[[Mapping[str, Any]], tuple[int, dict[str, Any]]]
_CHUNK = 64 * 1024
_STREAM_CHUNK = 256 * 1024  # a streamed webhook's reads: fewer, larger pieces to filter and decode
RETRY_AFTER_S = 5  # the Retry-After of every 503 (the training queue unavailable)
_ENDPOINTS = frozenset({"health", "setup", "predict", "webhook", "train", "status", "versions", "metrics"})
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def json_error_body(status: int, message: str) -> dict[str, str]:
    """``{"error": <reason phrase>, "message": <text>}``."""
    return {"error": HTTPStatus(status).phrase, "message": message}


def internal_error(where: str) -> dict[str, str]:
    """Log the current exception with a fresh id; the 500 body names only that id."""
    ref = uuid.uuid4().hex[:12]
    log.exception("unhandled error in %s (error id %s)", where, ref)
    return json_error_body(500, f"internal error (error id {ref}; details are in the server log)")


class _ReadWatchdog:
    """One daemon thread that shuts the read side of sockets whose body read passed its deadline.

    It is woken only when a watch becomes the earliest deadline (the first after an idle spell; the
    deadlines of one server grow with time), and each time it wakes it drops every finished watch at
    once: a burst of webhooks costs it one wake-up, not one per request competing with the requests
    for the CPU and the GIL (issue #27). ``wakeups`` counts them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._active: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.wakeups = 0

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._cond:
            token = next(self._ids)
            heapq.heappush(self._heap, (deadline, token, sock))
            self._active.add(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mtal-read-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][1] == token:  # earlier than what the thread sleeps until (or it sleeps for good)
                self._cond.notify()
            return token

    def done(self, token: int) -> None:
        with self._cond:
            self._active.discard(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                self.wakeups += 1
                while self._heap and self._heap[0][1] not in self._active:  # finished reads: nothing to do
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token, sock = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._active.discard(token)
            with contextlib.suppress(OSError):  # the read passed its deadline
                sock.shutdown(socket.SHUT_RD)  # the blocked recv returns b"": a short body


_WATCHDOG = _ReadWatchdog()


class BodyRefused(Exception):
    """A request refused by a guard: HTTP ``status``, ``message``, extra response ``headers``."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


class RequestGuard:
    """WSGI middleware around the Flask app's ``wsgi_app`` (see the module docstring).

    ``authorized(auth)`` checks the parsed basic-auth header (None when absent); ``metrics`` is the app's
    ``_Metrics`` (``requests``, ``latency``, ``errors``); ``answer`` handles a ``POST /webhook`` body.
    """

    def __init__(
        self,
        inner: WSGIApp,
        answer: WebhookAnswer,
        authorized: Callable[[Authorization | None], bool],
        metrics: Any,
        max_body: int = 32 * 1024 * 1024,
        read_timeout: float = 30.0,
        path: str = "/webhook",
        open_paths: tuple[str, ...] = ("/health",),
        stream_from: int = STREAM_FROM,
    ) -> None:
        self.inner = inner
        self.answer = answer
        self.authorized = authorized
        self.metrics = metrics
        self.max_body = int(max_body)
        self.read_timeout = float(read_timeout)
        self.path = path
        self.open_paths = open_paths
        self.stream_from = int(stream_from)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t0 = time.perf_counter()
        path, method = environ.get("PATH_INFO") or "", environ.get("REQUEST_METHOD") or ""
        endpoint = path.strip("/") if path.strip("/") in _ENDPOINTS else "unknown"  # bounded metric labels
        method_label = method if method in _METHODS else "other"
        try:
            if path not in self.open_paths and not self.authorized(
                Authorization.from_header(environ.get("HTTP_AUTHORIZATION"))
            ):
                raise BodyRefused(401, "valid HTTP basic auth credentials required",
                               [("WWW-Authenticate", 'Basic realm="mtal"')])
            if method not in ("POST", "PUT", "PATCH"):
                return self.inner(environ, start_response)
            if path == self.path and _declared_length(environ) > min(self.stream_from, self.max_body):
                body = self._read_streamed(environ)  # a bulk event: counted as it arrives
            else:
                raw = self._read_body(environ)
                if path != self.path:
                    return self.inner(environ, start_response)
                body = parse_object(raw)
        except BodyRefused as e:
            if e.status in (401, 415):
                log.info("%s %s -> %d: %s", method_label, endpoint, e.status, e.message)
            else:
                log.warning("%s %s -> %d: %s", method_label, endpoint, e.status, e.message)
            out = json_error_body(e.status, e.message)
            return self._respond(start_response, e.status, out, (endpoint, method_label), t0, e.headers)
        try:
            status, out = self.answer(body)
        except Exception:
            self.metrics.errors.inc()
            status, out = 500, internal_error(f"POST {self.path}")
        return self._respond(start_response, status, out, ("webhook", "POST"), t0)

    def _respond(
        self, start_response: Callable[..., Any], status: int, out: Mapping[str, Any], labels: tuple[str, str],
        t0: float, headers: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        data = (json.dumps(out, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n").encode()
        extra = [("Retry-After", str(RETRY_AFTER_S))] if status == 503 else []
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra, *(headers or [])]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        self.metrics.requests.labels(labels[0], labels[1], str(status)).inc()
        self.metrics.latency.labels(labels[0]).observe(time.perf_counter() - t0)
        return [data]

    def _read_streamed(self, environ: dict[str, Any]) -> dict[str, Any]:
        """A ``POST /webhook`` body over ``stream_from`` (or ``max_body``) bytes: guards 2 and 4 (no size limit),
        fed to a :class:`backend.web.bulk_webhook.WebhookStream` as it arrives; returns what counting needs."""
        t0, stream = time.perf_counter(), WebhookStream()
        try:
            self._read_body(environ, sink=stream.feed)
            body = stream.body()
        except StreamError as e:
            raise BodyRefused(400, str(e)) from None
        log.info("POST /webhook: %d bytes streamed (%s; %d bytes of masks skipped) in %.3f s", stream.received,
                 summary(body), stream.cut, time.perf_counter() - t0)
        return body

    def _read_body(self, environ: dict[str, Any], sink: Callable[[bytes], None] | None = None) -> bytes:
        """The whole body (guards 2-4), put back into the environ as a fresh stream; with ``sink``, each
        chunk goes to it instead, nothing is kept, and there is no size limit (guard 3 only asks for a
        Content-Length)."""
        raw_length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower()
        if chunked or (raw_length and not raw_length.isdigit()):
            raise BodyRefused(411, "a request body needs a Content-Length (chunked bodies are not accepted)")
        length = int(raw_length or 0)
        if length > self.max_body and sink is None:
            raise BodyRefused(413, f"request body of {length} bytes exceeds the limit of {self.max_body} "
                                "(MTAL_MAX_BODY_BYTES)")
        if length:
            ctype = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                raise BodyRefused(415, f"Content-Type must be application/json, got {ctype or '(none)'!r}")
        stream = environ["wsgi.input"]
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        token = _WATCHDOG.watch(sock, time.monotonic() + self.read_timeout) if length and sock is not None else None
        buf, got = bytearray(), 0
        try:
            while len(buf) + got < length:
                chunk = stream.read(min(_CHUNK if sink is None else _STREAM_CHUNK, length - len(buf) - got))
                if not chunk:
                    break
                if sink is None:
                    buf += chunk
                else:
                    sink(chunk)
                    got += len(chunk)
        except (OSError, ValueError) as e:
            raise BodyRefused(408, f"request body could not be read: {type(e).__name__}") from None
        finally:
            if token is not None:
                _WATCHDOG.done(token)
        if len(buf) + got < length:
            raise BodyRefused(408, f"request body incomplete after {self.read_timeout:g} s "
                                f"({len(buf) + got} of {length} bytes)")
        environ["wsgi.input"] = io.BytesIO(bytes(buf))
        environ["CONTENT_LENGTH"] = str(len(buf))
        return bytes(buf)


def _declared_length(environ: Mapping[str, Any]) -> int:
    """The request's Content-Length, 0 when absent or not a number (guard 3 refuses those later)."""
    raw = environ.get("CONTENT_LENGTH") or ""
    return int(raw) if raw.isdigit() else 0


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, or BodyRefused(400): not JSON, not UTF-8, nested too deeply, not an object."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BodyRefused(400, "request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise BodyRefused(400, "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BodyRefused(400, "request body must be a JSON object")
    return body


WebhookFastPath = RequestGuard  # the name it had before the guards
