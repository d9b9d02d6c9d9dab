"""Bulk webhooks read as a stream: a body of any size counted in bounded memory, within Label Studio's 1 s.

Label Studio posts ``ANNOTATIONS_CREATED`` with up to 5,000 annotations in one body (the list under
``"annotation"``, their tasks under ``"task"``), sends it with a ~1 s timeout and never retries: 5,000
photo-size brush annotations are ~44 MiB, over ``MTAL_MAX_BODY_BYTES``, and ``json.loads`` alone of such a
body takes about a second. Counting needs almost none of it: per annotation, whether it was cancelled and
each result's ``from_name`` (and the modalities tag's ``value.choices``); the project (its id and labeling
config); the ids of deleted annotations; the ``id`` and ``data`` of created tasks.

:class:`WebhookStream` takes the body chunk by chunk as it arrives (:class:`backend.web.guard.RequestGuard`
feeds it while reading) and keeps only those fields:

1. :class:`RleFilter` cuts every brush mask's ``"rle": [numbers]`` down to ``"rle": []`` with byte searches
   (``bytes.find``; a list of numbers holds no ``"``, ``[`` or ``{``), so the JSON parser never sees the
   millions of numbers that make up most of such a body;
2. ijson (yajl2, C) parses what is left incrementally, and :class:`_Keeper` builds from its events only the
   paths listed in :data:`KEPT` (a subtree anywhere else is skipped as it streams by).

The result is a small JSON object with the shape of the original, which the webhook's ordinary handler
counts (:func:`backend.loop.events.handle_webhook`): the same answers, errors and training trigger as a
body parsed whole. Memory: the kept fields, one unfinished mask list (a mask split across two reads), and
one read chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ijson

__all__ = ["KEPT", "STREAM_FROM", "RleFilter", "StreamError", "WebhookStream", "summary"]

STREAM_FROM = 1024 * 1024  # webhook bodies longer than this are streamed (shorter ones: json.loads is faster)
# paths (ijson prefixes) whose whole value is kept; containers on the way to them are built with only these
# inside. "annotation" is a list (bulk events) or one object (ANNOTATION_CREATED / _UPDATED).
KEPT: frozenset[str] = frozenset({
    "action",
    "project",
    *(f"{a}.{k}" for a in ("annotation.item", "annotation") for k in
      ("was_cancelled", "result.item.from_name", "result.item.value.choices")),
    "annotations.item.id",
    "tasks.item.id",
    "tasks.item.data",
})
_ON_THE_WAY: frozenset[str] = frozenset(p.rsplit(".", n)[0] for p in KEPT for n in range(1, p.count(".") + 1))
_KEY = b'"rle"'
_WS = b" \t\r\n"
_MAX_HELD = 4 * 1024 * 1024  # longest unfinished mask list held back between two chunks


class StreamError(Exception):
    """The streamed body is not a JSON object (answered with 400). Not a ValueError: the body reader turns
    those into a 408 (a read that failed)."""


class RleFilter:
    """Rewrites ``"rle": [n, n, ...]`` to ``"rle": []`` in a JSON byte stream cut into arbitrary chunks.

    ``feed(chunk)`` returns the filtered bytes that are safe to pass on; a ``"rle"`` list that is not closed
    yet (and the last few bytes, which may start one) are held back until the next chunk; ``end()`` returns
    what is held. Only flat lists are cut (no ``"``, ``[`` or ``{`` between the brackets): inside a JSON
    string ``"rle"`` can only appear as ``\\"rle\\"``, which does not match.
    """

    def __init__(self) -> None:
        self._held = b""
        self.cut = 0  # bytes of mask lists removed

    def feed(self, chunk: bytes) -> bytes:
        buf = self._held + chunk if self._held else chunk
        out: list[bytes] = []
        pos = at = 0  # bytes before pos are passed on; the search goes on from at
        while True:
            i = buf.find(_KEY, at)
            if i < 0:
                keep = max(pos, len(buf) - len(_KEY) + 1)  # the tail may be the start of '"rle"'
                break
            j = _skip_ws(buf, i + len(_KEY))
            if j < len(buf) and buf[j : j + 1] == b":":
                j = _skip_ws(buf, j + 1)
            elif j < len(buf):
                at = i + 1  # '"rle"' as a value ('"format": "rle"')
                continue
            if j >= len(buf):
                keep = i  # '"rle"' or '"rle":' at the end: wait for more
                break
            if buf[j : j + 1] != b"[":
                at = j
                continue
            k = buf.find(b"]", j)
            inner = buf[j + 1 : k if k >= 0 else len(buf)]
            if b'"' in inner or b"[" in inner or b"{" in inner:
                at = j + 1  # not a flat list of numbers: leave it to the parser
                continue
            if k < 0:
                if len(buf) - i > _MAX_HELD:  # no mask is this long: let the parser take it
                    at = j + 1
                    continue
                keep = i  # the list goes on in the next chunk
                break
            out.append(buf[pos : j + 1])
            self.cut += k - j - 1
            pos = at = k
        out.append(buf[pos:keep])
        self._held = buf[keep:]
        return b"".join(out)

    def end(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _skip_ws(buf: bytes, j: int) -> int:
    while j < len(buf) and buf[j] in _WS:
        j += 1
    return j


class _Keeper:
    """Builds the kept parts of a JSON document from ijson's ``(prefix, event, value)`` events."""

    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        self.is_object = False
        # frames of the open containers: [container, key of the next value (maps), whole: keep everything]
        self._stack: list[list[Any]] = []
        self._skip = 0  # depth inside a skipped subtree

    def event(self, prefix: str, event: str, value: Any) -> None:
        if self._skip:
            if event in ("start_map", "start_array"):
                self._skip += 1
            elif event in ("end_map", "end_array"):
                self._skip -= 1
            return
        if event == "map_key":
            self._stack[-1][1] = value
            return
        if event in ("end_map", "end_array"):
            self._stack.pop()
            return
        if not self._stack:  # the document itself
            if event != "start_map":
                raise StreamError("request body must be a JSON object")
            self.is_object = True
            self._stack.append([self.root, None, False])
            return
        parent = self._stack[-1]
        whole = parent[2] or prefix in KEPT
        if not whole and prefix not in _ON_THE_WAY:
            if event in ("start_map", "start_array"):
                self._skip = 1
            return
        if event == "start_map":
            node: Any = {}
        elif event == "start_array":
            node = []
        else:
            node = _scalar(event, value)
        if isinstance(parent[0], list):
            parent[0].append(node)
        else:
            parent[0][parent[1]] = node
        if event in ("start_map", "start_array"):
            self._stack.append([node, None, whole])


def _scalar(event: str, value: Any) -> Any:
    """ijson's number events are Decimal (yajl2_c: int or Decimal): floats, as json.loads gives."""
    if event == "number" and not isinstance(value, int):
        return float(value)
    return value


class WebhookStream:
    """Feed the body's chunks with :meth:`feed`, then :meth:`body` gives the kept object.

    Raises :class:`StreamError` (a 400) for a body that is not a JSON object (malformed, truncated, an
    array, ...)."""

    def __init__(self) -> None:
        self._filter = RleFilter()
        self._events = ijson.sendable_list()
        self._parser = ijson.parse_coro(self._events, use_float=True)
        self._keeper = _Keeper()
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self._send(self._filter.feed(chunk))

    def _send(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._parser.send(data)
        except ijson.JSONError as e:
            raise StreamError(f"request body must be a JSON object ({_short(e)})") from None
        self._drain()

    def _drain(self) -> None:
        keeper = self._keeper
        for prefix, event, value in self._events:
            keeper.event(prefix, event, value)
        del self._events[:]

    def body(self) -> dict[str, Any]:
        """The kept object once the whole body was fed; the mask bytes cut are in :attr:`cut`."""
        self._send(self._filter.end())
        try:
            self._parser.close()
        except ijson.JSONError as e:
            raise StreamError(f"request body must be a JSON object ({_short(e)})") from None
        self._drain()
        if not self._keeper.is_object:
            raise StreamError("request body must be a JSON object")
        return self._keeper.root

    @property
    def cut(self) -> int:
        return self._filter.cut


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def summary(body: Mapping[str, Any]) -> str:
    """``"<action>, <n> annotations"`` for the log line of a streamed webhook."""
    ann = body.get("annotation")
    n = len(ann) if isinstance(ann, list) else int(ann is not None)
    return f"{str(body.get('action'))[:40]}, {n} annotation(s)"
