"""The active-learning loop behind the webhook: webhook events -> label counts (:mod:`.events`), the Redis
run coordinator and its Lua scripts (:mod:`.coordinator`, :mod:`.coordinator_scripts`), the RQ queue
(:mod:`.queue`), the trainer the app hands events to (:mod:`.trainer`), the RQ jobs (:mod:`.jobs`,
:mod:`.rank_jobs`, sharing :mod:`.job_context`) and their work (:mod:`.train_round`, :mod:`.rank_pass`,
:mod:`.rank_fanout` with :mod:`.rank_progress`, :mod:`.rank_fields`, :mod:`.result_spool`), and the worker
process (``python -m backend.loop.worker``, :mod:`.worker`).

May import: :mod:`backend.settings`, :mod:`backend.logs`, :mod:`backend.labelstudio`, :mod:`backend.serving`
and ``mtal_models``.
"""
