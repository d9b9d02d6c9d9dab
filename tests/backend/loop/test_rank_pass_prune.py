"""backend.loop.rank_pass.prune_predictions: which versions' predictions are deleted from Label Studio."""

from __future__ import annotations

import logging

import pytest

from backend.loop.rank_pass import prune_predictions


class FakeLS:
    """model_versions / delete_predictions over an in-memory {version: count}; ``fail`` raises on listing."""

    def __init__(self, versions: dict[str, int], fail: bool = False) -> None:
        self.versions = dict(versions)
        self.fail = fail
        self.deleted: list[tuple[int, str]] = []

    def model_versions(self, project_id: int) -> dict[str, int]:
        if self.fail:
            raise RuntimeError("LS is down")
        return dict(self.versions)

    def delete_predictions(self, project_id: int, model_version: str) -> None:
        self.deleted.append((project_id, model_version))
        del self.versions[model_version]


VERSIONS = {
    "mtal-3-v1-aaaaaaaa": 5, "mtal-3-v2-bbbbbbbb": 5, "mtal-3-v10-cccccccc": 5, "mtal-3-v9-dddddddd": 5,
    "mtal-30-v1-eeeeeeee": 5,  # another project's version: never ours
    "yolo-1": 7, "": 2, "mtal-3-v4": 1,  # other backends, imported predictions, not our name format
}


@pytest.mark.parametrize(("current", "keep", "deleted"), [
    ("mtal-3-v10-cccccccc", 2, ["mtal-3-v2-bbbbbbbb", "mtal-3-v1-aaaaaaaa"]),  # numeric order: v10 > v9 > v2
    ("mtal-3-v10-cccccccc", 1, ["mtal-3-v9-dddddddd", "mtal-3-v2-bbbbbbbb", "mtal-3-v1-aaaaaaaa"]),
    ("mtal-3-v2-bbbbbbbb", 2, ["mtal-3-v9-dddddddd", "mtal-3-v1-aaaaaaaa"]),  # a rollback: current is kept
    ("mtal-3-v10-cccccccc", 4, []),
    ("mtal-3-v10-cccccccc", 0, []),
])
def test_only_our_older_versions_are_deleted(current: str, keep: int, deleted: list[str]) -> None:
    ls = FakeLS(VERSIONS)
    assert prune_predictions(ls, "3", current, keep) == deleted
    assert ls.deleted == [(3, v) for v in deleted]
    assert {"mtal-30-v1-eeeeeeee", "yolo-1", "", "mtal-3-v4", current} <= set(ls.versions)


def test_a_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ls = FakeLS(VERSIONS, fail=True)
    with caplog.at_level(logging.WARNING):
        assert prune_predictions(ls, "3", "mtal-3-v10-cccccccc", 2) == []
    assert "LS is down" in caplog.text and ls.deleted == []


def test_loss_weights_freeze_when_a_task_is_labelled() -> None:
    """MTAL weights: candidates take this ranking's weight; labelled tasks keep the one they had while
    they were candidates (the initial set has none); tasks gone from the project are forgotten."""
    from backend.loop.rank_pass import loss_weights

    previous = {"1": {"seg": 0.8}, "2": {"seg": 0.3}, "9": {"seg": 0.5}}  # from the last ranking
    fresh = {t: {"seg": 0.01} for t in ("1", "2", "3", "4")}  # the model now fits 1 and 2 well
    out = loss_weights(previous, fresh, ids=["1", "2", "3", "4"], candidates=["2", "4"])  # 1 and 3 labelled since
    assert out == {"1": {"seg": 0.8}, "2": {"seg": 0.01}, "4": {"seg": 0.01}}
    assert previous["1"] == {"seg": 0.8}
