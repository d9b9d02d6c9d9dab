"""The MTAL backend served in-process on a free port (werkzeug, threaded) for integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from werkzeug.serving import make_server

from backend.settings import Settings
from backend.web.app import create_app

if TYPE_CHECKING:
    from tests.support.label_studio import LabelStudioServer
    from tests.support.scene_project import SceneProject

__all__ = ["embedded_scene_backend", "serve_backend"]


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


@contextmanager
def embedded_scene_backend(ls: LabelStudioServer, tmp: Path, title: str, n_tasks: int, size: int,
                           epochs: int) -> Iterator[tuple[LabelStudioServer, SceneProject, str, Settings]]:
    """A scene project of ``n_tasks`` in the real Label Studio ``ls`` and the backend (embedded queue, tiny
    net, ``size`` px, ``epochs`` per training, trains on request) serving it; yields (ls, project, backend
    URL, settings)."""
    from tests.support.scene_project import create_scene_project

    settings = Settings(
        label_studio_url=ls.url, label_studio_api_key=ls.token, model_dir=tmp / "models",
        redis_url=None, net_config="tiny", image_size=size, device="cpu", train_epochs=epochs, train_threshold=0,
        cache_dir=tmp / "cache",
    )
    project = create_scene_project(ls.url, ls.headers, ls.files_root, title, n_tasks, size=size)
    with serve_backend(settings) as backend_url:
        yield ls, project, backend_url, settings
