"""Typed Label Studio REST client used by the backend's jobs (label-studio-sdk 2.1.2, LS 1.23).

All REST knowledge of the backend lives here. Label Studio is the source of truth: the training job
reads every annotation through :meth:`LabelStudioAPI.iter_labelled_tasks`; the ranking job pushes
scores with :meth:`create_predictions_bulk` and points the project at them with
:meth:`set_project_ranking`. Behaviour verified against a real LS 1.23.2 is recorded in
docs/label-studio.md. Every failure (HTTP error, connection error, bad payload) raises
:class:`LabelStudioAPIError` carrying the HTTP status (None when there was no response) and LS's message.

Auth: ``api_key`` may be a legacy token or a personal access token (the SDK refreshes PATs itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

__all__ = ["LabelStudioAPI", "LabelStudioAPIError", "UNCERTAINTY_SAMPLING", "SAMPLING_MODES"]

UNCERTAINTY_SAMPLING: Final = "Uncertainty sampling"
SAMPLING_MODES: Final = ("Sequential sampling", "Uniform sampling", UNCERTAINTY_SAMPLING)
_PREDICTION_KEYS: Final = frozenset({"task", "result", "score", "model_version", "cluster"})


class LabelStudioAPIError(RuntimeError):
    """A Label Studio request failed. ``status`` is the HTTP status or None (no response)."""

    def __init__(self, what: str, status: int | None, message: str) -> None:
        self.what = what
        self.status = status
        self.message = message
        super().__init__(f"Label Studio {what} failed ({status if status is not None else 'no response'}): {message}")


def _message(body: Any) -> str:
    """LS error bodies look like {"detail": ..., "validation_errors": {...}}; keep what explains the error."""
    if isinstance(body, Mapping):
        parts = [str(body[k]) for k in ("detail", "validation_errors", "error", "message") if body.get(k)]
        if parts:
            return "; ".join(parts)[:2000]
    return str(body)[:2000]


class LabelStudioAPI:
    """Thin client over :class:`label_studio_sdk.LabelStudio`; methods return plain JSON dicts."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, client: LabelStudio | None = None) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http(s) URL of Label Studio, got {url!r}")
        if not api_key:
            raise ValueError("api_key: empty Label Studio token")
        self.url = url.rstrip("/")
        self.sdk = client or LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    # -- plumbing -------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an SDK call, turning its errors into LabelStudioAPIError."""
        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            raise LabelStudioAPIError(what, e.status_code, _message(e.body)) from e
        except httpx.HTTPError as e:
            raise LabelStudioAPIError(what, None, f"{type(e).__name__}: {e}") from e

    def _request(self, what: str, method: str, path: str, *, params: dict[str, Any] | None = None,
                 json: Any = None) -> Any:
        """A raw request through the SDK's authenticated HTTP client (for endpoints the SDK does not wrap,
        and where LS's JSON must reach the caller unchanged). Returns the decoded JSON body (None if empty)."""
        http = self.sdk._client_wrapper.httpx_client  # noqa: SLF001 - the SDK's authenticated client
        resp = self._call(what, http.request, path, method=method, params=params, json=json)
        if resp.status_code >= 400:
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            raise LabelStudioAPIError(what, resp.status_code, _message(body))
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise LabelStudioAPIError(what, resp.status_code, f"not JSON: {resp.text[:300]!r}") from e

    # -- projects -------------------------------------------------------------------------------
    def get_project(self, project_id: int) -> dict[str, Any]:
        """The project as LS returns it: ``label_config``, ``model_version``, ``sampling``, counts, ..."""
        return self._request("get project", "GET", f"api/projects/{int(project_id)}/")

    def set_project_ranking(self, project_id: int, model_version: str,
                            sampling: str = UNCERTAINTY_SAMPLING) -> dict[str, Any]:
        """PATCH the project's ``model_version`` and ``sampling``; returns the updated project.

        With ``sampling="Uncertainty sampling"`` LS's ``/next`` serves, among unlabelled tasks having a
        prediction whose ``model_version`` equals the project's, the lowest prediction score first.
        """
        if not model_version:
            raise ValueError("model_version: must be a non-empty string (LS matches it against predictions)")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling: {sampling!r} is not one of {SAMPLING_MODES}")
        return self._request("update project ranking", "PATCH", f"api/projects/{int(project_id)}/",
                             json={"model_version": model_version, "sampling": sampling})

    def next_task(self, project_id: int) -> dict[str, Any] | None:
        """The task LS would serve next to this token's user (``GET /api/projects/{id}/next``), or None
        when nothing is left (LS answers 404)."""
        try:
            return self._request("next task", "GET", f"api/projects/{int(project_id)}/next")
        except LabelStudioAPIError as e:
            if e.status == 404:
                return None
            raise

    # -- tasks ----------------------------------------------------------------------------------
    def _iter_task_pages(self, what: str, project_id: int, fields: str, page_size: int) -> Iterator[dict[str, Any]]:
        if page_size < 1:
            raise ValueError(f"page_size: must be >= 1, got {page_size}")
        page, seen = 1, 0
        while True:
            params = {"project": int(project_id), "fields": fields, "page": page, "page_size": page_size}
            try:
                body = self._request(what, "GET", "api/tasks/", params=params)
            except LabelStudioAPIError as e:
                if e.status == 404 and page > 1:  # LS: "Invalid page." after the last one
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, Mapping) else []
            yield from tasks
            seen += len(tasks)
            total = body.get("total") if isinstance(body, Mapping) else None
            if not tasks or len(tasks) < page_size or (total is not None and seen >= total):
                return
            page += 1

    def iter_tasks(self, project_id: int, *, only_unlabelled: bool = False,
                   page_size: int = 100) -> Iterator[dict[str, Any]]:
        """All tasks of a project, every page: dicts with ``id``, ``data``, ``total_annotations`` (non-cancelled
        annotations), ``cancelled_annotations``, ``total_predictions``, ``is_labeled``.
        ``only_unlabelled`` keeps tasks with no submitted annotation."""
        for task in self._iter_task_pages("list tasks", project_id, "task_only", page_size):
            if only_unlabelled and int(task.get("total_annotations") or 0) > 0:
                continue
            yield task

    def iter_labelled_tasks(self, project_id: int, *, page_size: int = 100,
                            include_cancelled: bool = False) -> Iterator[dict[str, Any]]:
        """Tasks that have at least one annotation, with their ``annotations`` (full ``result`` lists) and
        ``predictions``; reads every page. Skipped ("cancelled") annotations are dropped unless asked for."""
        for task in self._iter_task_pages("list labelled tasks", project_id, "all", page_size):
            annotations = [a for a in task.get("annotations") or []
                           if include_cancelled or not a.get("was_cancelled")]
            if annotations:
                yield {**task, "annotations": annotations}

    # -- predictions ----------------------------------------------------------------------------
    def create_predictions_bulk(self, project_id: int, predictions: Sequence[Mapping[str, Any]]) -> int:
        """Create predictions; returns how many LS created.

        Each item: ``{"task": int, "result": list, "score": float, "model_version": str, "cluster"?: int}``.
        Items without ``cluster`` go in one ``POST /api/projects/{id}/import/predictions`` (LS 1.23 drops
        ``cluster`` there and silently skips results that do not match the labeling config, so the count
        is checked). Items with ``cluster`` are posted one by one to ``POST /api/predictions/``, the only
        endpoint of LS 1.23 that stores it.

        Raises:
            ValueError: an item misses a field or has a bad type (the message names the item and field).
            LabelStudioAPIError: LS refused the request or created fewer predictions than sent.
        """
        bulk: list[dict[str, Any]] = []
        single: list[dict[str, Any]] = []
        for i, item in enumerate(predictions):
            clean = _check_prediction(i, item)
            (single if "cluster" in clean else bulk).append(clean)
        created = 0
        if bulk:
            body = self._request("import predictions", "POST", f"api/projects/{int(project_id)}/import/predictions",
                                 json=bulk)
            created = int((body or {}).get("created", 0))
            if created != len(bulk):
                raise LabelStudioAPIError("import predictions", 201, f"LS created {created} of {len(bulk)} "
                                          "predictions: the others do not match the project's labeling config")
        for item in single:
            self._request("create prediction", "POST", "api/predictions/", json=item)
            created += 1
        return created


    def model_versions(self, project_id: int) -> dict[str, int]:
        """Prediction count per ``model_version`` of the project (``GET /api/projects/{id}/model-versions/``;
        the project's own ``model_version`` is listed even with no prediction)."""
        body = self._request("list model versions", "GET", f"api/projects/{int(project_id)}/model-versions/")
        if not isinstance(body, dict):
            raise LabelStudioAPIError("list model versions", 200, f"expected an object, got {body!r:.200}")
        return {str(k): int(v or 0) for k, v in body.items()}

    def delete_predictions(self, project_id: int, model_version: str) -> None:
        """Delete every prediction of ``model_version`` in the project
        (``DELETE /api/projects/{id}/model-versions/`` with ``{"model_version": ...}``)."""
        if not model_version:
            raise ValueError("model_version: must be a non-empty string (an empty one would delete every prediction)")
        self._request("delete predictions", "DELETE", f"api/projects/{int(project_id)}/model-versions/",
                      json={"model_version": model_version})


def _check_prediction(i: int, item: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one prediction item of create_predictions_bulk; returns a plain dict with known keys."""
    if not isinstance(item, Mapping):
        raise ValueError(f"predictions[{i}]: expected a dict, got {type(item).__name__}")
    unknown = set(item) - _PREDICTION_KEYS
    if unknown:
        raise ValueError(f"predictions[{i}]: unknown fields {sorted(unknown)}; allowed {sorted(_PREDICTION_KEYS)}")
    task = item.get("task")
    if not isinstance(task, int) or isinstance(task, bool):
        raise ValueError(f"predictions[{i}].task: expected a task id (int), got {task!r}")
    if not isinstance(item.get("result"), list):
        raise ValueError(f"predictions[{i}].result: expected a list of LS result dicts")
    score = item.get("score")
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        raise ValueError(f"predictions[{i}].score: expected a finite number, got {score!r}")
    version = item.get("model_version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"predictions[{i}].model_version: expected a non-empty string, got {version!r}")
    clean = {"task": task, "result": list(item["result"]), "score": float(score), "model_version": version}
    if item.get("cluster") is not None:
        cluster = item["cluster"]
        if not isinstance(cluster, int) or isinstance(cluster, bool):
            raise ValueError(f"predictions[{i}].cluster: expected an int, got {cluster!r}")
        clean["cluster"] = cluster
    return clean
