"""WSGI entry point: ``gunicorn -c backend/web/gunicorn.conf.py backend.web.wsgi:app``.

Settings are read from the environment when this module is imported (i.e. when gunicorn loads the
app), not when :mod:`backend` is imported.
"""

from __future__ import annotations

import gc

from backend.settings import Settings
from backend.web.app import create_app

__all__ = ["app"]

settings = Settings.from_env()
settings.configure_logging()
app = create_app(settings)
# torch, Flask and the SDK leave ~500k long-lived objects; a full cyclic collection walks them all
# (0.1-0.4 s measured here) and stalls every request thread meanwhile. They never die: freeze them.
gc.freeze()
