"""Label Studio webhook events -> label counts and training requests. Answers in milliseconds.

Label Studio 1.23 posts every project event to the backend's ``/webhook`` (it creates that webhook
when the backend is connected). What MTAL does with them:

=====================  ===========================================================================
action                 effect
=====================  ===========================================================================
ANNOTATION_CREATED     +1 per modality the annotation labels (partial annotations count only theirs)
ANNOTATIONS_CREATED    same, for each annotation of the bulk event
ANNOTATION_UPDATED     same (the modalities of the new version changed)
ANNOTATIONS_DELETED    +1 on the ``deleted`` counter per deleted annotation (LS sends only ids)
START_TRAINING         a run now ("Start Training" in the UI, or every N annotations when the project
                       sets ``min_annotations_to_start_training``)
TASKS_CREATED          the imported tasks (LS sends them whole, inside the import request, at most
                       100 per request) wait for a small scoring job (:mod:`backend.loop.new_tasks`)
anything else          ignored (200)
=====================  ===========================================================================

Which modalities an annotation labels: with a modalities ``Choices`` tag, the ticked choices; without
one, every modality with at least one result (DESIGN.md §3). Cancelled (skipped) annotations count
for nothing. Counts only *trigger* runs: a run reads every annotation from Label Studio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from backend.labelstudio.label_config import LabelConfigError, ProjectSchema, parse_label_config
from backend.loop.coordinator import Coordinator
from backend.loop.new_tasks import NewTasks

__all__ = ["EventError", "WebhookResult", "handle_webhook", "labelled_modalities"]

log = logging.getLogger(__name__)
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
MAX_EVENT_ITEMS = 10_000  # annotations per bulk event, ids per ANNOTATIONS_DELETED, results per annotation
DELETED = "deleted"


class EventError(ValueError):
    """The webhook payload is malformed (answered with 400)."""


@dataclass(frozen=True)
class WebhookResult:
    """What the webhook did, returned to Label Studio as JSON."""

    action: str
    project: str | None
    status: str  # "ignored" | "counted" | "enqueued" | "queued" | "follow_up"
    counted: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "project": self.project, "status": self.status, "counted": list(self.counted)}


def labelled_modalities(result: list[dict[str, Any]], schema: ProjectSchema) -> set[str]:
    """Modalities an annotation ``result`` labels (see module docstring). Raises EventError when the
    modalities tag's ``value.choices`` is not a list (items that are not objects count for nothing)."""
    if schema.choices_tag is not None:
        for item in result:
            if isinstance(item, dict) and item.get("from_name") == schema.choices_tag:
                value = item.get("value")
                ticked = value.get("choices") if isinstance(value, dict) else None
                if not isinstance(ticked, list):
                    raise EventError(f"'annotation.result' item of {schema.choices_tag!r}: 'value.choices' must be "
                                     f"a list, got {type(ticked).__name__}")
                return {c for c in ticked if isinstance(c, str) and c in schema.modalities}
        return set()
    return {
        schema.tags[item["from_name"]].modality
        for item in result
        if isinstance(item, dict) and item.get("from_name") in schema.tags
    }


@lru_cache(maxsize=64)
def _schema(label_config: str) -> ProjectSchema:
    return parse_label_config(label_config)


def handle_webhook(
    payload: Any,
    coordinator: Coordinator,
    threshold_for: Callable[[str], int],
    project_id: str | None = None,
) -> WebhookResult:
    """Route one webhook payload. Raises EventError for malformed payloads.

    project_id: the id the caller validated (``backend.web.request.parse_project_id``); it is the one used for
    every key and job, never the raw ``payload["project"]["id"]`` (``"7\\n"``, ``"7.<nonce>"``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise EventError("webhook payload must be a JSON object with a string 'action'")
    action = payload["action"]
    project = payload.get("project")
    if project_id is None and isinstance(project, dict) and project.get("id") is not None:
        project_id = str(project.get("id"))

    if action == "START_TRAINING":
        if project_id is None:
            raise EventError("START_TRAINING needs 'project' with an 'id'")
        return WebhookResult(action, project_id, coordinator.request_training(project_id))

    if action == "TASKS_CREATED":
        if project_id is None:
            raise EventError("TASKS_CREATED needs 'project' with an 'id'")
        tasks = _created_tasks(payload)
        status = NewTasks(coordinator).add(project_id, tasks) if tasks else "ignored"
        return WebhookResult(action, project_id, status)

    if action not in (*ANNOTATION_EVENTS, "ANNOTATIONS_DELETED"):
        return WebhookResult(action, project_id, "ignored")
    if project_id is None:
        raise EventError(f"{action} needs 'project' with an 'id'")

    if action == "ANNOTATIONS_DELETED":
        deleted = payload.get("annotations") or []
        if isinstance(deleted, list) and len(deleted) > MAX_EVENT_ITEMS:
            raise EventError(f"ANNOTATIONS_DELETED lists {len(deleted)} ids; at most {MAX_EVENT_ITEMS} per event")
        names = [DELETED] * max(1, len(deleted) if isinstance(deleted, list) else 1)
    else:
        names = _count_annotations(action, payload, project)
    if not names:
        return WebhookResult(action, project_id, "ignored")
    enqueued = coordinator.record_labels(project_id, names, threshold_for(project_id))
    return WebhookResult(action, project_id, "enqueued" if enqueued else "counted", tuple(sorted(set(names))))


def _count_annotations(action: str, payload: dict[str, Any], project: dict[str, Any]) -> list[str]:
    annotations = payload.get("annotation")
    if annotations is None:
        raise EventError(f"{action} needs 'annotation'")
    if isinstance(annotations, dict):
        annotations = [annotations]
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise EventError(f"{action}: 'annotation' must be an object or a list of objects")
    if len(annotations) > MAX_EVENT_ITEMS:
        raise EventError(f"{action} carries {len(annotations)} annotations; at most {MAX_EVENT_ITEMS} per event")
    results: list[list[Any]] = []
    for i, ann in enumerate(annotations):
        result = [] if ann.get("result") is None else ann["result"]  # absent or null: nothing labelled
        if not isinstance(result, list):  # {} or "" is not "no labels": the whole event is refused, nothing counted
            where = "annotation" if isinstance(payload["annotation"], dict) else f"annotation[{i}]"
            raise EventError(f"{action}: '{where}.result' must be a list, got {type(result).__name__}")
        if len(result) > MAX_EVENT_ITEMS:
            raise EventError(f"{action}: an annotation has {len(result)} results; at most {MAX_EVENT_ITEMS}")
        if not ann.get("was_cancelled"):
            results.append(result)
    config = project.get("label_config")
    if not isinstance(config, str) or not config.strip():
        raise EventError(f"{action} needs 'project.label_config' to tell modalities apart")
    try:
        schema = _schema(config)
    except LabelConfigError as exc:
        log.warning("project %s: webhook with an unsupported labeling config: %s", project.get("id"), exc)
        return []
    return [name for result in results for name in sorted(labelled_modalities(result, schema))]


def _created_tasks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """TASKS_CREATED's ``tasks``: each an object with an integer ``id`` and an object ``data`` (none: nothing
    to score, ignored)."""
    tasks = payload.get("tasks")
    if tasks is None:
        return []
    if not isinstance(tasks, list) or len(tasks) > MAX_EVENT_ITEMS:
        raise EventError(f"TASKS_CREATED needs 'tasks', a list of at most {MAX_EVENT_ITEMS} task objects")
    for t in tasks:
        ok = isinstance(t, dict) and isinstance(t.get("id"), int) and not isinstance(t.get("id"), bool)
        if not ok or t["id"] < 0 or not isinstance(t.get("data"), dict):
            raise EventError("TASKS_CREATED: every task needs an integer 'id' and an object 'data'")
    return tasks
