"""The table of hostile requests for ``test_hostile_input.py``: malformed, truncated, oversized, nested
and typed-wrong payloads for /predict, /setup, /webhook and /train, every URL trick of the security
review (pointed at a canary host), decompression bombs, corrupt images and every geometry case.

A case is ``(name, path, body, expect)``: ``body`` is bytes (sent as ``application/json`` unless the
name says otherwise) or a JSON-able object; ``expect`` is the set of acceptable status codes (a 200 on
/predict is the documented per-task result: an empty ``result`` for a task that cannot be served).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
<RectangleLabels name="det" toName="image"><Label value="car"/></RectangleLabels>
<PolygonLabels name="poly" toName="image"><Label value="lane"/></PolygonLabels></View>"""
SEG_ONLY = """<View><Image name="image" value="$image"/>
<BrushLabels name="semantic" toName="image"><Label value="road"/></BrushLabels></View>"""
CLIENT_ERROR = set(range(400, 500))
PER_TASK = {200}
Case = tuple[str, str, Any, set[int]]


# ---- files the fake Label Studio serves ---------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid RGB PNG of zeros, ``width`` x ``height``, compressed row by row (kilobytes on the wire)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gzip_bomb(megabytes: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\x00" * (1 << 20)
    return b"".join(comp.compress(block) for _ in range(megabytes)) + comp.flush()


def png(h: int = 24, w: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def served_files(canary_url: str) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """Routes of the fake Label Studio (path -> status, headers, body)."""
    good = png()
    return {
        "/data/upload/1/ok.png": (200, {}, good),
        "/data/upload/1/bomb-header.png": (200, {}, png_bomb(1, 1)[:16] + struct.pack(">II", 100_000, 100_000)
                                           + png_bomb(1, 1)[24:]),
        "/data/upload/1/bomb-6000.png": (200, {}, png_bomb(6000, 6000)),
        "/data/upload/1/gzip-bomb.png": (200, {"Content-Encoding": "gzip"}, gzip_bomb(200)),
        "/data/upload/1/truncated.png": (200, {}, good[: len(good) // 2]),
        "/data/upload/1/empty.png": (200, {}, b""),
        "/data/upload/1/eps.png": (200, {}, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"),
        "/data/upload/1/psd.png": (200, {}, b"8BPS\x00\x01" + b"\x00" * 100),
        "/data/upload/1/svg.png": (200, {}, b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        "/data/upload/1/tiff-bomb.tif": (200, {}, b"II*\x00\x08\x00\x00\x00" + b"\x00" * 8),
        "/data/upload/1/npy-pickle.npy": (200, {}, b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False,"
                                          b" 'shape': (1,), }" + b" " * 60 + b"\n" + b"\x80\x04N."),
        "/data/upload/1/redirect-canary.png": (302, {"Location": f"{canary_url}/stolen.png"}, b""),
        "/data/upload/1/redirect-metadata.png": (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b""),
        "/data/upload/1/redirect-loop.png": (302, {"Location": "/data/upload/1/redirect-loop.png"}, b""),
        "/data/upload/1/redirect-file.png": (302, {"Location": "file:///etc/passwd"}, b""),
        "/tasks/1/presign/?fileuri=czM6Ly9iL2sucG5n": (302, {"Location": f"{canary_url}/presigned.png"}, b""),
    }


# ---- URL tricks: every one names the canary, none may reach it ---------------------------------------
def url_tricks(ls_hostport: str, canary_hostport: str) -> list[str]:
    c, h = canary_hostport, ls_hostport
    chost, cport = c.rsplit(":", 1)
    last = int(chost.rsplit(".", 1)[1])
    return [
        f"http://{c}/x.png", f"https://{c}/x.png",
        f"http://{c}\\@{h}/data/upload/1/ok.png", f"http://{c}\\\\@{h}/data/upload/1/ok.png",
        f"http://{h}@{c}/x.png", f"http://user:pw@{c}/x.png", f"http://{h}:pw@{c}/x.png",
        f"http://{c}%5C@{h}/x.png", f"http://{c}%2F@{h}/x.png", f"http:\\\\{c}/x.png", f"http:/{c}/x.png",
        f"http://{c}#@{h}/x.png", f"http://{c}?@{h}/x.png", f"http://{h}\t@{c}/x.png", f"http://{c}\n/x.png",
        f"http://{h}\x00@{c}/x.png", f"http://[::ffff:{chost}]:{cport}/x.png", f"http://[::ffff:7f00:{last:x}]:{cport}/",
        f"http://{2130706432 + last}:{cport}/x.png", f"http://0x7f0000{last:02x}:{cport}/x.png",
        f"http://0177.0.0.{last}:{cport}/x.png", f"http://127.{last}:{cport}/x.png",
        f"http://{chost}.:{cport}/x.png", f"http://localhost:{cport}/x.png", f"http://LOCALHOST:{cport}/x.png",
        f"http://{chost}.nip.io:{cport}/x.png", f"http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{cport}/x.png",
        f"http://[::1]:{cport}/x.png", f"http://0.0.0.0:{cport}/x.png", f"http://[::]:{cport}/x.png",
        "http://169.254.169.254/latest/meta-data/", "http://100.100.100.200/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/", "http://[2002:a9fe:a9fe::]/", "http://[64:ff9b::a9fe:a9fe]/",
        "file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo=", f"ftp://{c}/x.png", f"gopher://{c}/_x",
        f"//{c}/x.png", f"///{c}/x.png", f"/\\{c}/x.png", f"\\\\{c}\\x.png", "", " ", 42, None, ["x"], {"u": 1},
        "s3://b/k.png", "gs://b/../../k.png", "azure-blob://c/k.png", "s3://", "/data/upload/1/redirect-canary.png",
        "/data/upload/1/redirect-metadata.png", "/data/upload/1/redirect-loop.png", "/data/upload/1/redirect-file.png",
        f"/data/upload/1/ok.png?x=http://{c}/", "/data/local-files/?d=../../etc/passwd", "x" * 10000,
        "/data/upload/1/ok.png" + "\u202e", f"http://{h}/data/upload/1/ok.png\r\nHost: {c}",
    ]


def _task(image: Any, annotations: Any = None, tid: Any = 1) -> dict[str, Any]:
    t: dict[str, Any] = {"id": tid, "data": {"image": image}}
    if annotations is not None:
        t["annotations"] = annotations
    return t


def _ann(*results: Any) -> list[dict[str, Any]]:
    return [{"id": 1, "result": list(results)}]


def _rect(**v: Any) -> dict[str, Any]:
    value = {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["car"], **v}
    return {"from_name": "det", "to_name": "image", "type": "rectanglelabels", "value": value}


def _brush(rle: Any, oh: Any = 24, ow: Any = 32, **v: Any) -> dict[str, Any]:
    return {"from_name": "semantic", "to_name": "image", "type": "brushlabels", "original_width": ow,
            "original_height": oh, "value": {"format": "rle", "rle": rle, "brushlabels": ["road"], **v}}


def _poly(points: Any) -> dict[str, Any]:
    return {"from_name": "poly", "to_name": "image", "type": "polygonlabels",
            "value": {"points": points, "polygonlabels": ["lane"]}}


def rle_bomb(tokens: int, claimed: int = 0xFFFFFFFF) -> list[int]:
    bits = f"{claimed:032b}" + "00111" + "0001" + "0010" + "0110" + "1111" + ("1" + "11" + "1" * 16 + "1" * 8) * tokens
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def geometry_results() -> list[tuple[str, Any]]:
    nan, inf = math.nan, math.inf
    out: list[tuple[str, Any]] = []
    for key in ("x", "y", "width", "height", "rotation"):
        for bad in ("nan", nan, inf, -inf, 1e308, "1e999", "x", None, [1], {"a": 1}, -5):
            out.append((f"rect {key}={bad!r}", _rect(**{key: bad})))
    for label, points in [("nan point", [[0, 0], [nan, 1], [5, 5]]), ("inf point", [[0, 0], [inf, 1], [5, 5]]),
                          ("huge point", [[0, 0], [1e308, 1], [5, 5]]), ("two points", [[0, 0], [1, 1]]),
                          ("ragged", [[0, 0, 3], [1], [5, 5]]), ("strings", [["a", "b"]] * 3), ("not a list", 5),
                          ("100k points", [[i % 100, (i * 7) % 100] for i in range(100_000)])]:
        out.append((f"polygon {label}", _poly(points)))
    for label, res in [("rle header claims 4 GiB", _brush(rle_bomb(8000))),
                       ("rle 100000x100000", _brush(rle_bomb(8000), 100_000, 100_000)),
                       ("rle inf size", _brush([0, 1], inf, inf)), ("rle nan size", _brush([0, 1], nan, nan)),
                       ("rle negative size", _brush([0, 1], -24, -32)), ("rle string size", _brush([0, 1], "a", "b")),
                       ("rle huge int size", _brush([0, 1], 10**30, 10**30)), ("rle values > 255", _brush([256, 999])),
                       ("rle negative values", _brush([-1, -2])), ("rle is a string", _brush("AAAA")),
                       ("rle is a dict", _brush({"a": 1})), ("rle empty", _brush([])),
                       ("brush format png", _brush([0], format="png")), ("brush 1M bytes", _brush([0] * 1_000_000))]:
        out.append((label, res))
    out += [("unknown from_name", {"from_name": "zzz", "value": {}}), ("result not a dict", 5),
            ("value missing", {"from_name": "det", "type": "rectanglelabels"}),
            ("wrong type", {**_rect(), "type": "brushlabels"}), ("unknown label", _rect(rectanglelabels=["ghost"])),
            ("no label", _rect(rectanglelabels=[])), ("label not a list", _rect(rectanglelabels="car"))]
    return out


SMART = CONFIG.replace("</View>", """<RectangleLabels name="box_smart" toName="image" smart="true">
<Label value="car"/></RectangleLabels><KeyPointLabels name="kp" toName="image" smart="true"><Label value="car"/>
</KeyPointLabels></View>""")


def smart_contexts() -> list[tuple[str, Any, list[dict[str, Any]], set[int]]]:
    """Interactive /predict (issue #31): (name, params.context, tasks, expected statuses)."""
    ok = [_task("/data/upload/1/ok.png")]

    def kp(**v: Any) -> dict[str, Any]:
        return {"from_name": "kp", "type": "keypointlabels", "value": {"x": 5, "y": 5, "labels": ["car"], **v}}

    box = {**_rect(), "from_name": "box_smart"}
    return [
        ("string", "x", ok, CLIENT_ERROR), ("result dict", {"result": {}}, ok, CLIENT_ERROR),
        ("region list", {"result": [[1]]}, ok, CLIENT_ERROR), ("keypoint without x", {"result": [kp(x=None)]}, ok,
                                                                 CLIENT_ERROR),
        ("keypoint x string", {"result": [kp(x="5")]}, ok, CLIENT_ERROR),
        ("keypoint label ints", {"result": [kp(labels=[1])]}, ok, CLIENT_ERROR),
        ("unknown label", {"result": [kp(labels=["bus"])]}, ok, CLIENT_ERROR),
        ("is_positive string", {"result": [{**kp(), "is_positive": "no"}]}, ok, CLIENT_ERROR),
        ("negative width", {"result": [{**box, "value": {**box["value"], "width": -5}}]}, ok, CLIENT_ERROR),
        ("300 regions", {"result": [kp()] * 300}, ok, CLIENT_ERROR),
        ("task of another project", {"result": [kp()]}, [{**ok[0], "project": 99}], CLIENT_ERROR),
        ("two tasks", {"result": [kp()]}, ok * 2, CLIENT_ERROR),
        ("keypoint far outside", {"result": [kp(x=1e308, y=-1e308)]}, ok, PER_TASK),
        ("box far outside", {"result": [{**box, "value": {**box["value"], "x": 1e5, "width": 1e5}}]}, ok,
         PER_TASK),
        ("box absurd", {"result": [{**box, "value": {**box["value"], "x": 1e307, "width": 1e308}}]}, ok,
         CLIENT_ERROR),
        ("box rotated", {"result": [{**box, "value": {**box["value"], "rotation": 45}}]}, ok, PER_TASK),
        ("zero-size box", {"result": [{**box, "value": {**box["value"], "width": 0, "height": 0}}]}, ok, PER_TASK),
        ("only negative points", {"result": [{**kp(), "is_positive": False}]}, ok, PER_TASK),
        ("own region garbage rle", {"result": [_brush([1, 2, 3])]}, ok, PER_TASK),
        ("image missing", {"result": [kp()]}, [_task("/data/upload/1/missing.png")], PER_TASK),
        ("empty", {"result": []}, ok, PER_TASK),
    ]


def cases(ls_hostport: str, canary_url: str) -> list[Case]:
    """Every table-driven case (see the module docstring)."""
    canary = canary_url.split("://", 1)[1]
    out: list[Case] = []

    def predict(name: str, tasks: Any, expect: set[int] = PER_TASK, **extra: Any) -> None:
        out.append((f"predict: {name}", "/predict", {"project": "3", "label_config": CONFIG, "tasks": tasks,
                                                      **extra}, expect))

    for url in url_tricks(ls_hostport, canary):
        predict(f"url {url!r}"[:120], [_task(url)])
    for path in served_files(canary_url):
        if path.startswith("/data/"):
            predict(f"file {path}", [_task(path)])
    predict("presign redirect to canary", [_task("s3://b/k.png")])
    for name, res in geometry_results():
        predict(f"geometry {name}", [_task("/data/upload/1/ok.png", _ann(res, _rect()))])
    predict("2001 results", [_task("/data/upload/1/ok.png", _ann(*[_rect()] * 2001))])
    for name, anns in [("annotations not a list", "x"), ("annotation not a dict", [5]),
                       ("result not a list", [{"result": 5}]),
                       ("cancelled", [{"result": [_rect()], "was_cancelled": True}])]:
        predict(name, [_task("/data/upload/1/ok.png", anns)])
    predict("1001 tasks", [_task("/data/upload/1/ok.png", tid=i) for i in range(1001)])  # one over: background
    ids = (None, "a", 1.5, [1], {"a": 1}, -1, 10**40)
    predict("task ids of every type", [_task("/data/upload/1/ok.png", tid=t) for t in ids])
    for name, tasks in [("tasks not a list", {"a": 1}), ("task not a dict", [5]), ("data missing", [{"id": 1}]),
                        ("data not a dict", [{"id": 1, "data": "x"}]), ("tasks null", None)]:
        predict(name, tasks, CLIENT_ERROR)
    for name, extra in [("label_config int", {"label_config": 5}), ("label_config garbage", {"label_config": "<View"}),
                        ("label_config doctype", {"label_config": '<!DOCTYPE x [<!ENTITY a "b">]>' + CONFIG}),
                        ("label_config no image", {"label_config": "<View><Text name='t' value='$t'/></View>"}),
                        ("label_config 2000 labels", {"label_config": CONFIG.replace(
                            '<Label value="road"/>', "".join(f'<Label value="l{i}"/>' for i in range(2000)))}),
                        ("label_config 1 MB", {"label_config": CONFIG + " " * 1_000_001}),
                        ("params string", {"params": "x"}), ("project list", {"project": [1]}),
                        ("project newline", {"project": "3\n"}), ("project traversal", {"project": "../3"}),
                        ("project unicode digits", {"project": "٣"}), ("project 65 chars", {"project": "a" * 65})]:
        predict(name, [_task("/data/upload/1/ok.png")], CLIENT_ERROR, **extra)
    for name, context, tasks, expect in smart_contexts():
        predict(f"context {name}", tasks, expect, label_config=SMART, params={"context": context})

    def setup(name: str, body: Any, expect: set[int]) -> None:
        out.append((f"setup: {name}", "/setup", body, expect))

    base = {"project": "3.1712345678", "schema": SEG_ONLY}
    for host in [canary_url, f"http://{canary}\\@{ls_hostport}", "ftp://x", "javascript:alert(1)", "http://u:p@x",
                 "http://x/?a=1", "x", "http://127.1", 5, ["x"]]:
        ok = host == canary_url  # ignored (LABEL_STUDIO_URL is set), not an error
        setup(f"hostname {host!r}", {**base, "hostname": host, "access_token": "t"}, {200} if ok else CLIENT_ERROR)
    for name, body in [("no schema", {"project": "3"}), ("schema int", {**base, "schema": 5}),
                       ("schema garbage", {**base, "schema": "<<<"}), ("schema doctype", {**base, "schema":
                        '<!DOCTYPE v SYSTEM "file:///etc/passwd">' + SEG_ONLY}),
                       ("extra_params list", {**base, "extra_params": [1]}),
                       ("threshold negative", {**base, "extra_params": {"train_threshold": -1}}),
                       ("threshold string", {**base, "extra_params": {"train_threshold": "5"}}),
                       ("threshold bool", {**base, "extra_params": {"train_threshold": True}}),
                       ("access_token int", {**base, "access_token": 5}),
                       ("project nonce", {**base, "project": "3.x"})]:
        setup(name, body, CLIENT_ERROR)

    def webhook(name: str, body: Any, expect: set[int] = {200}) -> None:  # noqa: B006 - read only
        out.append((f"webhook: {name}", "/webhook", body, expect))

    project = {"id": 3, "label_config": SEG_ONLY}
    for name, body, expect in [
        ("unknown action", {"action": "X" * 1000, "project": project}, {200}),
        ("action int", {"action": 5, "project": project}, CLIENT_ERROR),
        ("project newline", {"action": "START_TRAINING", "project": {"id": "3\n"}}, CLIENT_ERROR),
        ("project nonce", {"action": "ANNOTATION_CREATED", "project": {"id": "3.99", "label_config": SEG_ONLY},
                           "annotation": {"result": []}}, {200}),
        ("annotation string", {"action": "ANNOTATION_CREATED", "project": project, "annotation": "x"}, CLIENT_ERROR),
        ("annotation missing", {"action": "ANNOTATION_CREATED", "project": project}, CLIENT_ERROR),
        ("result not a list", {"action": "ANNOTATION_CREATED", "project": project, "annotation": {"result": 5}},
         CLIENT_ERROR),
        ("no label_config", {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"result": []}},
         CLIENT_ERROR),
        ("label_config garbage", {"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": "<<"},
                                  "annotation": {"result": []}}, {200}),
        ("deleted 10001 ids", {"action": "ANNOTATIONS_DELETED", "project": project,
                               "annotations": [{"id": i} for i in range(10_001)]}, CLIENT_ERROR),
        ("deleted not a list", {"action": "ANNOTATIONS_DELETED", "project": project, "annotations": "x"}, {200}),
        ("bulk 10001", {"action": "ANNOTATIONS_CREATED", "project": project, "annotation": [{}] * 10_001},
         CLIENT_ERROR),
        ("choices not a list", {"action": "ANNOTATION_CREATED", "project": project, "annotation": {"result": [
            {"from_name": "semantic", "value": {"choices": 5}}]}}, {200}),
        ("geometry NaN", {"action": "ANNOTATION_CREATED", "project": project,
                          "annotation": {"result": [_brush([0], math.nan, math.inf)]}}, {200}),
    ]:
        webhook(name, body, expect)
    for path in ("/train",):
        out += [(f"train: {n}", path, b, e) for n, b, e in [
            ("no project", {}, CLIENT_ERROR), ("project newline", {"project": "3\n"}, CLIENT_ERROR),
            ("project dict newline", {"project": {"id": "3\n"}}, CLIENT_ERROR),
        ]]

    # raw bodies for every endpoint: malformed, truncated, nested, typed-wrong
    raw_bodies = [
        ("empty", b""), ("truncated", b'{"project": "3", "tasks": ['), ("array nesting 100k", b"[" * 100_000),
        ("object nesting 50k", b'{"a":' * 50_000), ("not utf-8", b"\xff\xfe\x00{"), ("bom", b"\xef\xbb\xbf{}"),
        ("NaN top", b"NaN"), ("number 10^5000", b'{"project": ' + b"9" * 5000 + b"}"), ("string", b'"x"'),
        ("array", b"[1, 2]"), ("null", b"null"), ("duplicate keys", b'{"project": "3", "project": "../x"}'),
        ("lone surrogate", b'{"project": "\\ud800"}'), ("nul in key", b'{"\\u0000": 1}'),
        ("1 MB string", json.dumps({"project": "../3", "x": "a" * 1_000_000}).encode()),
        ("gzip body", gzip.compress(b'{"project": "3"}')),
    ]
    for ep in ("/predict", "/setup", "/webhook", "/train"):
        for name, raw in raw_bodies:
            out.append((f"raw {ep}: {name}", ep, raw, CLIENT_ERROR))
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            out.append((f"ctype {ep}: {ctype}", ep, ("ctype", ctype, b'{"project": "3"}'), {415}))
    return out
