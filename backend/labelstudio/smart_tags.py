"""Label Studio's smart (interactive) tags in a labeling config: tools for drawing another tag's labels,
never modalities (issue #31).

Label Studio's interactive templates put smart tags beside the tag they help, e.g.
``<RectangleLabels name="box_smart" toName="image" smart="true">`` and ``<KeyPointLabels name="kp"
toName="image" smart="true">`` next to a ``<BrushLabels>`` with the same labels. ``smart="true"`` shows
a smart tool beside the ordinary one, ``smartOnly="true"`` only the smart tool. A tag is a tool when

- it has ``smartOnly="true"``; or
- it has ``smart="true"`` and is a ``KeyPointLabels`` / ``EllipseLabels`` or an unlabelled ``Rectangle``
  / ``KeyPoint`` / ``Polygon`` / ``Brush`` / ``Ellipse`` (tags that are never modalities); or
- it has ``smart="true"``, is a supported labels tag (``RectangleLabels``, ``BrushLabels``,
  ``PolygonLabels``) and every one of its labels is a label of another, not smart, supported tag on the
  same image. A smart tag whose labels no other tag has stays a modality (its ordinary tool draws labels).

A tool's ``modalities`` are those whose tag has a label of the same name (an unlabelled tool: every
annotatable modality): the tags interactive pre-annotation answers in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SMART_ONLY_TAGS", "SmartTool", "smart_flag", "smart_tools", "split_smart"]

logger = logging.getLogger(__name__)
# tags that are tools whenever they are marked smart (never modalities)
SMART_ONLY_TAGS: tuple[str, ...] = ("KeyPointLabels", "EllipseLabels", "Rectangle", "KeyPoint", "Polygon", "Brush",
                                    "Ellipse")


@dataclass(frozen=True)
class SmartTool:
    """One smart (interactive) tag: a tool for drawing other tags' labels, not a modality.

    ``labels``: its label names (empty for an unlabelled ``Rectangle``/``KeyPoint``...);
    ``modalities``: the modalities whose tags have a label of the same name, in config order (every
    annotatable modality for an unlabelled tool); ``smart_only``: ``smartOnly="true"``."""

    name: str
    tag_type: str
    to_name: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    smart_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tag_type": self.tag_type, "to_name": self.to_name, "labels": list(self.labels),
                "modalities": list(self.modalities), "smart_only": self.smart_only}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SmartTool:
        return cls(**{**d, "labels": tuple(d["labels"]), "modalities": tuple(d["modalities"])})


def smart_flag(ctrl: Any) -> str | None:
    """``"only"`` for ``smartOnly="true"``, ``"smart"`` for ``smart="true"``, else None (attribute names and
    values case-insensitive, as Label Studio reads them)."""
    attrs = {str(k).lower(): str(v).strip().lower() for k, v in (ctrl.attr or {}).items()}
    if attrs.get("smartonly") == "true":
        return "only"
    return "smart" if attrs.get("smart") == "true" else None


def split_smart(supported: list[Any], smart: list[Any], background: str) -> tuple[list[Any], list[Any]]:
    """(modality tags, smart tools): the supported control tags (SDK controls) split by the rule in the module
    docstring, the tool-only smart tags ``smart`` added to the tools. ``background``: the label that is not a
    class name."""
    plain = [c for c in supported if smart_flag(c) is None]
    plain_labels = {(c.to_name[0], lb) for c in plain for lb in c.labels}
    modal, tools = [], list(smart)
    for ctrl in supported:
        flag = smart_flag(ctrl)
        own = {lb for lb in ctrl.labels if lb != background}
        if flag == "only" or (flag == "smart" and own and all((ctrl.to_name[0], lb) in plain_labels for lb in own)):
            tools.append(ctrl)
        else:
            modal.append(ctrl)
    return modal, tools


def smart_tools(tools: list[Any], modality_labels: Mapping[str, tuple[str, ...]],
                image_tag: str) -> dict[str, SmartTool]:
    """The smart tools (SDK controls) on the modalities' image, each with the modalities its labels belong to.
    ``modality_labels``: annotatable modality -> its tag's labels, in config order."""
    out: dict[str, SmartTool] = {}
    for ctrl in tools:
        to_name = (ctrl.to_name or [""])[0]
        if to_name != image_tag:
            logger.warning("labeling config: smart <%s name=%r> points at %r, not at the labelled image %r; ignored",
                           ctrl.tag, ctrl.name, to_name, image_tag)
            continue
        labels = tuple(ctrl.labels or ())
        if labels:
            mods = tuple(m for m, own in modality_labels.items() if set(labels) & set(own))
        else:
            mods = tuple(modality_labels)
        if not mods:
            logger.warning("labeling config: smart <%s name=%r>: no modality has its labels %s; its regions are "
                           "ignored", ctrl.tag, ctrl.name, list(labels))
        out[ctrl.name] = SmartTool(ctrl.name, ctrl.tag, to_name, labels, mods, smart_flag(ctrl) == "only")
    return out
