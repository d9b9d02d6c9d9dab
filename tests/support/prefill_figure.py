"""A before / after picture of the prefill Label Studio shows (the README's figure, ``make demo --figure``).

One row per task: the image, the prefill of the initial version, the prefill of the trained version
(semantic regions as colours, boxes as rectangles with their class) and the exact labels, each
prefill titled with its pixels to repaint and boxes to delete / draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backend.convert import annotation_to_labels
from backend.labeling import parse_label_config
from tests.support.scene_project import CHOICES_TAG, SceneProject, annotation_result

__all__ = ["save_prefill_figure"]


def _labels(result: Sequence[Mapping[str, Any]], schema: Any, h: int, w: int) -> tuple[np.ndarray, dict]:
    got, _ = annotation_to_labels([r for r in result if r.get("from_name") != CHOICES_TAG], schema, h, w)
    sem = np.asarray(got["semantic"])
    if (sem == schema.modalities["semantic"].ignore_index).all():
        sem = np.zeros((h, w), np.int64)
    return sem, got["objects"]


def save_prefill_figure(path: Path, project: SceneProject, indices: Sequence[int],
                        before: Mapping[int, Sequence[Mapping[str, Any]]],
                        after: Mapping[int, Sequence[Mapping[str, Any]]]) -> Path:
    """Write the PNG at ``path``: rows = tasks ``indices`` of ``project``; ``before`` / ``after``: the
    prediction ``result`` lists by task index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    schema = parse_label_config(project.label_config)
    names = schema.class_names("semantic")
    box_names = schema.class_names("objects")
    cmap = plt.get_cmap("tab20", max(20, len(names)))
    fig, axes = plt.subplots(len(indices), 4, figsize=(11, 2.9 * len(indices)), squeeze=False)
    for row, i in zip(axes, indices, strict=True):
        sample = project.samples[i]
        h, w = sample.image.shape[:2]
        truth_sem, truth_box = _labels(annotation_result(project, sample, ["semantic", "objects"]), schema, h, w)
        panels = [("image", None), ("prefill before training", before.get(i)),
                  ("prefill after training", after.get(i)), ("what the annotator wants", "truth")]
        for ax, (title, result) in zip(row, panels, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if result is None:
                ax.imshow(sample.image, interpolation="nearest")
                ax.set_title(title if title == "image" else f"{title}: none", fontsize=9)
                continue
            sem, box = (truth_sem, truth_box) if result == "truth" else _labels(result, schema, h, w)
            ax.imshow(sample.image, interpolation="nearest")
            ax.imshow(sem, cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.55, interpolation="nearest")
            for b, c in zip(np.asarray(box["boxes"]).reshape(-1, 4), np.asarray(box["labels"]).reshape(-1),
                            strict=True):
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.5, color="white"))
                ax.text(b[0], b[1], box_names[int(c)], fontsize=6, color="black", va="bottom",
                        bbox={"facecolor": "white", "pad": 0.5, "lw": 0})
            if result != "truth":
                repaint = float((sem != truth_sem).mean())
                title = f"{title}\n{repaint:.0%} px to repaint, {len(box['labels'])} boxes"
            ax.set_title(title, fontsize=9)
    handles = [Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 9), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
