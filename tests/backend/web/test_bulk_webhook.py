"""Bulk webhooks read as a stream (backend.web.bulk_webhook): the mask filter on chunks of every size, the
kept fields, malformed bodies, and through the app: a body over MTAL_MAX_BODY_BYTES counted on /webhook
(with the training trigger) while every other route keeps the limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backend.loop.events import handle_webhook
from backend.web.bulk_webhook import RleFilter, StreamError, WebhookStream
from tests.backend.web.test_app_hardening import SEG, _app, _settings

CHOICES = ('<View><Image name="image" value="$image"/><BrushLabels name="seg" toName="image"><Label value="car"/>'
           '</BrushLabels><RectangleLabels name="det" toName="image"><Label value="car"/></RectangleLabels>'
           '<Choices name="mtal_labelled" toName="image" choice="multiple"><Choice value="seg"/><Choice value="det"/>'
           "</Choices></View>")


def _brush(name: str = "seg", n: int = 2000) -> dict[str, Any]:
    return {"id": "r", "type": "brushlabels", "from_name": name, "to_name": "image", "original_width": 640,
            "original_height": 480, "value": {"format": "rle", "rle": list(range(n)), "brushlabels": ["car"]}}


def _bulk(n: int, config: str = SEG, masks: int = 2000, **extra: Any) -> dict[str, Any]:
    name = "semantic" if config == SEG else "seg"
    annotations = [{"id": i, "result": [_brush(name, n=masks)], "was_cancelled": i % 4 == 3, "task": i}
                   for i in range(n)]
    return {"action": "ANNOTATIONS_CREATED", "annotation": annotations, "project": {"id": 3, "label_config": config},
            "task": [{"id": i, "data": {"image": f"/data/upload/3/{i}.png"}} for i in range(n)], **extra}


def _filtered(raw: bytes, size: int) -> bytes:
    f = RleFilter()
    return b"".join(f.feed(raw[i:i + size]) for i in range(0, len(raw), size)) + f.end()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 1000, 1 << 20])
def test_rle_lists_are_emptied_at_any_chunk_size(size: int) -> None:
    raw = json.dumps({"a": [_brush(n=50), {"value": {"format": "rle", "rle": [1, 2]}}],
                      "text": 'say \\"rle\\": [1, 2]', "nested": {"rle": [[1, 2]]}, "rle": "x",
                      "tail": {"rle": [7, 8, 9]}}).encode()
    out = _filtered(raw, size)
    want = json.loads(raw)
    want["a"][0]["value"]["rle"] = []
    want["a"][1]["value"]["rle"] = []
    want["tail"]["rle"] = []
    assert json.loads(out) == want  # strings, nested lists and non-list values untouched


def test_compact_and_spaced_separators() -> None:
    assert _filtered(b'{"rle":[1,2,3],"b":{"rle" :\n [ 4 ]}}', 3) == b'{"rle":[],"b":{"rle" :\n []}}'


def _stream(raw: bytes, size: int = 65536) -> WebhookStream:
    s = WebhookStream()
    for i in range(0, len(raw), size):
        s.feed(raw[i:i + size])
    return s


def test_empty_and_spaced_objects() -> None:
    assert _stream(b' { } ', 1).body() == {}
    assert _stream(b'{ "action" : "X" , "task" : [ ] , "tasks" : [ ] }\n', 2).body() == {"action": "X", "tasks": []}


def test_keeps_only_what_counting_needs() -> None:
    body = _bulk(3, masks=10)
    body["annotation"][0]["result"].append({"from_name": "mtal_labelled", "type": "choices",
                                            "value": {"choices": ["seg"]}})
    kept = _stream(json.dumps(body).encode(), 7).body()
    assert kept == {
        "action": "ANNOTATIONS_CREATED", "project": {"id": 3, "label_config": SEG},
        "annotation": [
            {"result": [{"from_name": "semantic", "value": {}},
                        {"from_name": "mtal_labelled", "value": {"choices": ["seg"]}}], "was_cancelled": False},
            {"result": [{"from_name": "semantic", "value": {}}], "was_cancelled": False},
            {"result": [{"from_name": "semantic", "value": {}}], "was_cancelled": False},
        ],
    }  # no "task", no ids, no masks


@pytest.mark.parametrize("body", [
    {"action": "ANNOTATION_CREATED", "annotation": {"result": [_brush("det")], "was_cancelled": False},
     "project": {"id": 3, "label_config": CHOICES}},
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}], "project": {"id": 3}},
    {"action": "TASKS_CREATED", "tasks": [{"id": 4, "data": {"image": "x.png", "n": 1.5}, "annotations": []}],
     "project": {"id": 3}},
    {"action": "ANNOTATIONS_CREATED", "annotation": [{"result": {"bad": 1}}], "project": {"id": 3}},
])
def test_small_events_keep_their_meaning(body: dict[str, Any]) -> None:
    kept = _stream(json.dumps(body).encode(), 5).body()
    assert kept["action"] == body["action"] and kept["project"] == body["project"]
    if "tasks" in body:
        assert kept["tasks"] == [{"id": 4, "data": {"image": "x.png", "n": 1.5}}]
    if "annotations" in body:
        assert kept["annotations"] == [{"id": 1}, {"id": 2}]
    if body["action"] == "ANNOTATIONS_CREATED":
        assert kept["annotation"] == [{"result": {"bad": 1}}]  # still not a list: still refused


@pytest.mark.parametrize("raw", [b"[1, 2]", b'{"action": "x", "annotation": [', b'{"a": tru}', b"", b'"x"',
                                 b'{"a": 1} {"b": 2}', b'{"task": [1,]}', b'{"task": [,1]}', b'{"a" 1}',
                                 b'{"a": 1,}', b'{"a": "\xff"}', b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                 b'{"a": {"b": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"])
def test_not_an_object_is_a_stream_error(raw: bytes) -> None:
    with pytest.raises(StreamError):
        _stream(raw, 3).body()


class _Coordinator:
    """Records what handle_webhook asks of the coordinator."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def record_labels(self, project: str, names: list[str], threshold: int) -> bool:
        self.labels += names
        return False


def test_counts_equal_those_of_the_whole_body() -> None:
    body = _bulk(40, CHOICES)
    for i, ann in enumerate(body["annotation"]):
        ann["result"].append({"from_name": "mtal_labelled", "value": {"choices": ["seg", "det"][: i % 3]}})
    whole, streamed = _Coordinator(), _Coordinator()
    handle_webhook(json.loads(json.dumps(body)), whole, lambda p: 10**6, project_id="3")  # type: ignore[arg-type]
    handle_webhook(_stream(json.dumps(body).encode(), 999).body(), streamed, lambda p: 10**6,  # type: ignore[arg-type]
                   project_id="3")
    assert sorted(streamed.labels) == sorted(whole.labels)
    assert len(whole.labels) == sum(i % 3 for i in range(40) if i % 4 != 3)  # ticked choices, cancelled left out


def test_a_bulk_webhook_over_the_body_limit_is_counted_and_triggers_training(tmp_path: Path) -> None:
    app, conn = _app(_settings(tmp_path, max_body_bytes=64 * 1024, train_threshold=300))
    raw = json.dumps(_bulk(400)).encode()
    assert len(raw) > 2 * 1024 * 1024  # streamed (over 1 MiB), and over the body limit
    client = app.test_client()
    r = client.post("/webhook", data=raw, content_type="application/json")
    assert r.status_code == 200, r.text
    assert r.json["result"]["status"] == "enqueued" and r.json["result"]["counted"] == ["semantic"]  # 300 >= 300
    assert client.get("/status?project=3").json["state"] == "queued"
    # the limit stays for every other route
    r = client.post("/predict", data=raw, content_type="application/json")
    assert r.status_code == 413 and "MTAL_MAX_BODY_BYTES" in r.json["message"]
    r = client.post("/webhook", data=raw[:-1], content_type="application/json")  # truncated: not JSON
    assert r.status_code == 400 and "JSON object" in r.json["message"]
    assert conn.ping()


def test_a_webhook_over_a_body_limit_below_1_mib_is_streamed_too(tmp_path: Path) -> None:
    app, _ = _app(_settings(tmp_path, max_body_bytes=4096, train_threshold=10**6))
    raw = json.dumps(_bulk(3, masks=500)).encode()
    assert 4096 < len(raw) < 1024 * 1024
    r = app.test_client().post("/webhook", data=raw, content_type="application/json")
    assert r.status_code == 200 and r.json["result"]["status"] == "counted", r.text


@pytest.mark.parametrize("size", [1, 2, 3, 13, 4096])
def test_the_same_at_every_chunk_size(size: int) -> None:
    body = {"task": [{"id": 1, "data": {"t": "é\u2603 \"q\" ]}{[", "x": [1.5, -2e3, None, True]}}] * 3,
            "action": "TASKS_CREATED", "other": {"deep": [[[{"rle": [1, 2]}]]]}, "project": {"id": 3, "n": 1.25},
            "tasks": [{"id": 7, "data": {"image": "a\\b.png", "s": "ü"}, "annotations": [_brush(n=30)]}, 5],
            "annotations": [{"id": 1, "x": 2}, "junk"], "annotation": {"was_cancelled": True, "result": [7, _brush()]}}
    raw = json.dumps(body, ensure_ascii=size % 2 == 0).encode()
    assert _stream(raw, size).body() == {
        "action": "TASKS_CREATED", "project": {"id": 3, "n": 1.25},
        "tasks": [{"id": 7, "data": {"image": "a\\b.png", "s": "ü"}}, 5], "annotations": [{"id": 1}, "junk"],
        "annotation": {"was_cancelled": True, "result": [7, {"from_name": "seg", "value": {}}]},
    }


def test_long_values_split_over_many_pieces() -> None:
    body = {"action": "TASKS_CREATED", "project": {"id": 3, "label_config": "<View>" + "x" * 300_000 + "</View>"},
            "tasks": [{"id": 1, "data": {"t": "é" * 200_000}}, {"id": 2, "data": {}}], "task": ["z" * 100_000]}
    for size in (1000, 65536):
        kept = _stream(json.dumps(body, ensure_ascii=False).encode(), size).body()
        assert kept == {k: body[k] for k in ("action", "project", "tasks")}
