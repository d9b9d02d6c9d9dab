"""The MTAL backend served in-process on a free port (werkzeug, threaded) for integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from werkzeug.serving import make_server

from backend.settings import Settings
from backend.web.app import create_app

__all__ = ["serve_backend"]


@contextmanager
def serve_backend(settings: Settings) -> Iterator[str]:
    """Run ``create_app(settings)`` on 127.0.0.1 and yield its URL; the server stops on exit."""
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="mtal-backend", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
