"""Procedural multi-task scenes: a room with random objects, rendered with exact labels for every modality.

A scene is a room (floor, walls, ceiling) holding objects drawn from a class set. Each object class has
a shape (sphere, box, cylinder, or a panel hung on the back wall), a colour, a procedural texture and a
frequency weight, so some classes are rare but still learnable (distinct colour and shape). Scene types
(normal, dark, cluttered by default) are drawn with their own probabilities, so rare conditions exist
for active learning to find. Everything is seeded: one ``(seed, index)`` always gives the same bytes.

Modalities (see :func:`scene_modalities`):

- ``semantic`` segmentation: stuff classes (floor, wall, ceiling) then the object classes
- ``parts`` segmentation: 0 = not an object, 1 = upper half of an object, 2 = lower half
- ``saliency`` binary: 1 on objects
- ``edges`` binary (metric odsF): 1 on pixels whose 4-neighbour belongs to another surface
- ``depth`` z-depth in metres; ``normals`` camera-frame unit normals (x right, y down, z to camera)
- ``objects`` detection: tight boxes around each visible object's pixels, labels = object class index
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtal_models.data.render import Camera, Primitive, cast
from mtal_models.data.sample import Sample
from mtal_models.modalities import ModalitySpec, build_modalities

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_SCENE_TYPES",
    "STUFF_CLASSES",
    "ObjectClass",
    "Scene",
    "SceneConfig",
    "SceneType",
    "SyntheticDataset",
    "render_scene",
    "scene_modalities",
]

STUFF_CLASSES: tuple[str, ...] = ("floor", "wall", "ceiling")
SHAPES = ("sphere", "box", "cylinder", "panel")
TEXTURES = ("plain", "checker", "stripes", "noise", "dots")


@dataclass(frozen=True)
class ObjectClass:
    """An object class: ``size`` = range of the half width (m), ``aspect`` = range of height / width."""

    name: str
    shape: str
    color: tuple[float, float, float]
    texture: str = "plain"
    weight: float = 1.0
    size: tuple[float, float] = (0.2, 0.4)
    aspect: tuple[float, float] = (0.8, 1.2)
    glow: float = 0.0  # extra emissive light, makes a class stand out even in dark scenes

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"object class {self.name!r}: unknown shape {self.shape!r}; valid: {SHAPES}")
        if self.texture not in TEXTURES:
            raise ValueError(f"object class {self.name!r}: unknown texture {self.texture!r}; valid: {TEXTURES}")
        if self.weight <= 0:
            raise ValueError(f"object class {self.name!r}: weight must be > 0, got {self.weight}")


@dataclass(frozen=True)
class SceneType:
    """A scene condition drawn with probability ∝ ``weight``: light scale, object-count scale."""

    name: str
    weight: float
    light: float = 1.0
    clutter: float = 1.0


DEFAULT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("ball", "sphere", (0.85, 0.15, 0.10), "plain", 1.0, (0.2, 0.4)),
    ObjectClass("crate", "box", (0.60, 0.38, 0.16), "stripes", 1.0, (0.25, 0.5), (0.6, 1.2)),
    ObjectClass("cube", "box", (0.20, 0.70, 0.25), "checker", 0.8, (0.18, 0.35), (1.6, 2.2)),
    ObjectClass("can", "cylinder", (0.15, 0.30, 0.85), "stripes", 0.8, (0.12, 0.28), (1.0, 2.0)),
    ObjectClass("pillar", "cylinder", (0.85, 0.85, 0.80), "noise", 0.5, (0.12, 0.25), (4.0, 7.0)),
    ObjectClass("poster", "panel", (0.95, 0.80, 0.20), "checker", 0.6, (0.3, 0.8), (0.5, 1.0)),
    ObjectClass("lamp", "sphere", (0.95, 0.25, 0.90), "dots", 0.05, (0.12, 0.22), glow=0.6),
    ObjectClass("vase", "cylinder", (0.10, 0.80, 0.75), "checker", 0.06, (0.1, 0.18), (2.5, 3.5)),
)
DEFAULT_SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType("normal", 0.86),
    SceneType("dark", 0.07, light=0.3),
    SceneType("cluttered", 0.07, clutter=2.5),
)


@dataclass(frozen=True)
class SceneConfig:
    """Generator knobs.

    ``objects``: (min, max) object count before the scene type's clutter scale; ``occlusion`` in [0, 1]:
    probability that a new object is placed behind an earlier one on the same line of sight; ``noise``:
    std of Gaussian pixel noise as a fraction of 255; ``min_box_pixels``: objects with fewer visible
    pixels get no box (they stay in the dense maps).
    """

    height: int = 128
    width: int = 128
    objects: tuple[int, int] = (3, 8)
    classes: tuple[ObjectClass, ...] = DEFAULT_CLASSES
    scene_types: tuple[SceneType, ...] = DEFAULT_SCENE_TYPES
    occlusion: float = 0.3
    noise: float = 0.02
    min_box_pixels: int = 6
    fov_deg: float = 60.0

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"scene size must be >= 8x8, got {self.height}x{self.width}")
        if not 0 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be (min, max) with 0 <= min <= max, got {self.objects}")
        if not self.classes:
            raise ValueError("classes: at least one object class is required")
        if len({c.name for c in self.classes}) != len(self.classes):
            raise ValueError("classes: object class names must be unique")
        if len(self.classes) + len(STUFF_CLASSES) > 254:
            raise ValueError("classes: at most 251 object classes (labels are stored as uint8 PNGs)")
        if not self.scene_types or any(t.weight <= 0 for t in self.scene_types):
            raise ValueError("scene_types: need at least one type, all weights > 0")
        if not 0.0 <= self.occlusion <= 1.0:
            raise ValueError(f"occlusion must be in [0, 1], got {self.occlusion}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    @property
    def semantic_names(self) -> list[str]:
        return [*STUFF_CLASSES, *(c.name for c in self.classes)]


def scene_modalities(config: SceneConfig | None = None) -> list[tuple]:
    """ModalitySpec tuples for :func:`mtal_models.modalities.build_modalities`."""
    config = config or SceneConfig()
    k = len(config.classes)
    return [
        ("semantic", "segmentation", len(STUFF_CLASSES) + k),
        ("parts", "segmentation", 3),
        ("saliency", "binary", 1),
        ("edges", "binary", 1, {"metric": "odsf"}),
        ("depth", "depth", 1),
        ("normals", "normals", 3),
        ("objects", "detection", k),
    ]


def scene_class_names(config: SceneConfig | None = None) -> dict[str, list[str]]:
    """Class names by class id of the categorical modalities (what a labeling config would call them):
    ``semantic`` stuff then objects, ``parts`` background/top/bottom, ``objects`` the object classes."""
    config = config or SceneConfig()
    return {"semantic": config.semantic_names, "parts": ["background", "top", "bottom"],
            "objects": [c.name for c in config.classes]}


@dataclass
class Scene:
    """A rendered scene: ``image`` uint8 [H, W, 3], ``labels`` in :class:`Sample` formats, ``instances``
    int32 [H, W] (0 = none, k = object of ``labels["objects"]`` row k-1), ``scene_type`` name."""

    image: np.ndarray
    labels: dict
    instances: np.ndarray
    scene_type: str
    object_classes: list[int] = field(default_factory=list)

    def sample(self, sample_id: str) -> Sample:
        return Sample(sample_id, self.image, dict(self.labels), {k: True for k in self.labels})


# ---- layout ------------------------------------------------------------------------------------------
@dataclass
class _Obj:
    prim: Primitive
    cls: int
    top: float  # world y of the top (y down)
    bottom: float


def _layout(cfg: SceneConfig, rng: np.random.Generator, clutter: float) -> tuple[dict, list[_Obj]]:
    room = {
        "cam_h": rng.uniform(1.2, 1.7),
        "ceil": rng.uniform(2.6, 3.2),
        "depth": rng.uniform(5.0, 8.0),
        "half_w": rng.uniform(2.5, 4.0),
        "pitch": rng.uniform(0.1, 0.35),
    }
    weights = np.array([c.weight for c in cfg.classes], np.float64)
    lo, hi = cfg.objects
    n = int(round(rng.integers(lo, hi + 1) * clutter))
    objs: list[_Obj] = []
    footprints: list[tuple[float, float, float]] = []
    floor, back = room["cam_h"], room["depth"]
    for _ in range(n):
        ci = int(rng.choice(len(weights), p=weights / weights.sum()))
        c = cfg.classes[ci]
        s = rng.uniform(*c.size)
        a = rng.uniform(*c.aspect)
        if c.shape == "panel":
            hx, hy = s, s * a
            yc = floor - rng.uniform(1.0, 1.9)
            xc = rng.uniform(-room["half_w"] + hx, room["half_w"] - hx)
            prim = Primitive("panel", np.array([xc, yc, back - 0.02 - 0.001 * len(objs)]), half=np.array([hx, hy]))
            objs.append(_Obj(prim, ci, yc - hy, yc + hy))
            continue
        for _try in range(12):
            if footprints and rng.random() < cfg.occlusion:  # hide behind an earlier object
                fx, fz, fr = footprints[int(rng.integers(len(footprints)))]
                z = fz + fr + s + rng.uniform(0.2, 1.5)
                x = fx * z / fz + rng.uniform(-0.3, 0.3)
            else:
                z = rng.uniform(1.6, back - 0.4)
                x = rng.uniform(-1, 1) * (room["half_w"] - s) * min(1.0, z / 4.0)
            fits = abs(x) < room["half_w"] - s * 1.5 and z < back - s * 1.5
            if fits and all((x - fx) ** 2 + (z - fz) ** 2 > (s * 1.45 + fr) ** 2 for fx, fz, fr in footprints):
                break
        else:
            continue
        if c.shape == "sphere":
            prim = Primitive("sphere", np.array([x, floor - s, z]), radius=s)
            top, r = floor - 2 * s, s
        elif c.shape == "box":
            half = np.array([s, s * a, s * rng.uniform(0.7, 1.0)])
            prim = Primitive("box", np.array([x, floor - half[1], z]), half=half, yaw=rng.uniform(-0.8, 0.8))
            top, r = floor - 2 * half[1], s * 1.42
        else:
            hh = min(s * a, (room["ceil"] - 0.05) / 2)
            prim = Primitive("cylinder", np.array([x, floor - hh, z]), radius=s, half=np.array([hh]))
            top, r = floor - 2 * hh, s
        footprints.append((x, z, r))
        objs.append(_Obj(prim, ci, top, floor))
    return room, objs


# ---- shading -----------------------------------------------------------------------------------------
def _texture(kind: str, p: np.ndarray, freq: float) -> np.ndarray:
    """Albedo multiplier in [0.5, 1] at world points ``p`` [n, 3] (object-local coordinates)."""
    if kind == "plain":
        return np.ones(len(p), np.float32)
    q = p * freq
    if kind == "checker":
        return 0.6 + 0.4 * (np.floor(q).astype(np.int64).sum(1) % 2)
    if kind == "stripes":
        return 0.65 + 0.35 * (np.sin(q[:, 1] * 2.0) > 0)
    if kind == "dots":
        frac = q - np.floor(q) - 0.5
        return np.where((frac**2).sum(1) < 0.12, 0.55, 1.0)
    return 0.8 + 0.2 * np.sin(q[:, 0] * 2.3 + q[:, 1] * 1.7) * np.sin(q[:, 2] * 3.1 - q[:, 1] * 2.9)


def _shade(cfg: SceneConfig, rng: np.random.Generator, hits, d: np.ndarray, surfs: list, light: float) -> np.ndarray:
    pts = hits.depth[:, None] * d
    ldir = np.array([rng.uniform(-0.6, 0.6), -1.0, rng.uniform(-0.8, 0.2)])
    ldir /= np.linalg.norm(ldir)
    lamb = np.clip(hits.normal @ ldir.astype(np.float32), 0, None)
    ambient = rng.uniform(0.45, 0.6) * light
    diffuse = rng.uniform(0.45, 0.65) * light
    tint = rng.uniform(0.85, 1.0, 3) if light >= 1 else np.array([1.0, 0.8, 0.6])
    rgb = np.zeros((len(d), 3), np.float32)
    for k, (color, tex, freq, glow, center) in enumerate(surfs):
        m = hits.surface == k
        if not m.any():
            continue
        alb = _texture(tex, pts[m] - center, freq)[:, None] * np.asarray(color, np.float32)
        rgb[m] = alb * ((ambient + glow) + diffuse * lamb[m, None]) * tint
    if cfg.noise > 0:
        rgb += rng.normal(0, cfg.noise, rgb.shape).astype(np.float32)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---- labels ------------------------------------------------------------------------------------------
def _edges(surface: np.ndarray) -> np.ndarray:
    e = np.zeros(surface.shape, bool)
    dy = surface[1:] != surface[:-1]
    dx = surface[:, 1:] != surface[:, :-1]
    e[1:] |= dy
    e[:-1] |= dy
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    return e


def render_scene(config: SceneConfig, seed: int | np.random.SeedSequence) -> Scene:
    """Render one scene deterministically from ``seed`` (an int or a SeedSequence)."""
    rng = np.random.default_rng(seed)
    cfg = config
    tw = np.array([t.weight for t in cfg.scene_types], np.float64)
    stype = cfg.scene_types[int(rng.choice(len(tw), p=tw / tw.sum()))]
    room, objs = _layout(cfg, rng, stype.clutter)
    cam = Camera(cfg.height, cfg.width, cfg.fov_deg, room["pitch"])
    d = cam.rays()
    floor_c = rng.uniform(0.35, 0.6, 3)
    wall_c = rng.uniform(0.55, 0.85, 3)
    room_prims = [
        (Primitive("plane", axis=1, offset=room["cam_h"]), 0, (floor_c, "checker", 1.2, 0.0)),
        (Primitive("plane", axis=1, offset=room["cam_h"] - room["ceil"]), 2, (wall_c * 1.1, "plain", 1.0, 0.0)),
        (Primitive("plane", axis=2, offset=room["depth"]), 1, (wall_c, "noise", 0.8, 0.0)),
        (Primitive("plane", axis=0, offset=-room["half_w"]), 1, (wall_c * 0.95, "noise", 0.8, 0.0)),
        (Primitive("plane", axis=0, offset=room["half_w"]), 1, (wall_c * 0.9, "noise", 0.8, 0.0)),
    ]
    prims = [p for p, _, _ in room_prims] + [o.prim for o in objs]
    surfs = [(*s, np.zeros(3, np.float32)) for _, _, s in room_prims]
    for o in objs:
        c = cfg.classes[o.cls]
        surfs.append((np.asarray(c.color), c.texture, 6.0 / max(c.size[1], 1e-3), c.glow, o.prim.center))
    hits = cast(prims, cam, d)
    if (hits.surface < 0).any():  # cannot happen inside a closed room; guard against degenerate configs
        raise ValueError("render: some rays hit no surface (room not closed)")
    h, w = cfg.height, cfg.width
    image = _shade(cfg, rng, hits, d, surfs, stype.light).reshape(h, w, 3)
    n_room = len(room_prims)
    sem_of = np.array([s for _, s, _ in room_prims] + [len(STUFF_CLASSES) + o.cls for o in objs], np.int64)
    surface = hits.surface.reshape(h, w)
    semantic = sem_of[surface]
    inst_full = np.where(surface >= n_room, surface - n_room + 1, 0)
    pts_y = (hits.depth[:, None] * d)[:, 1].reshape(h, w)
    mid = np.array([0.0] * n_room + [(o.top + o.bottom) / 2 for o in objs])[surface]
    parts = np.where(inst_full > 0, np.where(pts_y < mid, 1, 2), 0).astype(np.int64)
    normals = (hits.normal @ cam.rotation().astype(np.float32)).reshape(h, w, 3)  # world -> camera frame
    normals[..., 2] *= -1  # stored z points towards the camera
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)

    boxes, labels = [], []
    instances = np.zeros((h, w), np.int32)
    for j, o in enumerate(objs):
        ys, xs = np.nonzero(inst_full == j + 1)
        if len(ys) < cfg.min_box_pixels:
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(o.cls)
        instances[inst_full == j + 1] = len(boxes)
    label_dict = {
        "semantic": semantic,
        "parts": parts,
        "saliency": (inst_full > 0).astype(np.uint8),
        "edges": _edges(surface).astype(np.uint8),
        "depth": hits.depth.reshape(h, w).astype(np.float32),
        "normals": normals.astype(np.float32),
        "objects": {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64)},
    }
    return Scene(image, label_dict, instances, stype.name, [o.cls for o in objs])


class SyntheticDataset:
    """``n`` scenes rendered on demand; scene ``i`` comes from ``SeedSequence([seed, i])``.

    ``dataset[i]`` is a :class:`Sample` with id ``f"{i:06d}"`` and every modality present.
    """

    def __init__(self, n: int, config: SceneConfig | None = None, seed: int = 0) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = int(n)
        self.config = config or SceneConfig()
        self.seed = int(seed)
        self.modalities: dict[str, ModalitySpec] = build_modalities(scene_modalities(self.config))

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int) -> Scene:
        if not -self.n <= i < self.n:
            raise IndexError(f"scene index {i} out of range for {self.n} scenes")
        i %= self.n
        return render_scene(self.config, np.random.SeedSequence([self.seed, i]))

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        return self.scene(i).sample(f"{i % max(self.n, 1):06d}")

    @property
    def ids(self) -> list[str]:
        return [f"{i:06d}" for i in range(self.n)]
