"""One score scale for every prediction Label Studio sorts (issue #32).

Label Studio sorts tasks by their prediction's ``score``, ascending (``/next`` with uncertainty
sampling, the Data Manager's *Prediction score* column), and the editor shows it as a percentage.
Whichever path made the prediction, the score means the same:

- **unlabelled tasks: [0, 1)** = the task's place in the active-learning order, 0 = label first. The
  rank job scores its candidates ``r / M`` by rank ``r`` of ``M`` (:func:`backend.loop.rank_fields.ls_scores`)
  and stores, next to each score, the task's *certainty* ``1 - u`` (what :func:`task_scores` computes:
  ``u`` = mean normalised entropy; detection-only networks: the best box score). /predict gives a
  ranked task its stored score; an unlabelled task the ranking does not hold (imported after it) is
  placed where its own certainty falls among the ranked tasks' (:func:`placed_score`), between the
  two ranked neighbours' scores; with no ranking of the current version (or one stored before the
  certainties were), its certainty itself, capped below 1.
- **labelled tasks: 1** (:data:`LABELLED_SCORE`), above every unlabelled one: a task with a submitted,
  not cancelled annotation, as the rank job counts them (its candidates are the tasks with none).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LABELLED_SCORE", "UNLABELLED_MAX", "ScoreScale", "is_labelled", "placed_score"]

LABELLED_SCORE = 1.0
UNLABELLED_MAX = 0.999999  # unlabelled tasks stay below every labelled one


def is_labelled(task: Mapping[str, Any]) -> bool:
    """Whether a Label Studio task dict has a submitted annotation that is not cancelled (skipped):
    from its ``annotations`` when present, else its ``total_annotations`` count (which LS keeps
    without the cancelled ones)."""
    annotations = task.get("annotations")
    if isinstance(annotations, list):
        return any(isinstance(a, Mapping) and not a.get("was_cancelled") for a in annotations)
    try:
        return int(task.get("total_annotations") or 0) > 0
    except (TypeError, ValueError):
        return False


def placed_score(certainty: float, ranked: Sequence[float], total: int | None = None) -> float:
    """The score of an unranked task of ``certainty`` among ``ranked`` certainties (sorted ascending,
    M of them, ranked at scores 0, 1/M, ..., (M-1)/M): it goes after the ``k`` ranked tasks less
    certain than it (ties count half), between scores (k-1)/M and k/M: ``max(0, (k - 0.5) / M)``.
    ``total``: M when the ranking holds more tasks than ``ranked`` (the rest ranked after all of them).
    An empty ``ranked``: the certainty itself. Always in [0, 1)."""
    if not ranked:
        return min(max(float(certainty), 0.0), UNLABELLED_MAX)
    lo, hi = bisect.bisect_left(ranked, certainty), bisect.bisect_right(ranked, certainty)
    k = lo + (hi - lo) / 2
    return min(max(0.0, (k - 0.5) / (total or len(ranked))), UNLABELLED_MAX)


@dataclass(frozen=True)
class ScoreScale:
    """The current version's ranking as /predict reads it: ``tasks`` {task id: {"score", "requested",
    "certainty"}} and the ranked tasks' certainties, sorted ascending."""

    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    certainties: tuple[float, ...] = ()

    @classmethod
    def of(cls, ranking: Mapping[str, Any] | None, model_version: str) -> ScoreScale:
        """From a stored ranking (``{}`` / None: none); a ranking of another version counts as none."""
        if not ranking or ranking.get("model_version") not in (None, model_version):
            return cls()
        tasks = ranking.get("tasks")
        if not isinstance(tasks, Mapping):
            return cls()
        values = [e.get("certainty") for e in tasks.values() if isinstance(e, Mapping)]
        return cls(tasks, tuple(sorted(float(v) for v in values if isinstance(v, int | float))))

    def entry(self, task_id: Any) -> Mapping[str, Any]:
        """The ranking's entry of a task ({} when it has none)."""
        entry = self.tasks.get(str(task_id)) if task_id is not None else None
        return entry if isinstance(entry, Mapping) else {}

    def score(self, task_id: Any, certainty: float, labelled: bool) -> float:
        """The task's score on the one scale (module docstring); ``certainty``: its own ``1 - u``."""
        if labelled:
            return LABELLED_SCORE
        stored = self.entry(task_id).get("score")
        if isinstance(stored, int | float):
            return min(max(float(stored), 0.0), UNLABELLED_MAX)
        return placed_score(certainty, self.certainties)
