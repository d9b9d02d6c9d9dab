"""The project's selection strategy: ``MTAL_STRATEGY`` resolved against its labeling config ("auto" per
network and modality count), and the configs a strategy cannot run refused with a clear error. A version
marked ``"pretrained"`` (the cold start's self-supervised version, trained on no label) is ranked by
TypiClust instead: its heads have never seen a label, so only its features mean something."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.labelstudio.label_config import ProjectSchema
from backend.settings import Settings
from mtal_models.strategies import Strategy, get_strategy
from mtal_models.strategies.mtc import det_to_seg_by_name

__all__ = ["COLD_START", "boxmask_modalities", "strategy_for"]

COLD_START = "typiclust"  # the strategy of a pretrained version (mtal_models/strategies/typiclust.py)


def strategy_for(settings: Settings, schema: ProjectSchema, version: Mapping[str, Any] | None = None) -> Strategy:
    """The project's strategy: ``MTAL_STRATEGY``, where "auto" means MTAL-WACV's combined score without
    its eq. 5 loss weights (``mtal_unweighted``, the best measured in the default simulation) for dense
    projects (PAD-Net) and MTC BoxMask, with boxes matched to segmentation classes by name, for projects
    with boxes. A config with a single modality has no task pairs, so no MTAL committee: "auto" is then
    PartAL's image-level MC-dropout entropy (``partal_image``). Raises ValueError for a strategy the
    config cannot run (checked whatever ``version`` is, so /setup refuses it before any ranking).

    version: the metadata of the version that will rank. Marked ``"pretrained"`` (only the cold start's
    version is: a training run drops the mark, backend/loop/train_round.py): TypiClust, with the first batch
    of ``MTAL_TRAIN_THRESHOLD`` images (10 when it is 0) in distinct clusters."""
    configured = _configured(settings, schema)
    if version is not None and version.get("pretrained"):
        return get_strategy(COLD_START, batch=settings.train_threshold or 10, seed=settings.seed)
    return configured


def _configured(settings: Settings, schema: ProjectSchema) -> Strategy:
    name = settings.strategy
    single = len(schema.modalities) < 2
    if name == "auto":
        name = "boxmask" if schema.network == "detseg" else "partal_image" if single else "mtal_unweighted"
    if name == "ll4al":
        raise ValueError("strategy 'll4al' needs its loss-prediction module trained with the network; "
                         "use it in the simulator (mtal simulate), not in the backend")
    if name == "boxmask" and schema.network != "detseg":
        raise ValueError("strategy 'boxmask' needs boxes and masks (a RectangleLabels tag and a segmentation tag)")
    if name.startswith("mtal") and name != "mtal_diversity" and schema.network != "padnet":
        raise ValueError(f"strategy {name!r} needs PAD-Net's committee (dense-only labeling configs)")
    if name.startswith("mtal") and name != "mtal_diversity" and single:
        raise ValueError(f"strategy {name!r} needs a committee of task pairs, so at least two modalities; this "
                         "config has one (use auto, partal_image, coreset or random)")
    if name == "boxmask":  # boxes are checked against the segmentation class of the same label name
        det, seg = boxmask_modalities(schema)
        return get_strategy(name, det=det, seg=seg, class_names={m: schema.class_names(m) for m in (det, seg)})
    return get_strategy(name)


def boxmask_modalities(schema: ProjectSchema) -> tuple[str, str]:
    """(detection, segmentation) modality BoxMask compares: the config's detection tag, and of its
    segmentation tags the one sharing the most label names with it (the first in config order on a tie)."""
    dets = [m for m, s in schema.modalities.items() if s.kind == "detection"]
    segs = [m for m, s in schema.modalities.items() if s.kind == "segmentation"]
    if len(dets) != 1 or not segs:
        raise ValueError(f"strategy 'boxmask' needs one detection and a segmentation tag; have {dets} and {segs}")
    boxes = schema.class_names(dets[0])
    shared = {m: int((det_to_seg_by_name(boxes, schema.class_names(m)) >= 0).sum()) for m in segs}
    return dets[0], max(segs, key=lambda m: (shared[m], -segs.index(m)))
