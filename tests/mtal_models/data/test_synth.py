"""Physics of the synthetic scenes: exact labels that agree with one another, and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mtal_models.data import SceneConfig, SyntheticDataset, collate, render_scene, scene_modalities
from mtal_models.data.render import Camera
from mtal_models.data.synth import STUFF_CLASSES, ObjectClass
from mtal_models.modalities import build_modalities

CFG = SceneConfig(height=64, width=64, objects=(4, 7), occlusion=0.5)


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(CFG, np.random.SeedSequence([7, i])) for i in range(6)]


def _interior(scene, radius: int = 1) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood lies on one surface (no edge, same semantic and instance)."""
    e = scene.labels["edges"].astype(bool)
    pad = np.pad(e, radius, constant_values=True)
    h, w = e.shape
    out = np.ones_like(e)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= ~pad[dy : dy + h, dx : dx + w]
    return out


def test_normals_are_unit_vectors_facing_the_camera(scenes):
    for s in scenes:
        n = s.labels["normals"]
        assert n.shape == (64, 64, 3) and n.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
        # z towards the camera: a visible surface never faces away from the viewing ray
        cam = Camera(64, 64, CFG.fov_deg)
        f = cam.focal
        v, u = np.mgrid[0:64, 0:64] + 0.5
        ray = np.stack([(u - 32) / f, (v - 32) / f, -np.ones_like(u)], -1)  # stored-frame direction to the camera
        assert (np.einsum("hwc,hwc->hw", n, ray) <= 1e-4).mean() > 0.99


def test_normals_agree_with_the_depth_gradient(scenes):
    """Back-project depth to 3-D points, take the cross product of the pixel tangents, compare."""
    f = Camera(64, 64, CFG.fov_deg).focal
    angles = []
    for s in scenes:
        z = s.labels["depth"].astype(np.float64)
        v, u = np.mgrid[0:64, 0:64] + 0.5
        p = np.stack([(u - 32) / f * z, (v - 32) / f * z, z], -1)  # camera frame, z forward
        du = (p[1:-1, 2:] - p[1:-1, :-2]) / 2
        dv = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2
        n = np.cross(du, dv)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n = np.where((n * p[1:-1, 1:-1]).sum(-1, keepdims=True) > 0, -n, n)  # face the camera
        n[..., 2] *= -1  # stored convention: z towards the camera
        ok = _interior(s)[1:-1, 1:-1]
        cos = (n * s.labels["normals"][1:-1, 1:-1]).sum(-1)[ok]
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    a = np.concatenate(angles)
    assert a.size > 5000
    assert np.median(a) < 1.0
    assert np.percentile(a, 95) < 8.0


def test_boxes_enclose_their_instance_masks(scenes):
    n_boxes = 0
    for s in scenes:
        det = s.labels["objects"]
        for k, (box, lab) in enumerate(zip(det["boxes"], det["labels"], strict=True), start=1):
            ys, xs = np.nonzero(s.instances == k)
            assert len(ys) >= CFG.min_box_pixels
            # tight: x2/y2 are exclusive pixel edges
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            # the instance's pixels carry its class in the semantic map and are salient
            assert (s.labels["semantic"][ys, xs] == len(STUFF_CLASSES) + lab).all()
            assert (s.labels["saliency"][ys, xs] == 1).all()
            n_boxes += 1
        assert ((s.instances > 0) <= (s.labels["saliency"] == 1)).all()
    assert n_boxes >= 10


def test_edges_lie_on_discontinuities(scenes):
    for s in scenes:
        e = s.labels["edges"].astype(bool)
        sem, ins, dep, nor = (s.labels["semantic"], s.instances, s.labels["depth"], s.labels["normals"])
        disc = np.zeros_like(e)
        for axis in (0, 1):
            sl_a = [slice(None)] * 2
            sl_b = [slice(None)] * 2
            sl_a[axis], sl_b[axis] = slice(1, None), slice(None, -1)
            a, b = tuple(sl_a), tuple(sl_b)
            jump = (sem[a] != sem[b]) | (ins[a] != ins[b])
            jump |= np.abs(dep[a] - dep[b]) > 0.05 * np.minimum(dep[a], dep[b])
            jump |= (nor[a] * nor[b]).sum(-1) < np.cos(np.radians(20))
            disc[a] |= jump
            disc[b] |= jump
        assert e.any()
        assert disc[e].mean() > 0.97  # edge pixels sit on a discontinuity (instance/semantic/depth/crease)
        labelled = np.zeros_like(e)  # every semantic or instance change is marked on both sides
        for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                     ((slice(None), slice(1, None)), (slice(None), slice(None, -1)))):
            jump = (sem[a] != sem[b]) | (ins[a] != ins[b])
            labelled[a] |= jump
            labelled[b] |= jump
        assert e[labelled].all()


def test_parts_split_objects_into_upper_and_lower(scenes):
    for s in scenes:
        parts, sal = s.labels["parts"], s.labels["saliency"]
        assert set(np.unique(parts)) <= {0, 1, 2}
        np.testing.assert_array_equal(parts > 0, sal == 1)
        for k in range(1, s.instances.max() + 1):
            ys, _ = np.nonzero((s.instances == k) & (parts == 1))
            yl, _ = np.nonzero((s.instances == k) & (parts == 2))
            if len(ys) > 5 and len(yl) > 5:
                assert ys.mean() < yl.mean()  # upper part is above the lower part in the image


def test_same_seed_same_bytes_other_seed_differs():
    a = SyntheticDataset(3, CFG, seed=1)
    b = SyntheticDataset(3, CFG, seed=1)
    c = SyntheticDataset(3, CFG, seed=2)
    for i in range(3):
        sa, sb, sc = a[i], b[i], c[i]
        assert sa.image.tobytes() == sb.image.tobytes()
        for k in ("semantic", "depth", "normals", "edges", "parts", "saliency"):
            assert sa.labels[k].tobytes() == sb.labels[k].tobytes()
        assert sa.labels["objects"]["boxes"].tobytes() == sb.labels["objects"]["boxes"].tobytes()
        assert sa.image.tobytes() != sc.image.tobytes()


def test_label_formats_match_the_modality_specs_and_collate():
    ds = SyntheticDataset(2, CFG, seed=0)
    specs = build_modalities(scene_modalities(CFG))
    assert specs == ds.modalities and specs["edges"].metric == "odsf"
    s = ds[0]
    assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
    assert s.labels["semantic"].max() < specs["semantic"].channels
    assert s.labels["saliency"].dtype == np.uint8
    assert (s.labels["depth"] > 0).all()
    det = s.labels["objects"]
    assert det["boxes"].dtype == np.float32 and det["labels"].dtype == np.int64
    assert det["labels"].max() < specs["objects"].channels
    batch = collate([ds[0], ds[1]], specs)
    assert batch.images.shape == (2, 3, 64, 64)
    assert all(batch.labels.present[k].all() for k in specs)


def test_rare_classes_and_scene_types_are_rare_but_present():
    cfg = SceneConfig(height=24, width=24, objects=(6, 8), noise=0.0)
    ds = SyntheticDataset(150, cfg, seed=3)
    classes = np.zeros(len(cfg.classes))
    types: dict[str, int] = {}
    for i in range(len(ds)):
        sc = ds.scene(i)
        for c in sc.object_classes:
            classes[c] += 1
        types[sc.scene_type] = types.get(sc.scene_type, 0) + 1
    names = [c.name for c in cfg.classes]
    lamp, ball = classes[names.index("lamp")], classes[names.index("ball")]
    assert 0 < lamp < ball / 5
    assert types["normal"] > 100 and 0 < types.get("dark", 0) < 30 and 0 < types.get("cluttered", 0) < 30


def test_dark_scenes_are_darker():
    cfg = SceneConfig(height=32, width=32, noise=0.0)
    ds = SyntheticDataset(120, cfg, seed=5)
    means = {"dark": [], "normal": []}
    for i in range(len(ds)):
        sc = ds.scene(i)
        if sc.scene_type in means:
            means[sc.scene_type].append(sc.image.mean())
    assert means["dark"] and np.mean(means["dark"]) < 0.6 * np.mean(means["normal"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"objects": (5, 2)}, "objects"), ({"occlusion": 1.5}, "occlusion"), ({"height": 4}, "size"),
     ({"classes": ()}, "classes"), ({"noise": -1.0}, "noise")],
)
def test_bad_config_is_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SceneConfig(**kwargs)


def test_bad_object_class_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        ObjectClass("x", "torus", (1, 0, 0))
