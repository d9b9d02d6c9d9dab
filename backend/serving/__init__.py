"""What /setup and /predict need: the per-project model object (:mod:`.model`), batched prediction
(:mod:`.predict`), predictions -> Label Studio prefill (:mod:`.prefill`), the versioned model store
(:mod:`.store`), the first network and what it started from (:mod:`.initial`), and the choice of the
project's selection strategy (:mod:`.strategy`).

May import: :mod:`backend.settings`, :mod:`backend.logs`, :mod:`backend.labelstudio` and ``mtal_models``.
"""
