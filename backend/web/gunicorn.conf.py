"""gunicorn settings for the MTAL backend (``make run``).

One worker process (the networks live in its memory, and embedded-queue mode needs one process),
several threads for concurrent requests, and a 120 s timeout above Label Studio's 100 s predict
timeout. ``PORT`` (default 9090) and ``MTAL_THREADS`` (default 4) come from the environment.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '9090')}"
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("MTAL_THREADS", "4"))
timeout = 120
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
