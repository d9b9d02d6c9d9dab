"""Vectorised ray casting of analytic primitives: the renderer behind :mod:`mtal_models.data.synth`.

Coordinates. The camera sits at the world origin. World axes: x right, y **down**, z forward; the floor
is the plane ``y = cam_height``. The camera is pitched down by ``pitch`` radians about the x axis. One
unnormalised ray per pixel centre, ``d_cam = ((u + .5 - cx) / f, (v + .5 - cy) / f, 1)``, so the ray
parameter ``t`` of a hit is exactly its **z-depth** in the camera frame (what depth sensors report).

Surfaces: the room (floor, ceiling, back wall, left and right walls: axis-aligned planes), spheres, boxes
(yawed about the vertical axis), vertical cylinders standing on the floor, and flat panels on the back
wall. Every surface has an integer id; a z-buffer keeps the nearest hit per pixel. Normals come out of
the analytic surfaces and are expressed in the camera frame as stored in labels: x right, y down,
z towards the camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Camera", "Primitive", "Hits", "cast"]

_INF = np.float32(np.inf)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: image size, focal length (px) from the horizontal field of view, downward pitch."""

    height: int
    width: int
    fov_deg: float = 60.0
    pitch: float = 0.15

    @property
    def focal(self) -> float:
        return 0.5 * self.width / float(np.tan(np.radians(self.fov_deg) / 2))

    def rotation(self) -> np.ndarray:
        """3x3 camera-to-world rotation (columns: camera x, y, z axes in world coordinates)."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.array([[1, 0, 0], [0, c, s], [0, -s, c]], np.float64)

    def rays(self) -> np.ndarray:
        """World ray directions [H*W, 3] float32 (unnormalised; camera-frame z component = 1)."""
        f = self.focal
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        d = np.stack([(u + 0.5 - self.width / 2) / f, (v + 0.5 - self.height / 2) / f, np.ones_like(u)], -1)
        return (d.reshape(-1, 3) @ self.rotation().T.astype(np.float32)).astype(np.float32)


@dataclass
class Primitive:
    """One surface. ``kind``: plane | sphere | box | cylinder | panel.

    plane: ``axis`` (0/1/2), ``offset`` (plane at coordinate = offset), normal sign chosen to face the origin.
    sphere: ``center`` [3], ``radius``. box: ``center`` [3], ``half`` [3] half extents, ``yaw`` radians.
    cylinder: ``center`` [3] (centre of the axis), ``radius``, ``half`` [1] = half height. panel: a
    rectangle in the plane ``z = center[2]`` with half extents ``half`` [2] (x, y), facing the camera.
    """

    kind: str
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 0.0
    half: np.ndarray = field(default_factory=lambda: np.zeros(3))
    yaw: float = 0.0
    axis: int = 0
    offset: float = 0.0


@dataclass
class Hits:
    """Nearest hit per pixel (flattened, N = H*W): ``depth`` float32 [N] (inf = no hit), ``surface`` int32
    [N] (index into the primitive list, -1 = none), ``normal`` float32 [N, 3] world-frame unit normals."""

    depth: np.ndarray
    surface: np.ndarray
    normal: np.ndarray


def _plane(p: Primitive, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    comp = d[:, p.axis]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.float32(p.offset) / comp
    t = np.where(t > 0, t, _INF)
    n = np.zeros((1, 3), np.float32)
    n[0, p.axis] = -np.sign(p.offset)  # faces the origin, which lies inside the room
    return t, np.broadcast_to(n, d.shape)


def _sphere(p: Primitive, d: np.ndarray, dd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = p.center.astype(np.float32)
    b = d @ c  # half of -b in the usual quadratic
    cc = np.float32(c @ c - p.radius**2)
    disc = b * b - dd * cc
    hit = disc >= 0
    t = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) / dd, _INF)
    t = np.where(t > 0, t, _INF)
    n = (t[:, None] * d - c) / np.float32(p.radius)
    return t, n


def _box(p: Primitive, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cy, sy = np.float32(np.cos(p.yaw)), np.float32(np.sin(p.yaw))
    # world -> box local: rotate by -yaw about y (x, z plane)
    dl = np.stack([cy * d[:, 0] - sy * d[:, 2], d[:, 1], sy * d[:, 0] + cy * d[:, 2]], 1)
    c = p.center
    ol = np.array([-(cy * c[0] - sy * c[2]), -c[1], -(sy * c[0] + cy * c[2])], np.float32)
    h = p.half.astype(np.float32)
    dl = np.where(np.abs(dl) < 1e-9, np.float32(1e-9), dl)
    inv = 1.0 / dl
    t1 = (-h - ol) * inv
    t2 = (h - ol) * inv
    tmin = np.minimum(t1, t2)
    tnear = tmin.max(1)
    tfar = np.maximum(t1, t2).min(1)
    t = np.where((tnear <= tfar) & (tnear > 0), tnear, _INF)
    face = tmin.argmax(1)
    nl = np.zeros_like(dl)
    rows = np.arange(len(d))
    nl[rows, face] = -np.sign(dl[rows, face])
    n = np.stack([cy * nl[:, 0] + sy * nl[:, 2], nl[:, 1], -sy * nl[:, 0] + cy * nl[:, 2]], 1)
    return t.astype(np.float32), n


def _cylinder(p: Primitive, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cx, cyc, cz = (np.float32(v) for v in p.center)
    r, hh = np.float32(p.radius), np.float32(p.half[0])
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = d[:, 0] * cx + d[:, 2] * cz
    cc = cx * cx + cz * cz - r * r
    disc = b * b - a * cc
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, _INF)
        ys = ts * d[:, 1]
        ts = np.where((ts > 0) & (ys >= cyc - hh) & (ys <= cyc + hh), ts, _INF)
        top = cyc - hh  # y of the top cap (y points down)
        tc = np.where(d[:, 1] * top > 0, top / d[:, 1], _INF)  # cap seen from above only when below camera
    inside = (tc * d[:, 0] - cx) ** 2 + (tc * d[:, 2] - cz) ** 2 <= r * r
    tc = np.where(inside & (top > 0), tc, _INF)
    use_cap = tc < ts
    t = np.where(use_cap, tc, ts).astype(np.float32)
    n = np.stack([(ts * d[:, 0] - cx) / r, np.zeros_like(ts), (ts * d[:, 2] - cz) / r], 1)
    n[use_cap] = (0.0, -1.0, 0.0)
    return t, n


def _panel(p: Primitive, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.float32(p.center[2])
    t = z / d[:, 2]
    x, y = t * d[:, 0], t * d[:, 1]
    inside = (np.abs(x - p.center[0]) <= p.half[0]) & (np.abs(y - p.center[1]) <= p.half[1]) & (t > 0)
    t = np.where(inside, t, _INF).astype(np.float32)
    n = np.zeros((1, 3), np.float32)
    n[0, 2] = -1.0
    return t, np.broadcast_to(n, d.shape)


def _window(p: Primitive, cam: Camera) -> tuple[slice, slice] | None:
    """Conservative pixel window (rows, cols) of a bounded primitive, or None for unbounded/near ones."""
    if p.kind == "sphere":
        r = p.radius
    elif p.kind == "box":
        r = float(np.linalg.norm(p.half))
    elif p.kind == "cylinder":
        r = float(np.hypot(p.radius, p.half[0]))
    else:
        return None
    c = cam.rotation().T @ np.asarray(p.center, np.float64)  # camera frame
    corners = c + r * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64)
    if corners[:, 2].min() < 0.05:
        return None
    f = cam.focal
    u = f * corners[:, 0] / corners[:, 2] + cam.width / 2
    v = f * corners[:, 1] / corners[:, 2] + cam.height / 2
    c0, c1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 1, cam.width)
    r0, r1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 1, cam.height)
    return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else (slice(0, 0), slice(0, 0))


def _intersect(p: Primitive, d: np.ndarray, dd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if p.kind == "plane":
        return _plane(p, d)
    if p.kind == "sphere":
        return _sphere(p, d, dd)
    if p.kind == "box":
        return _box(p, d)
    if p.kind == "cylinder":
        return _cylinder(p, d)
    if p.kind == "panel":
        return _panel(p, d)
    raise ValueError(f"primitive: unknown kind {p.kind!r}")


def cast(prims: list[Primitive], cam: Camera, d: np.ndarray | None = None) -> Hits:
    """Z-buffer the primitives against the camera's rays ``d`` [H*W, 3] (default ``cam.rays()``).

    Bounded primitives are only tested against the rays inside their projected bounding square.
    """
    d = cam.rays() if d is None else d
    n_rays = len(d)
    depth = np.full(n_rays, _INF, np.float32)
    surface = np.full(n_rays, -1, np.int32)
    normal = np.zeros((n_rays, 3), np.float32)
    dd = np.einsum("ij,ij->i", d, d)
    grid = np.arange(n_rays).reshape(cam.height, cam.width)
    for k, p in enumerate(prims):
        win = _window(p, cam)
        idx = grid[win].ravel() if win is not None else None
        if idx is not None and idx.size == 0:
            continue
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if idx is None:
                t, n = _intersect(p, d, dd)
                best = depth
            else:
                t, n = _intersect(p, d[idx], dd[idx])
                best = depth[idx]
        hit = np.isfinite(t) & (t < best)
        sel = np.nonzero(hit)[0] if idx is None else idx[hit]
        depth[sel] = t[hit]
        surface[sel] = k
        normal[sel] = n[hit]
    return Hits(depth, surface, normal)
