"""The floor of ``bench.loop``'s webhook latency: a WSGI app that reads the body and answers ``{"status":
"UP"}`` at once, served by the same gunicorn settings (``backend/web/gunicorn.conf.py``) and hit by the same
client, so what the MTAL webhook adds on top of HTTP, gunicorn and the client is measured side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["app"]

_BODY = b'{"status":"UP"}\n'


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(_BODY)))])
    return [_BODY]
