"""MTAL_RANK_MAX_TASKS: a ranking scores every labelled task and a seeded random subset of the unlabelled ones;
the tasks it leaves out keep their stored ranking entry (what /predict reads) and their last prediction in
Label Studio (no older version is pruned). Label Studio and the image server are recording fakes, as in
test_rank_contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.loop.rank_pass import rank_subset, rank_tasks
from tests.backend.loop.test_rank_contract import RecordingLS, _setup

TASKS = [{"id": i} for i in range(1, 101)]
LABELLED = {1, 2, 3, 50}


def test_subset_keeps_every_labelled_task_and_draws_the_limit() -> None:
    chosen, left = rank_subset(TASKS, LABELLED, 10, seed=7)
    ids = [t["id"] for t in chosen]
    assert set(ids) >= LABELLED and len(ids) == len(LABELLED) + 10
    assert ids == sorted(ids)  # the input order
    assert left == {str(t["id"]) for t in TASKS} - {str(i) for i in ids}
    assert rank_subset(TASKS, LABELLED, 10, seed=7) == (chosen, left)  # seeded


def test_consecutive_versions_draw_different_tasks() -> None:
    a, _ = rank_subset(TASKS, LABELLED, 10, seed=0 + 1)
    b, _ = rank_subset(TASKS, LABELLED, 10, seed=0 + 2)
    assert {t["id"] for t in a} - LABELLED != {t["id"] for t in b} - LABELLED


def test_off_or_under_the_limit_ranks_everything() -> None:
    assert rank_subset(TASKS, LABELLED, 0, seed=1) == (TASKS, set())
    assert rank_subset(TASKS, LABELLED, 96, seed=1) == (TASKS, set())
    assert len(rank_subset(TASKS, LABELLED, 95, seed=1)[1]) == 1


@dataclass
class PruningLS(RecordingLS):
    """Holds an older MTAL version's predictions, which a full ranking would delete."""

    deleted: list[str] = field(default_factory=list)

    def model_versions(self, project: int) -> dict[str, int]:
        return {"mtal-1-v0-0123abcd": 7}

    def delete_predictions(self, project: int, version: str) -> None:
        self.deleted.append(version)


def test_a_subset_ranking_pushes_only_its_tasks_and_the_others_keep_theirs(tmp_path: Path) -> None:
    ctx, schema, tasks, labelled, version = _setup(tmp_path, "auto", "single")
    ctx.ls = PruningLS()
    unlabelled = [str(t["id"]) for t in tasks if t["id"] not in labelled]
    first = rank_tasks(ctx, "1", schema, version, tasks, labelled)  # every task, as with the setting off
    assert first["pushed"] == len(unlabelled) and ctx.ls.deleted == ["mtal-1-v0-0123abcd"]
    before = ctx.store.ranking("1")["tasks"]
    assert sorted(before) == sorted(unlabelled)

    ctx.ls.pushed.clear()
    ctx.ls.deleted.clear()
    chosen, left = rank_subset(tasks, labelled, 3, seed=5)
    summary = rank_tasks(ctx, "1", schema, version, chosen, labelled, unscored=left)
    pushed = {str(p["task"]) for p in ctx.ls.pushed}
    assert len(pushed) == 3 and not pushed & left and summary["unscored"] == len(unlabelled) - 3
    assert summary["tasks"] == 3 + len(labelled)  # the labelled tasks were scored too (diversity)
    assert ctx.ls.deleted == []  # the left-out tasks' last predictions stay in Label Studio
    after = ctx.store.ranking("1")["tasks"]
    assert sorted(after) == sorted(unlabelled)  # /predict still finds every unlabelled task
    assert {t: after[t] for t in left} == {t: before[t] for t in left}
