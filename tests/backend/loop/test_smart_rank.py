"""A project whose config has smart tags sets up, trains and ranks exactly as the same config without them
(issue #31, item 1): same version, same samples from the same annotations, same weights, same ranking and
the same predictions pushed. The smart tools' own regions are in the annotations, as Label Studio saves them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.labelstudio.tasks import prepare_tasks
from backend.loop.rank_pass import rank_tasks
from backend.loop.train_round import train_version
from backend.serving.model import MTALModel, load_schema
from backend.serving.store import ModelStore
from mtal_models.training import load_checkpoint
from tests.backend.loop.test_rank_contract import SIZE, Ctx, RecordingLS, _project, _settings


def _with_smart_tags(config: str, tasks: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The config plus a smart rectangle (the detection labels) and smart keypoints (the semantic labels),
    and every annotation plus what those tools leave in it: a box and a keypoint per drawn rectangle."""
    schema = load_schema(config)
    rect = "".join(f'<Label value="{lb}"/>' for lb in schema.tags["objects"].labels)
    points = "".join(f'<Label value="{lb}" smart="true"/>' for lb in schema.tags["semantic"].labels)
    smart = (f'<RectangleLabels name="box_smart" toName="image" smart="true">{rect}</RectangleLabels>'
             f'<KeyPointLabels name="kp" toName="image" smart="true">{points}</KeyPointLabels>')
    tasks = copy.deepcopy(tasks)
    added = 0
    for task in tasks:
        for ann in task["annotations"]:
            extra = []
            for r in ann["result"]:
                if r["from_name"] == "objects":
                    extra.append({**r, "from_name": "box_smart", "id": f"s{added}"})
                    extra.append({**r, "from_name": "kp", "type": "keypointlabels", "is_positive": True,
                                  "value": {"x": r["value"]["x"], "y": r["value"]["y"], "width": 1,
                                            "keypointlabels": [schema.tags["semantic"].labels[-1]]}})
                    added += 1
            ann["result"] = extra + ann["result"]  # before the real regions: order must not matter either
    assert added > 0
    return config.replace("</View>", smart + "</View>"), tasks


def _train_and_rank(tmp: Path, config: str, tasks: list[dict[str, Any]], labelled: set[int],
                    fetcher: Any) -> dict[str, Any]:
    settings = _settings(tmp, "auto")
    store = ModelStore(tmp)
    initial = MTALModel("1", config, settings, store).setup()
    schema = load_schema(config)
    ctx = Ctx(settings, store, RecordingLS(), fetcher)
    samples = [p.sample for _, p in prepare_tasks(ctx, tasks, schema, SIZE) if p.labelled]
    version, _ = train_version(store, "1", schema, settings, samples, [])
    summary = rank_tasks(ctx, "1", schema, version, tasks, labelled)
    weights = load_checkpoint(store.checkpoint_path("1", version), map_location="cpu").model.state_dict()
    return {"schema": schema, "initial": initial, "version": version, "samples": samples, "summary": summary,
            "pushed": ctx.ls.pushed, "ranking": store.ranking("1"), "weights": weights}


def test_smart_tags_change_nothing_in_training_and_ranking(tmp_path: Path) -> None:
    config, tasks, labelled, fetcher = _project("detseg")
    smart_config, smart_tasks = _with_smart_tags(config, tasks)
    plain = _train_and_rank(tmp_path / "plain", config, tasks, labelled, fetcher)
    smart = _train_and_rank(tmp_path / "smart", smart_config, smart_tasks, labelled, fetcher)

    assert set(smart["schema"].smart_tools) == {"box_smart", "kp"}
    assert smart["schema"].modalities == plain["schema"].modalities and smart["schema"].network == "detseg"
    assert smart["summary"]["strategy"] == plain["summary"]["strategy"] == "boxmask"
    # versions are numbered alike (their suffix is random); the smart tags needed no new initial version
    assert [v.rsplit("-", 1)[0] for v in (smart["initial"], smart["version"])] == ["mtal-1-v1", "mtal-1-v2"]
    assert [v.rsplit("-", 1)[0] for v in (plain["initial"], plain["version"])] == ["mtal-1-v1", "mtal-1-v2"]
    assert [s.id for s in smart["samples"]] == [s.id for s in plain["samples"]] and len(plain["samples"]) == 4
    for a, b in zip(smart["samples"], plain["samples"], strict=True):
        assert a.present == b.present and a.labels.keys() == b.labels.keys()
        for m in a.labels:
            got, want = a.labels[m], b.labels[m]
            if isinstance(want, dict):
                assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
            else:
                assert np.array_equal(got, want)
    state_a, state_b = smart["weights"], plain["weights"]
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert smart["ranking"]["tasks"] == plain["ranking"]["tasks"]
    assert smart["ranking"]["model_version"] == smart["version"]
    assert [{**p, "model_version": None} for p in smart["pushed"]] == \
        [{**p, "model_version": None} for p in plain["pushed"]] and len(plain["pushed"]) == 6
