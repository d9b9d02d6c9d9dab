"""A local, in-memory fake of the Label Studio 1.23 REST endpoints that :mod:`backend.labelstudio.client` and
:class:`backend.labelstudio.images.ImageFetcher` use. For benchmarks only (``bench.loop``); not a test double of
LS's validation (it accepts any prediction ``result``).

Endpoints (shapes as recorded in docs/label-studio.md):

- ``GET /api/projects/{id}/`` -> the project (``id``, ``label_config``, ``model_version``, ``sampling``)
- ``PATCH /api/projects/{id}/`` -> updates ``model_version`` / ``sampling``; returns the project
- ``GET /api/tasks/?project=&fields=&page=&page_size=`` -> ``{"total", "tasks": [...]}``; 404 past the end
- ``POST /api/projects/{id}/import/predictions`` (a list) -> 201 ``{"created": n}``
- ``POST /api/predictions/`` (one dict; a list is refused with 400, like LS) -> 201 the prediction
- ``GET /api/projects/{id}/model-versions/`` -> ``{version: prediction count}``; ``DELETE`` with
  ``{"model_version": v}`` deletes that version's predictions
- ``GET /data/upload/{project}/{task}.png`` -> one of ``n_images`` generated PNGs (task id modulo n_images)

Usage::

    with FakeLabelStudio.start(label_config, n_tasks=1000) as ls:
        api = LabelStudioAPI(ls.url, "token")
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

__all__ = ["FakeLabelStudio", "make_images"]

_PROJECT = re.compile(r"^/api/projects/(\d+)/$")
_IMPORT = re.compile(r"^/api/projects/(\d+)/import/predictions/?$")
_VERSIONS = re.compile(r"^/api/projects/(\d+)/model-versions/$")
_IMAGE = re.compile(r"^/data/upload/(\d+)/(\d+)\.png$")


def make_images(n: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct PNG files (uint8 RGB [height, width, 3]: a random colour gradient plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(-1, 1, (3, 3))
        ramp = a * (yy / height)[..., None] + b * (xx / width)[..., None]  # [H, W, 3]
        img = 128 + 60 * ramp + 40 * c + rng.normal(0, 12, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@dataclass
class FakeLabelStudio:
    """The fake's state and its server. ``tasks`` are LS task dicts (``annotations`` for labelled ones)."""

    label_config: str
    tasks: list[dict[str, Any]]
    images: list[bytes]
    project_id: int = 1
    project: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    image_delay_s: float = 0.0  # each image answer waits this long (a slow image store)
    _port: int = 0

    @classmethod
    def start(cls, label_config: str, n_tasks: int, n_images: int = 256, image_hw: tuple[int, int] = (72, 96),
              project_id: int = 1, labelled: dict[int, list[dict[str, Any]]] | None = None,
              port: int = 0) -> FakeLabelStudio:
        """Serve a project of ``n_tasks`` image tasks (ids 1..n_tasks) on 127.0.0.1:``port`` (0: a free one).
        ``labelled``: task id -> annotation ``result`` for tasks that have one annotation."""
        labelled = labelled or {}
        tasks = []
        for tid in range(1, n_tasks + 1):
            task: dict[str, Any] = {"id": tid, "project": project_id,
                                    "data": {"image": f"/data/upload/{project_id}/{tid}.png"},
                                    "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0}
            if tid in labelled:
                task["total_annotations"] = 1
                task["annotations"] = [{"id": tid, "task": tid, "result": labelled[tid], "was_cancelled": False,
                                        "completed_by": 1}]
            tasks.append(task)
        fake = cls(label_config, tasks, make_images(n_images, *image_hw), project_id)
        fake.project = {"id": project_id, "title": "bench", "label_config": label_config,
                        "model_version": "", "sampling": "Sequential sampling"}
        handler = type("Handler", (_Handler,), {"fake": fake})
        fake.server = _Server(("127.0.0.1", port), handler)
        threading.Thread(target=fake.server.serve_forever, name="fake-ls", daemon=True).start()
        return fake

    def restart(self) -> None:
        """Serve again on the same port after :meth:`stop` (same tasks, predictions and project)."""
        if self.server is None:
            handler = type("Handler", (_Handler,), {"fake": self})
            self.server = _Server(("127.0.0.1", self._port), handler)
            threading.Thread(target=self.server.serve_forever, name="fake-ls", daemon=True).start()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving: connections are refused (Label Studio down) until :meth:`restart`."""
        if self.server is not None:
            self._port = self.server.server_address[1]
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FakeLabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the endpoints: (status, JSON body) ----------------------------------------------------
    def get_tasks(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        page = int(query.get("page", ["1"])[0])
        size = int(query.get("page_size", ["100"])[0])
        fields = query.get("fields", ["task_only"])[0]
        if int(query.get("project", ["0"])[0]) != self.project_id:
            return 200, {"total": 0, "tasks": []}
        chunk = self.tasks[(page - 1) * size: page * size]
        if page > 1 and not chunk:
            return 404, {"detail": "Invalid page."}
        if fields != "all":
            chunk = [{k: v for k, v in t.items() if k != "annotations"} for t in chunk]
        else:
            chunk = [{"annotations": [], "predictions": [], **t} for t in chunk]
        return 200, {"total": len(self.tasks), "tasks": chunk}

    def add_predictions(self, items: list[dict[str, Any]]) -> None:
        with self.lock:
            for item in items:
                self.predictions.append({"id": len(self.predictions) + 1, **item})


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # restart() binds the same port again at once
    request_queue_size = 128  # parallel image fetches; the default backlog of 5 causes 1 s SYN retries
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK's httpx client and requests reuse connections
    disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK = 40 ms each
    fake: FakeLabelStudio

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.fake
        parts = urlsplit(self.path)
        if m := _IMAGE.match(parts.path):
            fake.calls["image"] += 1
            if fake.image_delay_s > 0:
                time.sleep(fake.image_delay_s)
            self._send(200, fake.images[int(m.group(2)) % len(fake.images)], "image/png")
        elif parts.path.rstrip("/") == "/api/tasks":
            fake.calls["tasks"] += 1
            self._json(*fake.get_tasks(parse_qs(parts.query)))
        elif (m := _PROJECT.match(parts.path)) and int(m.group(1)) == fake.project_id:
            fake.calls["project"] += 1
            self._json(200, fake.project)
        elif (m := _VERSIONS.match(parts.path)) and int(m.group(1)) == fake.project_id:
            fake.calls["model_versions"] += 1
            self._json(200, dict(Counter(p["model_version"] for p in fake.predictions)))
        else:
            self._json(404, {"detail": "Not found."})

    def do_DELETE(self) -> None:  # noqa: N802
        fake = self.fake
        m = _VERSIONS.match(urlsplit(self.path).path)
        body = self._body()
        if m and int(m.group(1)) == fake.project_id and isinstance(body, dict) and body.get("model_version"):
            fake.calls["delete_predictions"] += 1
            with fake.lock:
                before = len(fake.predictions)
                fake.predictions[:] = [p for p in fake.predictions if p["model_version"] != body["model_version"]]
                deleted = before - len(fake.predictions)
            self._json(200, {"count": deleted})
        else:
            self._json(404, {"detail": "Not found."})

    def do_POST(self) -> None:  # noqa: N802
        fake = self.fake
        path = urlsplit(self.path).path
        body = self._body()
        if (m := _IMPORT.match(path)) and int(m.group(1)) == fake.project_id:
            if not isinstance(body, list):
                self._json(400, {"detail": "Expected a list"})
                return
            fake.calls["import_predictions"] += 1
            fake.add_predictions([{**p, "cluster": None} for p in body])  # LS 1.23 drops cluster here
            self._json(201, {"created": len(body)})
        elif path == "/api/predictions/":
            if not isinstance(body, dict):
                self._json(400, {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})
                return
            fake.calls["prediction"] += 1
            fake.add_predictions([body])
            self._json(201, {"id": len(fake.predictions), **body})
        else:
            self._json(404, {"detail": "Not found."})

    def do_PATCH(self) -> None:  # noqa: N802
        fake = self.fake
        path = urlsplit(self.path).path
        body = self._body()
        if (m := _PROJECT.match(path)) and int(m.group(1)) == fake.project_id and isinstance(body, dict):
            fake.calls["patch_project"] += 1
            fake.project.update({k: body[k] for k in ("model_version", "sampling") if k in body})
            self._json(200, fake.project)
        else:
            self._json(404, {"detail": "Not found."})
