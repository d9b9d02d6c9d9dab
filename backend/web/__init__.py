"""The HTTP side: the Flask app (:mod:`.app`), the WSGI request guard below Flask and the webhook fast path
(:mod:`.guard`), request input parsing (:mod:`.request`), and what gunicorn loads
(``gunicorn -c backend/web/gunicorn.conf.py backend.web.wsgi:app``).

May import every other part of ``backend`` (it is the top layer) and ``mtal_models``.
"""
