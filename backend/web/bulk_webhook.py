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
2. :class:`_TopLevel` reads what is left as it comes: the body's members one by one, a list member item by
   item, each value decoded by ``json``'s C decoder (``raw_decode``) and reduced at once to the fields
   above (everything else, such as the ``"task"`` list, is dropped as it streams by). An ijson event
   parser was tried first: with its per-event Python cost the whole count took about 2.5x as long.

The result is a small JSON object with the shape of the original, which the webhook's ordinary handler
counts (:func:`backend.loop.events.handle_webhook`): the same answers, errors and training trigger as a
body parsed whole. Memory: the kept fields, one unfinished mask list (a mask split across two reads), one
list item or member value (masks cut; at most 64 M characters, else a 400), and one read piece.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["STREAM_FROM", "RleFilter", "StreamError", "WebhookStream", "summary"]

STREAM_FROM = 1024 * 1024  # webhook bodies longer than this are streamed (shorter ones: json.loads is faster)
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


class _TopLevel:
    """An incremental reader of one JSON object (text fed in pieces): each member's value is decoded with
    :meth:`json.JSONDecoder.raw_decode` (C), a list value item by item, and handed to :func:`_reduce` at once,
    so what is held is the kept fields, one item (or one non-list value) and the text not decoded yet."""

    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        self.done = False
        self._text = ""
        self._pos = 0
        self._state = "start"  # start, first_key, key, colon, value, first_item, item, after_item, after_value, end
        self._key = ""
        self._items: list[Any] | None = None
        self._retry_at = 0  # an unfinished value: decode again once the text is this long (from _pos)
        self._waiting: list[str] = []  # text fed meanwhile, not joined yet
        self._waiting_len = 0
        self._decode = json.JSONDecoder().raw_decode

    def feed(self, text: str, final: bool = False) -> None:
        self._waiting.append(text)
        self._waiting_len += len(text)
        if len(self._text) - self._pos + self._waiting_len < self._retry_at and not final:
            return  # an unfinished value: joined and decoded again once the text has doubled
        self._text = self._text[self._pos:] + "".join(self._waiting)
        self._waiting, self._waiting_len, self._pos, self._retry_at = [], 0, 0, 0
        try:
            while self._step(final):
                pass
        except RecursionError:
            raise StreamError("request body is nested too deeply") from None
        if final and self._state != "end":
            raise StreamError("request body must be a JSON object (it ends too soon)")

    def _skip_ws(self) -> str:
        """The next non-blank character ('' at the end of the text)."""
        text, pos = self._text, self._pos
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        self._pos = pos
        return text[pos] if pos < len(text) else ""

    def _value(self, final: bool) -> tuple[bool, Any]:
        """(True, the JSON value at the position) or (False, None) when the text ends inside it."""
        try:
            value, end = self._decode(self._text, self._pos)
        except json.JSONDecodeError as e:
            incomplete = e.msg.startswith("Unterminated string") or e.pos >= len(self._text) - 6
            if final or not incomplete:
                raise StreamError(f"request body must be a JSON object ({e.msg} at byte ~{e.pos})") from None
            if len(self._text) - self._pos > _MAX_VALUE:
                raise StreamError(f"a value of the body is over {_MAX_VALUE} characters once masks are cut") from None
            self._retry_at = 2 * (len(self._text) - self._pos) + 1  # not again for every piece
            return False, None
        self._pos = end
        return True, value

    def _step(self, final: bool) -> bool:  # noqa: C901, PLR0911, PLR0912 - one small state machine
        c = self._skip_ws()
        state = self._state
        if state == "end":
            if c:
                raise StreamError("request body must be one JSON object (data after it)")
            return False
        if not c:
            return False
        if state == "start":
            if c != "{":
                raise StreamError("request body must be a JSON object")
            self._pos += 1
            self._state = "first_key"
        elif state in ("first_key", "key"):
            if c == "}" and state == "first_key":
                self._pos += 1
                self._state = "end"
                return True
            if c != '"':
                raise StreamError("request body must be a JSON object (a member name expected)")
            ok, key = self._value(final)
            if not ok:
                return False
            self._key, self._state = key, "colon"
        elif state == "colon":
            if c != ":":
                raise StreamError("request body must be a JSON object (':' expected)")
            self._pos += 1
            self._state = "value"
        elif state == "value":
            if c == "[":
                self._pos += 1
                self._items, self._state = [], "first_item"
                return True
            ok, value = self._value(final)
            if not ok:
                return False
            self._keep(value)
            self._state = "after_value"
        elif state in ("first_item", "item"):
            if c == "]" and state == "first_item":
                self._pos += 1
                self._keep_list()
                return True
            ok, value = self._value(final)
            if not ok:
                return False
            kept = _reduce_item(self._key, value)
            if kept is not _DROP and self._items is not None:
                self._items.append(kept)
            self._state = "after_item"
        elif state == "after_item":
            if c not in ",]":
                raise StreamError("request body must be a JSON object (',' or ']' expected in a list)")
            self._pos += 1
            if c == "]":
                self._keep_list()
            else:
                self._state = "item"  # after ',': an item must follow
        elif state == "after_value":
            if c not in ",}":
                raise StreamError("request body must be a JSON object (',' or '}' expected)")
            self._pos += 1
            self._state = "key" if c == "," else "end"
        return True

    def _keep_list(self) -> None:
        self._keep(self._items, reduced=True)
        self._items, self._state = None, "after_value"

    def _keep(self, value: Any, reduced: bool = False) -> None:
        key = self._key
        if key in ("action", "project"):
            self.root[key] = value
        elif key == "annotation":
            self.root[key] = value if reduced or not isinstance(value, dict) else _annotation(value)
        elif key in _LISTS:
            self.root[key] = value if reduced or not isinstance(value, list) else [
                v for v in (_reduce_item(key, x) for x in value) if v is not _DROP]


_DROP = object()
_LISTS = ("annotations", "tasks")
_MAX_VALUE = 64 * 1024 * 1024  # characters of one list item or value, masks cut


def _reduce_item(key: str, item: Any) -> Any:
    """What is kept of one item of the list under ``key`` (:data:`_DROP`: nothing, a list not kept)."""
    if key == "annotation":
        return _annotation(item) if isinstance(item, dict) else item
    if key == "annotations":
        return {"id": item.get("id")} if isinstance(item, dict) else item
    if key == "tasks":
        return {k: item[k] for k in ("id", "data") if k in item} if isinstance(item, dict) else item
    return _DROP


def _annotation(ann: dict[str, Any]) -> dict[str, Any]:
    """An annotation's ``was_cancelled`` and, per result item, ``from_name`` and ``value.choices``."""
    out: dict[str, Any] = {k: ann[k] for k in ("was_cancelled",) if k in ann}
    if "result" in ann:
        result = ann["result"]
        out["result"] = [_result_item(r) for r in result] if isinstance(result, list) else result
    return out


def _result_item(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    out: dict[str, Any] = {k: item[k] for k in ("from_name",) if k in item}
    value = item.get("value")
    if isinstance(value, dict):
        out["value"] = {k: value[k] for k in ("choices",) if k in value}
    return out


class WebhookStream:
    """Feed the body's chunks with :meth:`feed`, then :meth:`body` gives the kept object.

    Raises :class:`StreamError` (a 400) for a body that is not a JSON object (malformed, truncated, an
    array, not UTF-8, nested too deeply, ...)."""

    def __init__(self) -> None:
        self._filter = RleFilter()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._reader = _TopLevel()
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self._send(self._filter.feed(chunk))

    def _send(self, data: bytes, final: bool = False) -> None:
        try:
            text = self._utf8.decode(data, final=final)
        except UnicodeDecodeError:
            raise StreamError("request body must be a JSON object (not UTF-8)") from None
        self._reader.feed(text, final=final)

    def body(self) -> dict[str, Any]:
        """The kept object once the whole body was fed; the mask bytes cut are in :attr:`cut`."""
        self._send(self._filter.end(), final=True)
        return self._reader.root

    @property
    def cut(self) -> int:
        return self._filter.cut


def summary(body: Mapping[str, Any]) -> str:
    """``"<action>, <n> annotations"`` for the log line of a streamed webhook."""
    ann = body.get("annotation")
    n = len(ann) if isinstance(ann, list) else int(ann is not None)
    return f"{str(body.get('action'))[:40]}, {n} annotation(s)"
