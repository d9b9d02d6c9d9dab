"""Label Studio labeling config -> the project's modalities (:class:`ProjectSchema`).

Rules (see ``docs/labeling.md`` for the user-facing version):

- Exactly one ``<Image>`` carries the annotations; every supported control tag must point at it.
- ``<BrushLabels>`` / ``<PolygonLabels>``: one *segmentation* modality named after the tag, classes
  ``["background", *labels]`` (a label literally named ``background`` is class 0, not a duplicate).
  A BrushLabels and a PolygonLabels tag stay two modalities even with the same labels (no merge).
- ``<RectangleLabels>``: one *detection* modality named after the tag, classes = its labels.
- Depth / surface normals (ground truth from sensor data in the task, not from annotators): either the
  ``dense_fields`` mapping from settings (``{"depth": "depth_map"}``: modality name -> task data key),
  or an ``<Image>`` tag named ``depth`` or ``normals`` (prefix ``depth``/``normal``, e.g.
  ``depth_lidar``) that no control tag points at; its ``value="$key"`` gives the data key. Put it in a
  ``<View style="display: none">`` to hide it from annotators. The kind comes from the name prefix.
- A ``<Choices choice="multiple">`` whose choice values are all modality names is the
  labelled/requested-modalities tag (partial labels, DESIGN.md §3).
- Smart tools (Label Studio's interactive tags, ``smart="true"`` / ``smartOnly="true"``) are not
  modalities (:class:`SmartTool`): a tag with ``smartOnly``, a smart ``KeyPointLabels`` /
  ``EllipseLabels``, an unlabelled smart ``Rectangle`` / ``KeyPoint`` / ``Polygon`` / ``Brush`` /
  ``Ellipse``, and a smart ``RectangleLabels`` / ``BrushLabels`` / ``PolygonLabels`` whose labels are all
  labels of another (not smart) supported tag. A smart tag whose labels no other tag has stays a modality
  (``smart="true"`` keeps the ordinary tool too). A tool's ``modalities``: the modalities whose tags have
  a label of the same name (unlabelled tools: every annotatable modality). Their results are skipped in
  training and in the label counts; the schema's modalities are those of the config without them.
- Controls on a non-Image object (e.g. ``Labels`` on ``Text``) are errors; other controls on the image
  (KeyPointLabels, single Choices, TextArea, ...) are ignored with a warning, unless nothing supported
  is left, which is an error naming them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from backend.labelstudio.smart_tags import SMART_ONLY_TAGS, SmartTool, smart_flag, smart_tools, split_smart
from mtal_models.modalities import ModalitySpec, build_modalities

__all__ = [
    "BACKGROUND",
    "DETECTION_TAGS",
    "SEGMENTATION_TAGS",
    "LabelConfigError",
    "ProjectSchema",
    "SmartTool",
    "TagInfo",
    "dense_kind",
    "parse_label_config",
]

logger = logging.getLogger(__name__)
# hostile-input limits (see README "Reliability and security"), checked before the SDK parses anything
MAX_CONFIG_CHARS = 1_000_000
MAX_CONTROL_TAGS = 32
MAX_LABELS = 1000

BACKGROUND = "background"
SEGMENTATION_TAGS: tuple[str, ...] = ("BrushLabels", "PolygonLabels")
DETECTION_TAGS: tuple[str, ...] = ("RectangleLabels",)
SUPPORTED_TAGS: tuple[str, ...] = SEGMENTATION_TAGS + DETECTION_TAGS
# LS result "type" for each supported control tag
RESULT_TYPES: dict[str, str] = {t: t.lower() for t in SUPPORTED_TAGS}


class LabelConfigError(ValueError):
    """The labeling config cannot be used by this backend; the message names the offending tag."""


@dataclass(frozen=True)
class TagInfo:
    """One supported control tag. ``modality`` is the modality it annotates (its own name)."""

    name: str
    tag_type: str
    to_name: str
    image_key: str
    labels: tuple[str, ...]
    modality: str

    @property
    def result_type(self) -> str:
        """The ``type`` of this tag's results in LS JSON (e.g. ``"brushlabels"``)."""
        return self.tag_type.lower()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tag_type": self.tag_type,
            "to_name": self.to_name,
            "image_key": self.image_key,
            "labels": list(self.labels),
            "modality": self.modality,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TagInfo:
        return cls(**{**d, "labels": tuple(d["labels"])})


@dataclass(frozen=True)
class ProjectSchema:
    """Everything the backend needs to know about one project's labeling config.

    ``tags`` holds the supported control tags (name -> info); ``dense_fields`` maps depth/normals
    modalities to their task data key; ``network`` is ``"detseg"`` when a detection modality exists,
    else ``"padnet"``; ``smart_tools`` the smart tags (name -> :class:`SmartTool`), none of them a
    modality.
    """

    modalities: dict[str, ModalitySpec]
    tags: dict[str, TagInfo]
    choices_tag: str | None
    dense_fields: dict[str, str]
    image_key: str
    network: str
    config_hash: str
    image_tag: str = ""
    smart_tools: dict[str, SmartTool] = field(default_factory=dict)
    _label_index: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {m: {c: i for i, c in enumerate(self.class_names(m))} for m in self.modalities}
        object.__setattr__(self, "_label_index", index)

    def class_names(self, modality: str) -> list[str]:
        """Class names by class id: segmentation ``["background", *labels]``, detection its labels,
        depth/normals ``[]``."""
        spec = self._spec(modality)
        tag = self.tags.get(modality)
        if tag is None or spec.kind not in ("segmentation", "detection"):
            return []
        if spec.kind == "segmentation":
            return [BACKGROUND, *[lb for lb in tag.labels if lb != BACKGROUND]]
        return list(tag.labels)

    def class_index(self, modality: str, label: str) -> int | None:
        """Class id of ``label`` in ``modality`` (None if unknown)."""
        self._spec(modality)
        return self._label_index.get(modality, {}).get(label)

    @property
    def annotatable(self) -> list[str]:
        """Modalities annotators draw (segmentation and detection), in config order."""
        return [m for m, s in self.modalities.items() if s.kind in ("segmentation", "detection")]

    def _spec(self, modality: str) -> ModalitySpec:
        if modality not in self.modalities:
            raise ValueError(f"unknown modality {modality!r}; valid: {list(self.modalities)}")
        return self.modalities[modality]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (round trips through :meth:`from_dict`)."""
        return {
            "modalities": [s.to_dict() for s in self.modalities.values()],
            "tags": [t.to_dict() for t in self.tags.values()],
            "choices_tag": self.choices_tag,
            "dense_fields": dict(self.dense_fields),
            "image_key": self.image_key,
            "image_tag": self.image_tag,
            "network": self.network,
            "config_hash": self.config_hash,
            "smart_tools": [t.to_dict() for t in self.smart_tools.values()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProjectSchema:
        tags = [TagInfo.from_dict(t) for t in d["tags"]]
        return cls(
            modalities=build_modalities(ModalitySpec.from_dict(s) for s in d["modalities"]),
            tags={t.name: t for t in tags},
            choices_tag=d.get("choices_tag"),
            dense_fields=dict(d.get("dense_fields", {})),
            image_key=d["image_key"],
            network=d["network"],
            config_hash=d["config_hash"],
            image_tag=d.get("image_tag", ""),
            smart_tools={t["name"]: SmartTool.from_dict(t) for t in d.get("smart_tools", [])},
        )


def dense_kind(name: str) -> str | None:
    """``"depth"`` / ``"normals"`` from a modality name prefix (``depth*``, ``normal*``), else None."""
    low = name.lower()
    if low.startswith("depth"):
        return "depth"
    if low.startswith("normal"):
        return "normals"
    return None


def _data_key(value: str | None, tag: str) -> str:
    if not value or not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={tag!r}>: value must be a data reference like '$image', not {value!r}")
    return value[1:]


def config_hash(xml: str, dense_fields: Mapping[str, str] | None = None) -> str:
    """sha256 of the canonical XML (comments and inter-tag whitespace dropped), plus ``dense_fields``
    when given (they change the modalities)."""
    try:
        canon = ET.canonicalize(xml, strip_text=True, with_comments=False)
    except ET.ParseError as e:
        raise LabelConfigError(f"labeling config is not valid XML: {e}") from e
    if dense_fields:
        canon += "\n" + json.dumps(dict(sorted(dense_fields.items())), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def parse_label_config(xml: str, dense_fields: Mapping[str, str] | None = None) -> ProjectSchema:
    """Parse a Label Studio labeling config into a :class:`ProjectSchema`.

    ``dense_fields``: optional ``{modality name: task data key}`` for depth/normals targets (name
    prefix ``depth`` or ``normal`` fixes the kind). Raises :class:`LabelConfigError` (a ValueError
    naming the tag) for configs this backend cannot serve.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("labeling config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"labeling config of {len(xml)} characters exceeds the limit of {MAX_CONFIG_CHARS}")
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", xml, re.IGNORECASE):
        raise LabelConfigError("labeling config must not contain a DOCTYPE or ENTITY declaration")
    digest = config_hash(xml, dense_fields)
    try:
        li = LabelInterface(xml)
    except Exception as e:  # the SDK raises its own XML/validation errors
        raise LabelConfigError(f"labeling config cannot be parsed: {e}") from e
    objects = {o.name: o for o in li.objects}
    controls = {c.name: c for c in li.controls}
    images = {n: o for n, o in objects.items() if o.tag == "Image"}
    supported: list[Any] = []
    ignored: list[str] = []
    choice_candidates: list[Any] = []
    smart: list[Any] = []  # smart tags that can only be tools
    for name, ctrl in controls.items():
        targets = list(ctrl.to_name or [])
        if not targets:
            raise LabelConfigError(f"<{ctrl.tag} name={name!r}> has no toName")
        for t in targets:
            if t not in objects:
                raise LabelConfigError(f"<{ctrl.tag} name={name!r}> points at unknown object {t!r}")
            if objects[t].tag != "Image":
                raise LabelConfigError(
                    f"<{ctrl.tag} name={name!r}> labels <{objects[t].tag} name={t!r}>: "
                    "only <Image> objects are supported"
                )
        if ctrl.tag in SUPPORTED_TAGS:
            if len(targets) != 1:
                raise LabelConfigError(f"<{ctrl.tag} name={name!r}> must point at exactly one <Image>, got {targets}")
            supported.append(ctrl)
        elif ctrl.tag in SMART_ONLY_TAGS and smart_flag(ctrl) is not None:
            smart.append(ctrl)
        elif ctrl.tag == "Choices" and ctrl.attr.get("choice") == "multiple":
            choice_candidates.append(ctrl)
        else:
            ignored.append(f"<{ctrl.tag} name={name!r}>")
    if not images:
        raise LabelConfigError("labeling config has no <Image> object tag; only image projects are supported")
    supported, smart = split_smart(supported, smart, BACKGROUND)

    if not supported:
        what = ", ".join(ignored) if ignored else "no control tag"
        raise LabelConfigError(
            f"no supported control tag ({', '.join(SUPPORTED_TAGS)}) in the labeling config; found {what}"
        )

    image_tag = supported[0].to_name[0]
    for ctrl in supported[1:]:
        if ctrl.to_name[0] != image_tag:
            raise LabelConfigError(
                f"<{ctrl.tag} name={ctrl.name!r}> points at <Image name={ctrl.to_name[0]!r}> but "
                f"<{supported[0].tag} name={supported[0].name!r}> points at {image_tag!r}: all modalities "
                "must label one image"
            )
    image_key = _data_key(images[image_tag].value, image_tag)

    items: list[tuple[Any, ...]] = []
    tags: dict[str, TagInfo] = {}
    total_labels = sum(len(ctrl.labels) for ctrl in supported)
    if len(supported) > MAX_CONTROL_TAGS or total_labels > MAX_LABELS:
        raise LabelConfigError(
            f"labeling config has {len(supported)} control tags with {total_labels} labels; at most "
            f"{MAX_CONTROL_TAGS} tags and {MAX_LABELS} labels are supported (each label is a network output)"
        )
    for ctrl in supported:
        labels = tuple(ctrl.labels)
        if not labels or labels == (BACKGROUND,):
            raise LabelConfigError(f"<{ctrl.tag} name={ctrl.name!r}> has no <Label> (besides background)")
        if ctrl.tag in SEGMENTATION_TAGS:
            kind, channels = "segmentation", 1 + len([lb for lb in labels if lb != BACKGROUND])
        else:
            kind, channels = "detection", len(labels)
        items.append((ctrl.name, kind, channels))
        tags[ctrl.name] = TagInfo(ctrl.name, ctrl.tag, image_tag, image_key, labels, ctrl.name)

    dense = _dense_fields(images, controls, image_tag, dense_fields)
    for name in dense:
        if name in tags:
            raise LabelConfigError(f"dense field {name!r} clashes with <{tags[name].tag_type} name={name!r}>")
        items.append((name, dense_kind(name), 1 if dense_kind(name) == "depth" else 3))
    for leftover in sorted(set(images) - {image_tag} - set(dense)):
        logger.warning("labeling config: <Image name=%r> is not used by any supported control tag; ignored", leftover)
    for what in ignored:
        logger.warning("labeling config: %s is not supported by the MTAL backend; its results are ignored", what)

    try:
        modalities = build_modalities(items)
    except ValueError as e:
        raise LabelConfigError(f"labeling config: {e}") from e
    choices_tag = _choices_tag(choice_candidates, set(modalities))
    has_det = any(s.kind == "detection" for s in modalities.values())
    tools = smart_tools(smart, {m: t.labels for m, t in tags.items()}, image_tag)
    return ProjectSchema(
        modalities=modalities,
        tags=tags,
        choices_tag=choices_tag,
        dense_fields=dense,
        image_key=image_key,
        network="detseg" if has_det else "padnet",
        config_hash=digest,
        image_tag=image_tag,
        smart_tools=tools,
    )


def _dense_fields(
    images: Mapping[str, Any], controls: Mapping[str, Any], image_tag: str, settings: Mapping[str, str] | None
) -> dict[str, str]:
    """Depth/normals modalities: the settings mapping wins; else unreferenced ``<Image>`` tags whose
    name starts with ``depth`` / ``normal``."""
    out: dict[str, str] = {}
    if settings:
        for name, key in settings.items():
            if dense_kind(name) is None:
                raise LabelConfigError(
                    f"dense field {name!r}: the modality name must start with 'depth' or 'normal' to tell its kind"
                )
            if not isinstance(key, str) or not key:
                raise LabelConfigError(f"dense field {name!r}: task data key must be a non-empty string")
            out[name] = key.removeprefix("$")
        return out
    referenced = {t for c in controls.values() for t in (c.to_name or [])}
    for name, obj in images.items():
        if name != image_tag and name not in referenced and dense_kind(name) is not None:
            out[name] = _data_key(obj.value, name)
    return out


def _choices_tag(candidates: list[Any], modality_names: set[str]) -> str | None:
    """The multi-choice tag whose choices are all modality names (at most one)."""
    found: str | None = None
    for ctrl in candidates:
        values = list(ctrl.labels)
        if values and all(v in modality_names for v in values):
            if found is not None:
                raise LabelConfigError(
                    f"<Choices name={ctrl.name!r}>: a second modalities choices tag (first: {found!r}); keep one"
                )
            found = ctrl.name
        else:
            logger.warning(
                "labeling config: <Choices name=%r choice='multiple'> lists non-modality values; not used as the "
                "labelled-modalities tag (modalities: %s)",
                ctrl.name,
                sorted(modality_names),
            )
    return found
