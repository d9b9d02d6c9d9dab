"""Webhook events -> per-modality label counts and training requests."""

from __future__ import annotations

import fakeredis
import pytest
from rq import Queue

from backend.labelstudio.label_config import parse_label_config
from backend.loop.coordinator import Coordinator
from backend.loop.events import EventError, handle_webhook, labelled_modalities
from backend.loop.queue import QUEUE_NAME, QueueHandle

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="wall"/><Label value="chair"/></BrushLabels>
  <RectangleLabels name="objects" toName="image"><Label value="chair"/></RectangleLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple">
    <Choice value="semantic"/><Choice value="objects"/>
  </Choices>
</View>"""
CONFIG_NO_CHOICES = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="wall"/></BrushLabels>
  <RectangleLabels name="objects" toName="image"><Label value="chair"/></RectangleLabels>
</View>"""
RECT = {"from_name": "objects", "to_name": "image", "type": "rectanglelabels",
        "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0, "rectanglelabels": ["chair"]}}
BRUSH = {"from_name": "semantic", "to_name": "image", "type": "brushlabels",
         "value": {"format": "rle", "rle": [0], "brushlabels": ["wall"]}}


def ticked(*names: str) -> dict:
    return {"from_name": "mtal_labelled", "to_name": "image", "type": "choices", "value": {"choices": list(names)}}


@pytest.fixture()
def coord() -> Coordinator:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return Coordinator(QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False))


def event(action: str, result: list, config: str = CONFIG, **extra) -> dict:
    return {"action": action, "project": {"id": 12, "label_config": config},
            "annotation": {"id": 1, "result": result, **extra}, "task": {"id": 3}}


def test_choices_tag_decides_what_is_labelled() -> None:
    schema = parse_label_config(CONFIG)
    # ticked but empty = labelled as empty; drawn but not ticked = not (yet) labelled
    assert labelled_modalities([ticked("objects")], schema) == {"objects"}
    assert labelled_modalities([BRUSH, ticked("objects")], schema) == {"objects"}
    assert labelled_modalities([BRUSH, RECT], schema) == set()


def test_without_choices_tag_a_modality_with_a_result_is_labelled() -> None:
    schema = parse_label_config(CONFIG_NO_CHOICES)
    assert labelled_modalities([RECT], schema) == {"objects"}
    assert labelled_modalities([RECT, BRUSH], schema) == {"objects", "semantic"}
    assert labelled_modalities([], schema) == set()


def test_partial_annotations_count_only_their_modalities(coord: Coordinator) -> None:
    out = handle_webhook(event("ANNOTATION_CREATED", [BRUSH, ticked("semantic")]), coord, lambda p: 10)
    assert out.status == "counted" and out.counted == ("semantic",)
    handle_webhook(event("ANNOTATION_UPDATED", [ticked("semantic", "objects")]), coord, lambda p: 10)
    handle_webhook(event("ANNOTATION_CREATED", [RECT], was_cancelled=True), coord, lambda p: 10)
    assert coord.status("12")["labels_since_last_run"] == {"semantic": 2, "objects": 1}
    assert coord.handle.queue.count == 0


def test_threshold_enqueues_one_run(coord: Coordinator) -> None:
    results = [handle_webhook(event("ANNOTATION_CREATED", [ticked("semantic", "objects")]), coord, lambda p: 4)
               for _ in range(3)]
    assert [r.status for r in results] == ["counted", "enqueued", "counted"]
    assert coord.handle.queue.count == 1


def test_start_training_and_deletions(coord: Coordinator) -> None:
    start = {"action": "START_TRAINING", "project": {"id": 12, "title": "x"}}
    assert handle_webhook(start, coord, lambda p: 99).status == "enqueued"
    assert handle_webhook(start, coord, lambda p: 99).status == "queued"
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 12}, "annotations": [{"id": 1}, {"id": 2}]}
    assert handle_webhook(deleted, coord, lambda p: 99).counted == ("deleted",)
    assert coord.status("12")["labels_since_last_run"] == {"deleted": 2}


def test_unknown_events_are_ignored(coord: Coordinator) -> None:
    for action in ("PROJECT_UPDATED", "TASKS_CREATED", "SOMETHING_NEW"):
        assert handle_webhook({"action": action, "project": {"id": 1}}, coord, lambda p: 1).status == "ignored"
    assert coord.handle.queue.count == 0


@pytest.mark.parametrize(
    "payload",
    [None, [], "x", {}, {"action": 3}, {"action": "START_TRAINING"}, {"action": "START_TRAINING", "project": 5},
     {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CONFIG}},
     {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"result": []}},
     {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CONFIG}, "annotation": {"result": 7}},
     {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CONFIG}, "annotation": [3]}],
)
def test_malformed_payloads_raise_event_error(coord: Coordinator, payload: object) -> None:
    with pytest.raises(EventError):
        handle_webhook(payload, coord, lambda p: 1)


def test_smart_tool_regions_are_not_counted(coord: Coordinator) -> None:
    """A smart rectangle with the detection's labels (Label Studio's interactive template) is a tool: its
    regions count nowhere, and the webhook counts exactly what the same annotation counts without them."""
    smart = CONFIG_NO_CHOICES.replace("</View>", '<RectangleLabels name="box_smart" toName="image" smart="true">'
                                      '<Label value="chair"/></RectangleLabels></View>')
    clicked = {**RECT, "from_name": "box_smart"}
    got = handle_webhook(event("ANNOTATION_CREATED", [clicked, BRUSH], smart), coord, lambda p: 100)
    assert got.counted == ("semantic",)
    assert handle_webhook(event("ANNOTATION_CREATED", [clicked], smart), coord, lambda p: 100).status == "ignored"
    assert coord.status("12")["labels_since_last_run"] == {"semantic": 1}
