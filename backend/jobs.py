"""The RQ job paths of the backend before its regrouping (``backend.jobs.train_job``, ``backend.jobs.rank_job``).

RQ stores a job's function as an import path: a job enqueued by an older server names this module. It
stays so such a job, still in Redis after an upgrade, is found by a new worker; new jobs name
:mod:`backend.loop.jobs`. Nothing else may import it (tests/backend/test_layers.py).
"""

from backend.loop.jobs import rank_job, train_job

__all__ = ["rank_job", "train_job"]
