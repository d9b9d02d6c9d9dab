"""The simulator end to end on the "tiny" preset (2 rounds, 16 images, tiny net, 32 px) plus its pieces."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import mtal_models.simulate.cold_start as cold_start
import mtal_models.simulate.rounds as rounds
from mtal_models.modalities import ModalitySpec
from mtal_models.simulate import PRESETS, SimConfig, initial_images, labels_to_target, load_config, simulate
from mtal_models.simulate.cli import main
from mtal_models.simulate.data import load_data
from mtal_models.simulate.score import task_scores

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("sim")
    return out, simulate(TINY, out, progress=False)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_outputs_exist_with_the_right_columns(tiny_run: tuple[Path, object]) -> None:
    out, _ = tiny_run
    for name in (
        "metrics.csv",
        "metrics.json",
        "labels_to_target.md",
        "labels_to_target.csv",
        "rounds.md",
        "plots/multi_task_score.png",
        *(f"plots/{m}.png" for m in TINY.modalities),
    ):
        assert (out / name).is_file(), name
    rows = _csv(out / "metrics.csv")
    expected = {
        "strategy",
        "seed",
        "round",
        "labels",
        "images",
        "mt_score",
        "multi_task_loss",
        "semantic_miou",
        "depth_rmse",
        "normals_mean_angle",
        "score_semantic",
        "labels_depth",
        "semantic_mask_edit_share",  # the edit cost of the prefill, next to mIoU
    }
    assert expected <= set(rows[0])
    assert all(0 <= float(r["semantic_mask_edit_share"]) <= 1 for r in rows)
    assert len(rows) == len(TINY.strategies) * len(TINY.seeds) * (TINY.rounds + 1)
    data = json.loads((out / "metrics.json").read_text())
    assert len(data["rows"]) == len(rows) and data["machine"]["torch"] == torch.__version__
    table = _csv(out / "labels_to_target.csv")
    assert [t["strategy"] for t in table] == list(TINY.strategies)
    assert (out / "plots/multi_task_score.png").read_bytes()[:4] == b"\x89PNG"


def test_labels_grow_by_the_budget_each_round(tiny_run: tuple[Path, object]) -> None:
    _, result = tiny_run
    for name in TINY.strategies:
        rows = sorted((r for r in result.rows if r["strategy"] == name), key=lambda r: r["round"])
        assert [r["round"] for r in rows] == list(range(TINY.rounds + 1))
        assert rows[0]["labels"] == TINY.initial_count(TINY.n_images) * len(TINY.modalities)
        for a, b in zip(rows, rows[1:], strict=False):
            assert b["labels"] - a["labels"] == TINY.budget
            assert all(math.isfinite(b[k]) for k in ("mt_score", "semantic_miou", "depth_rmse"))


def test_same_seed_same_initial_set_for_every_strategy(tiny_run: tuple[Path, object]) -> None:
    out, result = tiny_run
    first = initial_images(TINY, TINY.n_images, 0)
    assert first == initial_images(TINY, TINY.n_images, 0) and len(first) == TINY.initial
    assert first != initial_images(TINY, TINY.n_images, 1)
    # round 0 = same images, same initial weights, same training: identical metrics for every strategy
    r0 = {r["strategy"]: r for r in result.rows if r["round"] == 0}
    assert len({(r["mt_score"], r["depth_rmse"]) for r in r0.values()}) == 1
    for name in TINY.strategies:
        pool = json.loads((out / "runs" / name / "seed0" / "state.json").read_text())["pool"]["labelled"]
        assert set(first) <= set(pool["semantic"])


def test_resume_does_not_recompute_finished_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fit = rounds.fit

    def counting_fit(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(rounds, "fit", counting_fit)
    config = TINY.replace(strategies=("random",), rounds=1)
    first = simulate(config, tmp_path, progress=False)
    assert len(calls) == 1 + 2  # reference + rounds 0 and 1
    calls.clear()
    second = simulate(config.replace(rounds=2), tmp_path, progress=False)
    assert len(calls) == 1  # only round 2 trains; reference and rounds 0-1 come from disk
    assert second.rows[:2] == first.rows
    assert [r["round"] for r in second.rows] == [0, 1, 2]
    with pytest.raises(ValueError, match="different settings"):
        simulate(config.replace(budget=3), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"strategies": ("random", "nope")}, "strategies"),
        ({"budget": 0}, "budget"),
        ({"rounds": -1}, "rounds"),
        ({"dataset": "nyud"}, "path"),
        ({"net": "huge"}, "net"),
        ({"seeds": ()}, "seeds"),
        ({"strategy_options": {"rbal": {}}}, "strategy_options"),
    ],
)
def test_bad_config_raises_value_error(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TINY.replace(**changes)


def test_bad_config_file_and_modality(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"preset": "tiny", "budgett": 3}))
    with pytest.raises(ValueError, match="budgett"):
        load_config(bad)
    with pytest.raises(ValueError, match="not a preset"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="initial"):
        TINY.replace(initial=16).initial_count(16)
    with pytest.raises(ValueError, match="colour"):
        simulate(TINY.replace(modalities=("semantic", "colour")), tmp_path / "x", progress=False)


def test_cli_runs_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "simulate",
                "--config",
                "tiny",
                "--out",
                str(tmp_path),
                "--strategies",
                "random",
                "--rounds",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "| random |" in capsys.readouterr().out
    assert main(["--config", "tiny", "--out", str(tmp_path), "--strategies", "bogus", "--no-progress"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_labels_to_target_interpolates_and_reports_not_reached() -> None:
    assert labels_to_target([10, 20, 30], [0.5, 0.9, 1.0], 0.95) == pytest.approx(25.0)
    assert labels_to_target([10, 20], [0.96, 0.99], 0.95) == 10.0
    assert labels_to_target([10, 20], [0.5, 0.9], 0.95) is None
    with pytest.raises(ValueError, match="scores"):
        labels_to_target([1, 2], [0.5], 0.95)


def test_task_scores_invert_errors() -> None:
    mods = {"seg": ModalitySpec("seg", "segmentation", 3), "depth": ModalitySpec("depth", "depth", 1)}
    full = {"seg": {"miou": 0.5}, "depth": {"rmse": 1.0}}
    now = {"seg": {"miou": 0.25}, "depth": {"rmse": 2.0}}
    s = task_scores(now, full, mods)
    assert s["seg"] == pytest.approx(0.5) and s["depth"] == pytest.approx(0.5)
    assert s["multi_task"] == pytest.approx(0.5)
    assert task_scores(full, full, mods)["multi_task"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="depth"):
        task_scores({"seg": {"miou": 0.2}}, full, mods)


def test_default_preset_is_the_documented_one() -> None:
    d = PRESETS["default"]
    assert isinstance(d, SimConfig) and d.rounds >= 3 and len(d.seeds) >= 2
    assert {"random", "partal", "partal_image"} <= set(d.strategies)


def test_results_page_renders_from_a_finished_run(tiny_run: tuple[Path, object], tmp_path: Path) -> None:
    from mtal_models.simulate.results_doc import main as results_main

    out, _ = tiny_run
    doc = tmp_path / "docs" / "results.md"
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"name": "x_s", "value": "1.5", "module": "m", "note": ""}]}))
    notes = tmp_path / "notes.md"
    notes.write_text("Interrupted once, resumed.")
    assert (
        results_main(
            [
                "--sim",
                str(out),
                "--bench",
                str(bench),
                "--out",
                str(doc),
                "--plots",
                str(doc.parent / "r"),
                "--notes",
                str(notes),
            ]
        )
        == 0
    )
    text = doc.read_text()
    assert "| x_s | 1.5 | bench.m |" in text and "![multi_task_score](r/multi_task_score.png)" in text
    assert "partal and partal_image were not both run" in text and "Interrupted once, resumed." in text
    assert (doc.parent / "r" / "multi_task_score.png").is_file()


def test_nyud_reader_path_loads_and_resizes(tmp_path: Path) -> None:
    from mtal_models.data import SceneConfig, SyntheticDataset, write_nyud
    from mtal_models.simulate import load_data

    ds = SyntheticDataset(6, SceneConfig(height=40, width=48), seed=3)
    mods = {m: ds.modalities[m] for m in ("semantic", "depth", "normals")}
    samples = [ds[i] for i in range(6)]
    for s in samples:  # the writer stores only the chosen modalities
        for m in list(s.labels):
            if m not in mods:
                del s.labels[m]
                s.present.pop(m, None)
    write_nyud(samples[:4], tmp_path, mods, split="train")
    write_nyud(samples[4:], tmp_path, mods, split="val")
    config = TINY.replace(dataset="nyud", path=str(tmp_path), n_images=0, val_images=5, initial=2)
    data = load_data(config)
    assert len(data.pool) == 4 and len(data.val) == 2
    assert data.pool[0].image.shape[:2] == (32, 32) and data.pool[0].labels["depth"].shape[:2] == (32, 32)
    assert list(data.modalities) == list(TINY.modalities)
    with pytest.raises(ValueError, match="edges"):
        load_data(config.replace(modalities=("semantic", "edges")))


def test_detseg_run_reports_mdsq_and_boxmask_matches_classes_by_name(tmp_path: Path) -> None:
    """A det+seg set (semantic + object boxes): every row carries MTC's mDSQ against the seed's reference,
    and BoxMask runs with the scenes' class table (detection class "ball" is semantic class "ball", which
    sits after the three stuff classes, not at c + 1)."""
    config = TINY.replace(modalities=("semantic", "objects"), strategies=("random", "boxmask"), image_size=64,
                          n_images=12, val_images=4, budget=4, lr=1e-3)
    result = simulate(config, tmp_path, progress=False)
    assert {r["strategy"] for r in result.rows} == {"random", "boxmask"}
    assert all("mdsq" in r for r in result.rows) and "mdsq" in _csv(tmp_path / "metrics.csv")[0]
    data = load_data(config)
    strategy = rounds.get_strategy("boxmask", **rounds._strategy_options(config, "boxmask", 0, 1, data.class_names))
    _, _, mapping = strategy.mapping(data.modalities)
    assert mapping is not None and mapping.tolist() == list(range(3, 3 + data.modalities["objects"].channels))


def test_semi_switch_trains_on_the_images_without_any_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--semi-weight: each round's fit gets the pool's images that have no label yet (image only, no label
    present), the same code path as the backend's MTAL_SEMI_WEIGHT; off (the default) passes none."""
    seen: list[tuple[float, int | None]] = []
    real_fit = rounds.fit

    def spy(model, loader, config, **kwargs):  # noqa: ANN001, ANN202
        pool = kwargs.get("unlabelled")
        if pool is not None:
            assert all(not any(s.present.values()) and not s.labels for s in pool)
        seen.append((config.semi_weight, None if pool is None else len(pool)))
        return real_fit(model, loader, config, **kwargs)

    monkeypatch.setattr(rounds, "fit", spy)
    config = TINY.replace(strategies=["random"], seeds=[0], rounds=1, semi_weight=1.0)
    simulate(config, tmp_path / "on", progress=False)
    n_pool = config.n_images
    on = [s for s in seen if s[1] is not None]
    assert on and all(w == 1.0 for w, _ in on)
    sizes = [n for _, n in on]
    assert sizes[0] > sizes[-1] and all(0 < n < n_pool for n in sizes)  # the pool shrinks as labels arrive
    seen.clear()
    simulate(TINY.replace(strategies=["random"], seeds=[0], rounds=1), tmp_path / "off", progress=False)
    assert seen and all(n is None for _, n in seen)


def test_cold_start_pretrains_once_per_seed_and_picks_round0_by_typiclust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--pretrain-steps / --initial-strategy typiclust: each seed's network is pretrained on the pool once
    (shared by its strategies, reused on resumption), training starts from it, and round 0's images are the
    TypiClust pick on the pretrained features instead of the seeded random draw."""
    calls: list[int] = []
    real_pretrain, real_typical = cold_start.pretrain, rounds.typical_images
    picked: list[list[int]] = []

    def count_pretrain(model, images, config, **kwargs):  # noqa: ANN001, ANN202
        calls.append(config.steps)
        return real_pretrain(model, images, config, **kwargs)

    def record(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        picked.append(real_typical(*args, **kwargs))
        return picked[-1]

    monkeypatch.setattr(cold_start, "pretrain", count_pretrain)
    monkeypatch.setattr(rounds, "typical_images", record)
    monkeypatch.setattr(rounds, "initial_images", lambda *a: pytest.fail("random initial draw with typiclust"))
    config = TINY.replace(strategies=["random", "coreset"], seeds=[0], rounds=1, pretrain_steps=3,
                          initial_strategy="typiclust")
    result = simulate(config, tmp_path, progress=False)
    assert calls == [3], "one pretrain per seed, shared by both strategies"
    assert len(picked) == 2 and picked[0] == picked[1] and len(picked[0]) == config.initial_count(config.n_images)
    ck = torch.load(tmp_path / "pretrain" / "seed0.pt", weights_only=False)
    fresh = rounds._build_model(config, load_data(config).modalities, 0).state_dict()
    changed = [k for k, v in ck["model_state"].items() if k.startswith("backbone") and not torch.equal(v, fresh[k])]
    assert changed, "the stored start is the pretrained trunk"
    first = [r for r in result.rows if r["round"] == 0]
    assert first and all(r["images"] == len(picked[0]) for r in first)
    simulate(config.replace(rounds=2), tmp_path, progress=False)  # resumed: the pretrain is not run again
    assert calls == [3]
