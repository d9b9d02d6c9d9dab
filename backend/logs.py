"""Logging for every process of the backend: secrets out of log lines and status texts.

:func:`redact` blanks URL passwords, signed-URL parameters and ``Token``/``Bearer``/``Basic`` credentials;
:class:`RedactingFilter` applies it to every record of a handler; :func:`configure_logging` sets the root
level and puts the filter on the root handlers (the server, ``python -m backend.loop.worker``).

Bottom layer: imports nothing from ``backend`` (docs/backend.md, "Package order").
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "configure_logging", "redact"]

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,20}://)[^/@\s'\"]*@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z0-9_-]*(?:sig|signature|token|key|credential|password|secret|policy)[a-z0-9_-]*"
    r"|x-amz-[a-z-]+|x-goog-[a-z-]+|se|sp|sv|st|skoid|sktid))=[^&;#\s'\"]*"
)
_AUTH_HEADER = re.compile(r"(?i)\b(token|bearer|basic)\s+[a-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """``text`` with URL passwords (``redis://:pw@host``), signed-URL parameters (``X-Amz-Signature=``,
    ``sig=``, ``token=``...) and ``Token``/``Bearer``/``Basic`` credentials replaced by ``***``."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _SECRET_PARAM.sub(r"\1=***", text)
    return _AUTH_HEADER.sub(r"\1 ***", text)


class RedactingFilter(logging.Filter):
    """A handler filter that passes every record through :func:`redact` (message and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave the record to the formatter
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def configure_logging(level: str) -> None:
    """Set the root log level (handlers are left to gunicorn / the caller) and redact every root handler."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:  # no REDIS_URL passwords, tokens or presigned URLs in the logs
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
