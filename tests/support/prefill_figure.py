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

from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.label_config import ProjectSchema, parse_label_config
from tests.support.photo_project import PhotoProject
from tests.support.scene_project import CHOICES_TAG, SceneProject

__all__ = ["save_prefill_figure"]


def _labels(result: Sequence[Mapping[str, Any]], schema: ProjectSchema, h: int, w: int,
            offsets: Mapping[str, int]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(one colour map of all segmentation modalities [H, W]: each modality's classes but background
    shifted by ``offsets[m]``, later modalities painted over earlier ones; [(boxes [N, 4], labels [N])]
    per detection modality)."""
    got, _ = annotation_to_labels([r for r in result if r.get("from_name") != CHOICES_TAG], schema, h, w)
    sem = np.zeros((h, w), np.int64)
    boxes = []
    for m, spec in schema.modalities.items():
        if spec.kind == "segmentation":
            lab = np.asarray(got[m])
            drawn = (lab > 0) & (lab != spec.ignore_index)
            sem[drawn] = lab[drawn] + offsets[m]
        elif spec.kind == "detection":
            boxes.append((np.asarray(got[m]["boxes"]).reshape(-1, 4), np.asarray(got[m]["labels"]).reshape(-1)))
    return sem, boxes


def save_prefill_figure(path: Path, project: SceneProject | PhotoProject, indices: Sequence[int],
                        before: Mapping[int, Sequence[Mapping[str, Any]]],
                        after: Mapping[int, Sequence[Mapping[str, Any]]]) -> Path:
    """Write the PNG at ``path``: rows = tasks ``indices`` of ``project``; ``before`` / ``after``: the
    prediction ``result`` lists by task index. Segmentation modalities share one colour map (background
    uncoloured); pixels without a human label are black in the truth panel and left out of the repaint
    share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    schema = parse_label_config(project.label_config)
    seg = [m for m, spec in schema.modalities.items() if spec.kind == "segmentation"]
    det = [m for m, spec in schema.modalities.items() if spec.kind == "detection"]
    names, offsets = ["background"], {}
    for m in seg:
        offsets[m] = len(names) - 1
        names += schema.class_names(m)[1:]
    box_names = [schema.class_names(m) for m in det]
    cmap = plt.get_cmap("tab20", max(20, len(names)))
    h0, w0 = project.samples[indices[0]].image.shape[:2]
    fig, axes = plt.subplots(len(indices), 4, figsize=(11, 2.9 * len(indices) * h0 / w0 + 0.4), squeeze=False)
    for row, i in zip(axes, indices, strict=True):
        sample = project.samples[i]
        h, w = sample.image.shape[:2]
        truth_sem, truth_box = _labels(project.annotation_result(sample, project.modalities), schema, h, w, offsets)
        ignored = np.zeros((h, w), bool)
        for m in seg:
            mask = project.ignored(sample, m)
            ignored |= mask if mask is not None else False
        panels = [("image", None), ("prefill before training", before.get(i)),
                  ("prefill after training", after.get(i)), ("what the annotator wants", "truth")]
        for ax, (title, result) in zip(row, panels, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(sample.image, interpolation="nearest")
            if result is None:
                ax.set_title(title if title == "image" else f"{title}: none", fontsize=9)
                continue
            sem, box = (truth_sem, truth_box) if result == "truth" else _labels(result, schema, h, w, offsets)
            colours = cmap(sem)
            colours[..., 3] = np.where(sem > 0, 0.55, 0.0)
            if result == "truth":
                colours[ignored] = (0, 0, 0, 1)
            ax.imshow(colours, interpolation="nearest")
            for (b, c), cls_names in zip(box, box_names, strict=True):
                for bb, cc in zip(b, c, strict=True):
                    ax.add_patch(Rectangle((bb[0], bb[1]), bb[2] - bb[0], bb[3] - bb[1], fill=False, lw=1.5,
                                           color="white"))
                    ax.text(bb[0], bb[1], cls_names[int(cc)], fontsize=6, color="black", va="bottom",
                            bbox={"facecolor": "white", "pad": 0.5, "lw": 0})
            if result != "truth":
                repaint = float(((sem != truth_sem) & ~ignored).sum() / max(1, (~ignored).sum()))
                n_boxes = sum(len(c) for _, c in box)
                title = f"{title}\n{repaint:.0%} px to repaint" + (f", {n_boxes} boxes" if det else "")
            ax.set_title(title, fontsize=9)
    handles = [Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(1, len(names))]
    fig.legend(handles, names[1:], loc="lower center", ncol=min(len(names) - 1, 9), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
