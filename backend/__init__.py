"""The MTAL ML backend for Label Studio, one subpackage per concern. Imports point only down this order
(docs/backend.md, "Package order"; tests/backend/test_layers.py keeps it so):

1. :mod:`backend.settings`, :mod:`backend.logs`: settings from the environment, log redaction;
2. :mod:`backend.labelstudio`: everything that knows Label Studio (config, regions, REST, images, exports);
3. :mod:`backend.serving`: the per-project model, /predict, the prefill, the model store, start weights;
4. :mod:`backend.loop`: webhooks, the Redis coordinator, the queue, the train and rank jobs, the worker;
5. :mod:`backend.web`: the WSGI app, the request guard, request parsing, gunicorn's config.

:mod:`backend.cli` (the ``mtal`` command) sits on :mod:`backend.labelstudio`; :mod:`backend.jobs` only keeps
the job paths of RQ jobs enqueued before the move (it points at :mod:`backend.loop.jobs`).
"""
