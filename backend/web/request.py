"""Request input of the HTTP API: JSON error answers (:class:`ApiError`), the project id check, the JSON
body and typed fields. Every failure is an :class:`ApiError` (4xx) naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask import request

from backend.web.guard import BodyRefused, parse_object

__all__ = ["ApiError", "field", "json_body", "parse_project_id"]

# a project reference: "<id>" or "<id>.<created_ts>"; fullmatch, ASCII only (no trailing newline)
_PROJECT_REF = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,64})(?:\.[0-9]{1,20}(?:\.[0-9]{1,9})?)?")


class ApiError(Exception):
    """An error answered as JSON with ``status`` (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON error body: ``{"error": <reason>, "message": <text>}``."""
        names = {400: "Bad Request", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
                 422: "Unprocessable Entity", 503: "Service Unavailable"}
        return {"error": names.get(self.status, "Error"), "message": self.message}


def parse_project_id(value: Any, field: str = "project") -> str:
    """LS project reference -> id string: ``"12.1712345678"`` (id.created_ts), ``"12"``, ``12`` or
    ``{"id": 12, ...}``. Raises ApiError(400) naming ``field``."""
    if isinstance(value, dict):
        value = value.get("id")
        field = f"{field}.id"
    if isinstance(value, bool) or value is None:
        raise ApiError(400, f"missing or invalid field {field!r}: expected a project id")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ApiError(400, f"field {field!r} must be a string or integer, got {type(value).__name__}")
    m = _PROJECT_REF.fullmatch(value)
    if m is None:
        raise ApiError(400, f"field {field!r}: {value[:80]!r} is not a project id ('<id>' or '<id>.<created_ts>')")
    return m["id"]


def json_body() -> dict[str, Any]:
    """The request body as a JSON object (the content type and size were checked by
    :class:`backend.web.guard.RequestGuard`; nesting too deep is a 400 too)."""
    if request.mimetype != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {request.mimetype or '(none)'!r}")
    try:
        return parse_object(request.get_data(cache=True))
    except BodyRefused as e:
        raise ApiError(e.status, e.message) from None


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"missing field {name!r}")
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ApiError(400, f"field {name!r} must be {names}, got {type(value).__name__}")
    return value
