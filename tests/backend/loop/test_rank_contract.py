"""Every strategy the backend accepts, through the backend's own ranking job (``rank_tasks``), twice in a
row, on a Label Studio-shaped project: task JSON with LS annotations (brush RLE, percent rectangles, the
modalities checkbox) drawn from synthetic scenes' exact labels.

A strategy the backend cannot run on a config is refused at /setup (``MTALModel.setup``: a 422 with the
reason), never by a crash in the job. Label Studio and the image server are recording fakes here (this is
the unit-level contract; the real-LS loop is in tests/e2e)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.labelstudio.label_config import ProjectSchema
from backend.labelstudio.tasks import prepare_tasks
from backend.loop.rank_pass import _score_tasks, rank_tasks
from backend.loop.result_spool import ResultSpool
from backend.loop.train_round import train_version
from backend.serving.model import ModelSetupError, MTALModel, load_schema
from backend.serving.store import ModelStore
from backend.serving.strategy import strategy_for
from backend.settings import Settings
from mtal_models.data import SceneConfig, SyntheticDataset
from mtal_models.strategies import STRATEGIES
from mtal_models.strategies.base import BatchOutputs
from mtal_models.training import load_checkpoint
from tests.support.scene_project import SceneProject, annotation_result, scene_label_config

SIZE = 32
N_TASKS = 10
LABELLED = {0: ("semantic", "parts"), 1: ("semantic",), 2: ("parts",), 3: ("semantic", "parts")}
LABELLED_DETSEG = {0: ("semantic", "objects"), 1: ("semantic",), 2: ("objects",), 3: ("semantic", "objects")}
LABELLED_SINGLE = {0: ("semantic",), 1: ("semantic",), 3: ("semantic",)}
# label configs: dense (semantic + parts brushes), detseg (semantic brush + object rectangles), single (one brush tag)
KINDS = ("dense", "detseg", "single")


@dataclass
class RecordingLS:
    """What ``rank_tasks`` calls on Label Studio, recorded."""

    pushed: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[str] = field(default_factory=list)

    def create_predictions_bulk(self, project: int, predictions: list[dict[str, Any]]) -> int:
        self.pushed.extend(predictions)
        return len(predictions)

    def set_project_ranking(self, project: int, version: str, **_: Any) -> None:
        self.ranking.append(version)

    def model_versions(self, project: int) -> dict[str, int]:
        return {}

    def delete_predictions(self, project: int, version: str) -> None:
        raise AssertionError("nothing to delete")


@dataclass
class DictFetcher:
    images: dict[str, np.ndarray]

    def fetch_image(self, url: str, task_id: int | None = None) -> np.ndarray:
        return self.images[url]


@dataclass
class Ctx:
    settings: Settings
    store: ModelStore
    ls: RecordingLS
    fetcher: DictFetcher


def _project(kind: str) -> tuple[str, list[dict[str, Any]], set[int], DictFetcher]:
    """(label config, LS tasks, ids of labelled tasks, fetcher) of a small scene project."""
    scenes = SceneConfig(height=SIZE, width=SIZE)
    data = SyntheticDataset(N_TASKS, scenes, seed=3)
    samples = [data[i] for i in range(N_TASKS)]
    config = scene_label_config(scenes, boxes=kind == "detseg", parts=kind == "dense")
    project = SceneProject(1, list(range(1, N_TASKS + 1)), samples, config, scenes)
    labelled = {"dense": LABELLED, "detseg": LABELLED_DETSEG, "single": LABELLED_SINGLE}[kind]
    tasks, images = [], {}
    for i, s in enumerate(samples):
        url = f"/data/upload/1/{s.id}.png"
        images[url] = s.image
        task: dict[str, Any] = {"id": i + 1, "data": {"image": url}, "annotations": []}
        if i in labelled:
            task["annotations"] = [{"id": 100 + i, "result": annotation_result(project, s, labelled[i]),
                                    "was_cancelled": False, "created_at": "2026-01-01T00:00:00Z"}]
        tasks.append(task)
    return config, tasks, {i + 1 for i in labelled}, DictFetcher(images)


def _settings(tmp: Path, strategy: str) -> Settings:
    return Settings(model_dir=tmp, strategy=strategy, net_config="tiny", image_size=SIZE, train_epochs=1,
                    train_batch_size=4, clusters=2, predict_batch_size=4)


def _accepted(kind: str) -> list[str]:
    """Every strategy name the backend's settings accept, for this config (refused ones: see below)."""
    schema = load_schema(_project(kind)[0])
    out = []
    for name in ["auto", *STRATEGIES]:
        try:
            strategy_for(Settings(strategy=name), schema)
        except ValueError:
            continue
        out.append(name)
    return out


def _setup(tmp: Path, strategy: str, kind: str) -> tuple[Ctx, ProjectSchema, list[dict[str, Any]], set[int], str]:
    config, tasks, labelled, fetcher = _project(kind)
    settings = _settings(tmp, strategy)
    store = ModelStore(tmp)
    version = MTALModel("1", config, settings, store).setup()
    return Ctx(settings, store, RecordingLS(), fetcher), load_schema(config), tasks, labelled, version


def _check_ranking(ctx: Ctx, schema: ProjectSchema, tasks: list[dict[str, Any]], labelled: set[int],
                   version: str, name: str) -> dict[str, Any]:
    ctx.ls.pushed.clear()
    summary = rank_tasks(ctx, "1", schema, version, tasks, labelled)
    unlabelled = [t["id"] for t in tasks if t["id"] not in labelled]
    assert sorted(p["task"] for p in ctx.ls.pushed) == unlabelled  # one prediction per unlabelled task
    assert all(math.isfinite(p["score"]) and p["model_version"] == version for p in ctx.ls.pushed)
    assert ctx.ls.ranking[-1] == version
    ranking = ctx.store.ranking("1")
    strategy = strategy_for(ctx.settings, schema)
    assert summary["strategy"] == ranking["strategy"] == strategy.name
    assert strategy.name in ranking["strategy_state"]
    assert sorted(map(int, ranking["tasks"])) == unlabelled
    requested = {int(t): r["requested"] for t, r in ranking["tasks"].items()}
    assert all(set(r) <= set(schema.annotatable) for r in requested.values())
    # one scale (#32): rank positions r / M in [0, 1), each with the certainty /predict places others by
    entries = ranking["tasks"].values()
    assert sorted(e["score"] for e in entries) == [r / len(unlabelled) for r in range(len(unlabelled))]
    assert all(0.0 <= e["certainty"] <= 1.0 for e in entries)
    assert all(e["strategy_score"] is None or math.isfinite(e["strategy_score"]) for e in entries)
    if strategy.unit == "pair":  # pair strategies ask for single modalities, ticked in the prediction
        assert any(requested.values())
        for p in ctx.ls.pushed:
            ticks = [r for r in p["result"] if r["from_name"] == schema.choices_tag]
            want = requested[p["task"]]
            assert (ticks[0]["value"]["choices"] if ticks else []) == want
    return ranking


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind"), [(n, k) for k in KINDS for n in _accepted(k)])
def test_every_backend_strategy_ranks_a_project_twice(tmp_path: Path, name: str, kind: str) -> None:
    ctx, schema, tasks, labelled, version = _setup(tmp_path, name, kind)
    first = _check_ranking(ctx, schema, tasks, labelled, version, name)
    second = _check_ranking(ctx, schema, tasks, labelled, version, name)
    assert second["strategy_state"].keys() == first["strategy_state"].keys()


def test_strategies_the_backend_cannot_run_are_refused_at_setup(tmp_path: Path) -> None:
    """ll4al (its module trains with the network), boxmask on a dense-only config, MTAL's committee on
    det+seg: a clear error at /setup naming the setting, not a failed job later."""
    accepted = {k: set(_accepted(k)) for k in KINDS}
    assert "ll4al" not in accepted["dense"] | accepted["detseg"] | accepted["single"]
    assert "boxmask" not in accepted["dense"] and "boxmask" in accepted["detseg"]
    assert "mtal" in accepted["dense"] and "mtal" not in accepted["detseg"]
    # one modality: no task pairs, so no MTAL committee (auto falls back to PartAL's image entropy)
    assert not {n for n in accepted["single"] if n.startswith("mtal") and n != "mtal_diversity"}
    assert {"auto", "partal_image", "random", "coreset"} <= accepted["single"]
    for kind, name in [("dense", "ll4al"), ("dense", "boxmask"), ("detseg", "mtal"), ("single", "mtal_unweighted")]:
        config = _project(kind)[0]
        with pytest.raises(ModelSetupError, match=f"MTAL_STRATEGY='{name}'"):
            MTALModel("1", config, _settings(tmp_path / name, name), ModelStore(tmp_path / name)).setup()


def test_partal_freezes_its_constants_on_the_first_ranking_and_keeps_them(tmp_path: Path) -> None:
    """The first ranking of a project has no stored state: PartAL must fit (not fail) and store its
    normaliser, which the second ranking reuses unchanged."""
    ctx, schema, tasks, labelled, version = _setup(tmp_path, "partal", "dense")
    first = _check_ranking(ctx, schema, tasks, labelled, version, "partal")["strategy_state"]["partal"]
    assert set(first["normalizer"]["min"]) == {"semantic", "parts"}
    second = _check_ranking(ctx, schema, tasks, labelled, version, "partal")["strategy_state"]["partal"]
    assert second == first


def test_boxmask_scores_a_perfectly_consistent_image_zero_through_the_schema() -> None:
    """Mask, box and crop agree exactly (the box's class is painted inside it, background elsewhere):
    S = 0 with the backend's schema mapping ("chair" box vs the "chair" brush class). The old c -> c + 1
    default compared "chair" boxes with "floor" and scored 1.75-ish."""
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="semantic" toName="image">'
              '<Label value="floor"/><Label value="wall"/><Label value="chair"/></BrushLabels>'
              '<RectangleLabels name="objects" toName="image"><Label value="chair"/><Label value="lamp"/>'
              '</RectangleLabels></View>')
    schema = load_schema(config)
    strategy = strategy_for(Settings(strategy="boxmask"), schema)
    chair_seg, chair_det = schema.class_index("semantic", "chair"), schema.class_index("objects", "chair")
    h = w = 16
    cls_map = torch.full((h, w), schema.class_index("semantic", "floor"), dtype=torch.long)
    cls_map[4:12, 4:12] = chair_seg
    seg = torch.nn.functional.one_hot(cls_map, 4).permute(2, 0, 1)[None].float() * 30  # [1, 4, H, W] logits
    det = torch.zeros(1, 1, 8)
    det[0, 0, :6] = torch.tensor([4, 4, 12, 12, 0.9, chair_det])
    det[0, 0, 6 + chair_det] = 1.0
    crop = torch.nn.functional.one_hot(torch.full((8, 8), chair_seg), 4).permute(2, 0, 1)[None].float() * 30
    out = BatchOutputs(modalities=schema.modalities, final={"semantic": seg, "objects": det}, crops=[crop])
    score = strategy.score_batch(out)["score"]
    assert float(score[0]) == pytest.approx(0.0, abs=1e-3)
    lamp = det.clone()  # a "lamp" box: no brush class of that name, so nothing to check
    lamp[0, 0, 5], lamp[0, 0, 6:] = schema.class_index("objects", "lamp"), torch.tensor([0.0, 1.0])
    out.final["objects"] = lamp
    lamp_scores = strategy.score_batch(out)
    assert float(lamp_scores["score"][0]) == pytest.approx(float(lamp_scores["s_seg"][0]))  # no S_loc/S_cls
    assert float(lamp_scores["s_seg"][0]) == pytest.approx(64 / 256)  # the chair pixels: no chair box explains them


def test_labelled_tasks_mtal_scores_stay_within_the_unlabelled_range(tmp_path: Path) -> None:
    """MTAL never feeds an image's own labels in: each labelled task scores exactly like an unlabelled twin
    of the same image, so it lies within the unlabelled range, after a training round with substitution
    (which trains the label encoders conditioning would go through; conditioned, the twins differ)."""
    ctx, schema, tasks, labelled, version = _setup(tmp_path, "mtal_inconsistency", "dense")
    twins = [{**t, "id": 100 + t["id"], "annotations": []} for t in tasks if t["id"] in labelled]
    samples = [p.sample for _, p in prepare_tasks(ctx, tasks, schema, SIZE) if p.labelled]
    version, _ = train_version(ctx.store, "1", schema, replace(ctx.settings, train_epochs=8), samples, [])
    model = load_checkpoint(ctx.store.checkpoint_path("1", version)).model.eval()
    assert model.conditionable  # substitution trained encoders that conditioning could go through

    def scores(strategy: Any) -> tuple[dict[str, torch.Tensor], list[Any]]:
        with ResultSpool(ctx.store.tmp_dir("1")) as spool:
            rows, parts, _ = _score_tasks(ctx, model, strategy, schema, [*tasks, *twins], labelled, spool)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, [r["id"] for r in rows]

    strategy = strategy_for(ctx.settings, schema)
    assert not strategy.needs.conditioned
    inc, ids = scores(strategy)
    for key, values in inc.items():
        for t in labelled:
            assert float(values[ids.index(t)]) == pytest.approx(float(values[ids.index(100 + t)]), rel=1e-5), key
    strategy.needs = replace(strategy.needs, conditioned=True)  # the defect, to show the check can fail
    cond, _ = scores(strategy)
    assert any(float(v[ids.index(t)]) != pytest.approx(float(v[ids.index(100 + t)]), rel=1e-5)
               for v in cond.values() for t in labelled)


def test_boxmask_picks_the_segmentation_tag_that_shares_the_box_labels() -> None:
    config = ('<View><Image name="image" value="$image"/>'
              '<BrushLabels name="stuff" toName="image"><Label value="road"/><Label value="sky"/></BrushLabels>'
              '<PolygonLabels name="things" toName="image"><Label value="Car"/><Label value="person"/></PolygonLabels>'
              '<RectangleLabels name="boxes" toName="image"><Label value="car"/><Label value="person"/>'
              '</RectangleLabels></View>')
    schema = load_schema(config)
    strategy = strategy_for(Settings(strategy="boxmask"), schema)
    det, seg, mapping = strategy.mapping(schema.modalities)
    assert (det, seg) == ("boxes", "things")
    assert mapping.tolist() == [1, 2]  # "car" -> "Car" (case-insensitive), "person" -> "person"; 0 = background


def test_strategy_scores_leave_the_padding_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Photos of 32 x 72 at MTAL_IMAGE_SIZE=32 are a 32 x 72 image inside a 32 x 96 input: the strategy
    must score the 32 x 72 (the padding's predictions used to count in every image's mean)."""
    ctx, schema, tasks, labelled, version = _setup(tmp_path, "partal_image", "dense")
    for url, image in ctx.fetcher.images.items():
        ctx.fetcher.images[url] = np.ascontiguousarray(np.tile(image, (1, 3, 1))[:, :72])
    strategy = strategy_for(ctx.settings, schema)
    real, seen = type(strategy).score_batch, []

    def spy(self: Any, out: BatchOutputs) -> Any:
        seen.append({k: tuple(v.shape[-2:]) for k, v in [*out.final.items(), *out.mc.items()]})
        return real(self, out)

    monkeypatch.setattr(type(strategy), "score_batch", spy)
    _check_ranking(ctx, schema, tasks, labelled, version, "partal_image")
    assert seen and all(s == {"semantic": (32, 72), "parts": (32, 72)} for s in seen), seen
