"""One score scale (issue #32): ranked, unranked and labelled tasks in one known order."""

from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.label_config import parse_label_config
from backend.serving.predict import predict_tasks
from backend.serving.task_score import LABELLED_SCORE, UNLABELLED_MAX, ScoreScale, is_labelled, placed_score
from tests.backend.serving.test_predict import CONFIG, DictFetcher, FakeNet

RANKED = [0.2, 0.5, 0.8]  # certainties of a ranking of 3 tasks: scores 0, 1/3, 2/3


@pytest.mark.parametrize(("certainty", "want"), [
    (0.1, 0.0),  # less certain than every ranked task: first
    (0.6, 0.5),  # between the 2nd (1/3) and the 3rd (2/3)
    (0.9, 2.5 / 3),  # after the last, still below a labelled task
    (0.5, 1 / 3),  # a tie counts half: level with the tied task
])
def test_placed_between_its_ranked_neighbours(certainty: float, want: float) -> None:
    assert placed_score(certainty, RANKED) == pytest.approx(want)


def test_no_ranking_uses_the_certainty_below_one() -> None:
    assert placed_score(0.3, []) == 0.3
    assert placed_score(1.0, []) == UNLABELLED_MAX < LABELLED_SCORE


def test_is_labelled_counts_submitted_annotations_only() -> None:
    assert is_labelled({"annotations": [{"was_cancelled": False, "result": []}]})  # labelled as empty
    assert not is_labelled({"annotations": [{"was_cancelled": True}]})  # skipped
    assert not is_labelled({"annotations": []}) and not is_labelled({})
    assert is_labelled({"total_annotations": 2}) and not is_labelled({"total_annotations": 0})


def test_scale_of_a_ranking() -> None:
    ranking = {"model_version": "v2", "tasks": {
        "1": {"score": 0.0, "certainty": 0.2}, "2": {"score": 1 / 3, "certainty": 0.5},
        "3": {"score": 2 / 3, "certainty": 0.8}}}
    scale = ScoreScale.of(ranking, "v2")
    assert scale.certainties == (0.2, 0.5, 0.8)
    assert scale.score("2", 0.99, labelled=False) == pytest.approx(1 / 3)  # the stored score wins
    assert scale.score("2", 0.99, labelled=True) == LABELLED_SCORE  # labelled since the ranking
    assert scale.score("9", 0.6, labelled=False) == pytest.approx(0.5)  # imported after the ranking
    stale = ScoreScale.of(ranking, "v3")  # another version's ranking is no ranking
    assert stale.score("2", 0.4, labelled=False) == 0.4 and stale.entry("2") == {}
    old = ScoreScale.of({"model_version": "v2", "tasks": {"1": {"score": 0.0}}}, "v2")  # before #32
    assert old.score("1", 0.7, False) == 0.0 and old.score("5", 0.7, False) == 0.7


def test_predict_orders_every_unlabelled_task_before_every_labelled_one() -> None:
    """/predict over ranked, unranked and labelled tasks: sorted by score (ascending, as Label Studio
    does), the ranking's order, then the unranked task (a confident FakeNet: certainty ~1, placed after
    every ranked task), then the labelled ones, whatever the ranking said about them."""
    schema = parse_label_config(CONFIG)
    images = {f"/data/upload/{i}.png": np.full((32, 48, 3), 20 + i, np.uint8) for i in range(1, 6)}
    done = [{"id": 1, "was_cancelled": False, "result": []}]
    skipped = [{"id": 2, "was_cancelled": True, "result": []}]
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1.png"}, "annotations": done},  # labelled, was ranked first
        {"id": 2, "data": {"image": "/data/upload/2.png"}},  # ranked second
        {"id": 3, "data": {"image": "/data/upload/3.png"}},  # imported after the ranking
        {"id": 4, "data": {"image": "/data/upload/4.png"}, "annotations": done},  # labelled, never ranked
        {"id": 5, "data": {"image": "/data/upload/5.png"}, "annotations": skipped},  # skipped: ranked third
    ]
    ranking = {"model_version": "v", "tasks": {"1": {"score": 0.0, "certainty": 0.1},
                                               "2": {"score": 1 / 3, "certainty": 0.3},
                                               "5": {"score": 2 / 3, "certainty": 0.4}}}
    preds = predict_tasks(FakeNet(schema.modalities), schema, tasks, DictFetcher(images), model_version="v",
                          image_size=32, ranking=ranking)
    scores = {t["id"]: p["score"] for t, p in zip(tasks, preds, strict=True)}
    assert sorted(scores, key=lambda t: (scores[t], t)) == [2, 5, 3, 1, 4]
    assert scores[3] == pytest.approx((3 - 0.5) / 3)  # after the 3 ranked certainties
    assert scores[1] == scores[4] == LABELLED_SCORE
    assert all(0 <= s <= 1 for s in scores.values())
