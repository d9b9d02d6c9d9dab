"""docs/results/photographs.md generation: rare-class table, goal verdicts, a rendered block."""

from __future__ import annotations

from pathlib import Path

from mtal_models.simulate import PRESETS, simulate
from mtal_models.simulate.photo_doc import goals, main, rare_class_table
from mtal_models.simulate.report import labels_table


def _row(strategy: str, seed: int, rnd: int, labels: int, score: float, **extra: float | None) -> dict:
    return {"strategy": strategy, "seed": seed, "round": rnd, "labels": labels, "mt_score": score, **extra}


def test_rare_class_table_means_over_seeds_and_skips_unseen_classes() -> None:
    # CamVid ids: pole 2, sign_symbol 6, pedestrian 9, bicyclist 10
    rows = [_row("random", 0, 0, 10, 0.5, semantic_iou_2=0.1, semantic_iou_6=0.2, semantic_iou_9=None,
                 semantic_iou_10=0.0),
            _row("random", 1, 0, 10, 0.5, semantic_iou_2=0.3, semantic_iou_6=0.2, semantic_iou_9=0.4,
                 semantic_iou_10=0.0)]
    refs = [{"metrics": {"semantic": {"class_iou": [0.9, 0.8, 0.25, 0, 0, 0, 0.5, 0, 0, None, 0.1]}}}]
    text = rare_class_table(rows, refs, "camvid")
    assert "| strategy | round | labels | pole | sign_symbol | pedestrian | bicyclist |" in text
    assert "| random | 0 | 10 | 0.200 ± 0.100 | 0.200 ± 0.000 | 0.400 ± 0.000 | 0.000 ± 0.000 |" in text
    assert "| full-data reference | | all | 0.250 ± 0.000 | 0.500 ± 0.000 | n/a | 0.100 ± 0.000 |" in text
    assert rare_class_table(rows, refs, "pennfudan") == ""
    zero = [_row("random", 0, 0, 10, 0.5, **{f"semantic_iou_{k}": 0.0 for k in (2, 6, 9, 10)})]
    ref0 = [{"metrics": {"semantic": {"class_iou": [0.9] * 2 + [0.0] * 9}}}]
    assert rare_class_table(zero, ref0, "camvid").startswith("IoU 0.000 for pole, sign_symbol, pedestrian, bicyclist")


def _curve(name: str, scores: list[float]) -> list[dict]:
    return [_row(name, s, r, 10 + 30 * r, v) for s in (0, 1) for r, v in enumerate(scores)]


def test_camvid_goals_judge_the_ratio_and_coreset() -> None:
    # random reaches 0.95 at 70 labels; equal at 40 (57%) and above coreset in rounds 1-2
    rows = _curve("random", [0.6, 0.8, 0.95]) + _curve("equal", [0.6, 0.95, 1.0]) + _curve("coreset", [0.6, 0.9, 0.96])
    text = " ".join(goals("camvid", rows, labels_table(rows, 0.95)))
    assert "**holds**: equal 40 vs Random 70 labels = 57%" in text
    assert "equal at or above CoreSet in every round: **holds** (differences of the seed means, rounds 1..: " \
           "+0.050, +0.040)" in text
    rows = _curve("random", [0.6, 0.8, 0.9]) + _curve("equal", [0.6, 0.95, 1.0]) + _curve("coreset", [0.6, 0.97, 0.9])
    text = " ".join(goals("camvid", rows, labels_table(rows, 0.95)))
    assert "**not measurable**: Random does not reach the target within 70 labels" in text
    assert "(others reaching it: equal at 40)" in text  # CoreSet is the baseline, not a candidate
    assert "equal at or above CoreSet in every round: **does not hold** (differences of the seed means, rounds " \
           "1..: -0.020, +0.100)" in text


def test_photo_doc_renders_a_finished_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    simulate(PRESETS["tiny"].replace(strategies=("random", "coreset")), run, progress=False)
    out = tmp_path / "doc" / "photographs.md"
    notes = tmp_path / "notes.md"
    notes.write_text("Load: high.")
    assert main(["--run", f"camvid={run}", "--out", str(out), "--plots", str(tmp_path / "doc" / "img"),
                 "--notes", str(notes), "--page", str(tmp_path / "results.md")]) == 0
    text = out.read_text()
    assert text.startswith("## Real photographs\n\nLoad: high.")
    assert "### `camvid`" in text and "| random |" in text and "(doc/img/camvid-multi_task_score.png)" in text
    assert (tmp_path / "doc" / "img" / "camvid-multi_task_score.png").is_file()
