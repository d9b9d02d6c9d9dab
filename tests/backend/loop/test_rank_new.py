"""Imported tasks scored without a full re-rank (issue #31, item 3): through the backend's own functions on
the rank-contract rig (recording Label Studio), against a full ranking of the same tasks as the known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.loop.rank_new import UNPLACED_SCORE, placed_scores, score_new_tasks
from backend.loop.rank_pass import rank_tasks
from tests.backend.loop.test_rank_contract import _setup

NEW = {9, 10}  # unlabelled tasks of the rig imported after the ranking


def test_placed_scores_known_answers() -> None:
    ranked = [0.9, 0.5, 0.1, None]  # at scores 0, 1/4, 2/4, 3/4 (None: ranked last)
    assert placed_scores([1.0, 0.7, 0.5, 0.0, None], ranked) == pytest.approx([0.0, 1 / 8, 1 / 4, 5 / 8, 7 / 8])
    assert placed_scores([0.3], None) == [UNPLACED_SCORE]  # a ranking without raw scores: nothing to compare
    assert placed_scores([0.3], []) == [0.0]  # no unlabelled task was ranked: the new one comes first
    scores = placed_scores([0.95, 0.6, 0.2], [0.9, 0.8, 0.5, 0.1])
    assert scores == sorted(scores) and all(0 <= s < 1 for s in scores)


def _ranked(tmp: Path, held_back: set[int]) -> tuple[Any, Any, list[dict[str, Any]], set[int]]:
    ctx, schema, tasks, labelled, version = _setup(tmp, "boxmask", "detseg")
    rank_tasks(ctx, "1", schema, version, [t for t in tasks if t["id"] not in held_back], labelled)
    return ctx, schema, tasks, labelled


def test_new_tasks_are_scored_pushed_once_and_placed_as_a_full_ranking_would(tmp_path: Path) -> None:
    full, _, _, _ = _ranked(tmp_path / "full", set())
    ctx, schema, tasks, labelled = _ranked(tmp_path / "incr", NEW)
    before = ctx.store.ranking("1")
    assert set(map(int, before["tasks"])) == {5, 6, 7, 8}
    assert all(isinstance(e["strategy_score"], float) for e in before["tasks"].values())
    ctx.ls.pushed.clear()
    imported = [{"id": t["id"], "data": t["data"]} for t in tasks if t["id"] in NEW]

    summary = score_new_tasks(ctx, "1", schema, imported + imported[:1])  # a duplicate in the batch too
    version = ctx.store.current("1")
    assert summary == {"version": version, "scored": 2, "pushed": 2, "skipped": 1}
    assert sorted(p["task"] for p in ctx.ls.pushed) == sorted(NEW)  # the new tasks only: no re-rank
    assert all(p["model_version"] == version and "cluster" not in p for p in ctx.ls.pushed)
    after = ctx.store.ranking("1")
    assert {k: v for k, v in after["tasks"].items() if int(k) not in NEW} == before["tasks"]
    assert after["strategy_state"] == before["strategy_state"] and after["model_version"] == version

    # the known answer: a full ranking of all tasks with the same (seeded) initial network
    want = full.store.ranking("1")["tasks"]
    got = after["tasks"]
    for n in map(str, NEW):
        assert got[n]["strategy_score"] == pytest.approx(want[n]["strategy_score"], rel=1e-5)
        assert got[n]["requested"] == want[n]["requested"]
        for j in map(str, (5, 6, 7, 8)):  # the same side of every ranked task as in the full ranking
            if abs(want[n]["strategy_score"] - want[j]["strategy_score"]) > 1e-6:
                assert (got[n]["score"] < got[j]["score"]) == (want[n]["score"] < want[j]["score"]), (n, j)
    pushed = {p["task"]: p for p in ctx.ls.pushed}
    full_pushed = {p["task"]: p for p in full.ls.pushed}
    for n in NEW:  # the same pre-annotations and ticks as the full ranking pushed
        assert pushed[n]["result"] == full_pushed[n]["result"]
        assert pushed[n]["score"] == got[str(n)]["score"]

    ctx.ls.pushed.clear()  # the same import again (or a ranking handing them over): nothing pushed twice
    again = score_new_tasks(ctx, "1", schema, imported)
    assert again["pushed"] == 0 and ctx.ls.pushed == []


def test_labelled_imports_and_projects_without_a_ranking_are_left_alone(tmp_path: Path) -> None:
    ctx, schema, tasks, labelled = _ranked(tmp_path / "a", NEW)
    ctx.ls.pushed.clear()
    done = [{**t, "annotations": [{"id": 1, "result": [], "was_cancelled": False}]} for t in tasks if t["id"] in NEW]
    assert score_new_tasks(ctx, "1", schema, done)["scored"] == 0 and ctx.ls.pushed == []

    fresh, schema, tasks, _, version = _setup(tmp_path / "b", "boxmask", "detseg")  # set up, never ranked
    summary = score_new_tasks(fresh, "1", schema, [t for t in tasks if t["id"] in NEW])
    assert summary["reason"] == "no ranking of the current version yet" and fresh.ls.pushed == []


def test_a_ranking_that_starts_meanwhile_stops_the_push(tmp_path: Path) -> None:
    ctx, schema, tasks, _ = _ranked(tmp_path, NEW)
    ctx.ls.pushed.clear()

    def guard() -> None:
        raise RuntimeError("ranking started")

    with pytest.raises(RuntimeError, match="ranking started"):
        score_new_tasks(ctx, "1", schema, [t for t in tasks if t["id"] in NEW], guard=guard)
    assert ctx.ls.pushed == [] and set(map(int, ctx.store.ranking("1")["tasks"])) == {5, 6, 7, 8}
