"""A worked example of a Label Studio project export, written by the project's own writers:

    python -m backend.labelstudio.synthetic_export OUT [--n 60] [--size 64] [--labelled 0.8] [--partial 0.5] [--seed 0]

Synthetic scenes go to OUT/data in the NYUD_MT layout with their ``tasks.json`` (:func:`mtal_models.data.write_nyud`,
:func:`mtal_models.data.write_tasks`: image, depth and normals URLs ``/data/local-files/?d=...``). Each task
then gets, with probability ``labelled``, one annotation whose result is the scene's exact labels written by
the backend's pre-annotation writer (:func:`backend.labelstudio.convert.predictions_to_results`: brush RLE, rectangles,
the modalities choices tag), covering every annotatable modality or, with probability ``partial``, a random
non-empty subset of them (partial labels). ``OUT/label_config.xml`` is the matching labeling config (semantic
and parts brushes, object rectangles, hidden depth / normals images), and ``OUT/export.json`` the export:
``mtal simulate --config ls-export --data-dir OUT`` reads it (:mod:`backend.labelstudio.export`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.labelstudio.convert import SegmentationArgmax, predictions_to_results
from backend.labelstudio.label_config import parse_label_config
from mtal_models.data import SceneConfig, SyntheticDataset, write_nyud, write_tasks
from mtal_models.data.synth import scene_class_names

__all__ = ["CHOICES_TAG", "example_label_config", "write_example_export"]

CHOICES_TAG = "mtal_labelled"
EXPORT_FILE = "export.json"
ANNOTATED = ("semantic", "parts", "objects")


def example_label_config(names: dict[str, list[str]]) -> str:
    """Semantic and parts brushes, object rectangles, the modalities choices tag, hidden depth and normals."""
    def labels(values: Sequence[str]) -> str:
        return "".join(f'<Label value="{v}"/>' for v in values if v != "background")

    choices = "".join(f'<Choice value="{m}"/>' for m in ANNOTATED)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="semantic" toName="image">{labels(names["semantic"])}</BrushLabels>'
        f'<BrushLabels name="parts" toName="image">{labels(names["parts"])}</BrushLabels>'
        f'<RectangleLabels name="objects" toName="image">{labels(names["objects"])}</RectangleLabels>'
        f'<Choices name="{CHOICES_TAG}" toName="image" choice="multiple">{choices}</Choices>'
        '<View style="display: none"><Image name="depth" value="$depth"/><Image name="normals" value="$normals"/>'
        "</View></View>"
    )


def write_example_export(out: str | Path, n: int = 60, size: int = 64, labelled: float = 0.8,
                         partial: float = 0.5, seed: int = 0) -> list[dict]:
    """Write the example project export to ``out`` (module docstring); returns the exported tasks."""
    out = Path(out)
    scene = SceneConfig(height=size, width=size)
    ds = SyntheticDataset(n, scene, seed=seed)
    samples = [ds[i] for i in range(n)]
    data = out / "data"  # the export folder holds one JSON file (the export): the dataset's go below it
    write_nyud(samples, data, ds.modalities)
    tasks = write_tasks(data, url_prefix="/data/local-files/?d=data/")
    names = scene_class_names(scene)
    xml = example_label_config(names)
    (out / "label_config.xml").write_text(xml)
    schema = parse_label_config(xml)
    rng = np.random.default_rng(seed)
    for k, (task, s) in enumerate(zip(tasks, samples, strict=True)):
        task["id"] = k + 1
        if rng.random() >= labelled:
            continue
        mods = list(ANNOTATED)
        if rng.random() < partial:
            mods = sorted(rng.choice(ANNOTATED, size=int(rng.integers(1, len(ANNOTATED))), replace=False).tolist())
        preds: dict[str, object] = {}
        for m in mods:
            if m == "objects":
                obj = s.labels["objects"]
                rows = np.zeros((len(obj["labels"]), 6), np.float32)
                rows[:, :4], rows[:, 4], rows[:, 5] = obj["boxes"], 1.0, obj["labels"]
                preds[m] = rows
            else:  # the brush config's class ids: "background" first (parts has it; semantic is shifted by 1)
                shift = 0 if names[m][0] == "background" else 1
                cls = np.asarray(s.labels[m]).astype(np.int32) + shift
                preds[m] = SegmentationArgmax(cls, np.ones(cls.shape, np.float32))
        result = predictions_to_results(preds, schema, size, size, requested=mods, min_score=0.0)
        task["annotations"] = [{"id": k + 1, "result": result, "was_cancelled": False}]
    (out / EXPORT_FILE).write_text(json.dumps(tasks))
    return tasks


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.labelstudio.synthetic_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--n", type=int, default=60, help="tasks (synthetic scenes)")
    p.add_argument("--size", type=int, default=64, help="image height and width (px)")
    p.add_argument("--labelled", type=float, default=0.8, help="share of tasks with an annotation")
    p.add_argument("--partial", type=float, default=0.5, help="share of annotations labelling only some modalities")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tasks = write_example_export(args.out, args.n, args.size, args.labelled, args.partial, args.seed)
    done = sum(1 for t in tasks if t.get("annotations"))
    print(f"wrote {args.out}/{EXPORT_FILE}: {len(tasks)} tasks, {done} annotated, and label_config.xml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
