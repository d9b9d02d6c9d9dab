"""DetSegNet on the tiny config, 64x64 inputs: 3 detection classes, 4 segmentation classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mtal_models.metrics import count_degenerate
from mtal_models.modalities import build_modalities, unpack_detections
from mtal_models.nets.base import Labels
from mtal_models.nets.config import get_config
from mtal_models.nets.detseg import DetSegNet

DET, SEG = "boxes", "semantic"
C_DET, C_SEG, SIZE = 3, 4, 64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_net(**kwargs: object) -> DetSegNet:
    mods = build_modalities([(DET, "detection", C_DET), (SEG, "segmentation", C_SEG)])
    config = get_config("tiny", dropout=kwargs.pop("dropout", 0.2))
    return DetSegNet(mods, config, **kwargs)  # type: ignore[arg-type]


def rectangles(batch: int, seed: int) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """Noisy dark images with two coloured rectangles each (colour = class); seg class = det class + 1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, SIZE, SIZE, generator=g) * 0.2 + 0.1
    segs = torch.zeros(batch, SIZE, SIZE, dtype=torch.long)
    targets = []
    for i in range(batch):
        boxes, labels = [], []
        for _ in range(2):
            c = int(torch.randint(0, C_DET, (1,), generator=g))
            w, h = (int(v) for v in torch.randint(14, 28, (2,), generator=g))
            x = int(torch.randint(0, SIZE - w, (1,), generator=g))
            y = int(torch.randint(0, SIZE - h, (1,), generator=g))
            images[i, :, y : y + h, x : x + w] = torch.eye(3)[c][:, None, None] * 0.8 + 0.1
            segs[i, y : y + h, x : x + w] = c + 1
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, segs, targets


def labels_for(targets: list[dict[str, Tensor]], segs: Tensor, det: list[bool], seg: list[bool]) -> Labels:
    return Labels({DET: targets, SEG: segs}, {DET: torch.tensor(det), SEG: torch.tensor(seg)})


# ---- outputs -----------------------------------------------------------------------------------
def test_output_shapes_and_fields() -> None:
    net = make_net()
    out = net(torch.rand(2, 3, SIZE, SIZE))
    assert set(out.final) == {DET, SEG}
    assert out.final[DET].shape == (2, net.config.max_detections, 6 + C_DET)
    assert out.final[SEG].shape == (2, C_SEG, SIZE, SIZE)
    assert out.initial == {} and out.refined == {}
    assert out.head_features is not None and out.head_features.shape[:2] == (2, net.config.head_channels)
    assert out.pooled is not None and out.pooled.shape == (2, net.backbone.out_channels[-1])
    heads = out.extras["head_outputs"]
    num_locations = sum(out.extras["num_anchors_per_level"])
    assert heads["cls_logits"].shape == (2, num_locations, C_DET)
    assert out.extras["anchors"][0].shape == (num_locations, 4)
    assert not out.final[DET].requires_grad and out.final[SEG].requires_grad


def check_padded(dets: Tensor) -> int:
    """Assert the padded format; return the number of real rows."""
    real = dets[..., 5] >= 0
    pad = dets[~real]
    assert (pad[:, 5] == -1).all() and (pad[:, :5] == 0).all() and (pad[:, 6:] == 0).all()
    # real rows come first
    assert (real.int().diff(dim=1) <= 0).all()
    rows = dets[real]
    assert ((rows[:, 5] >= 0) & (rows[:, 5] < C_DET) & (rows[:, 5] == rows[:, 5].round())).all()
    assert ((rows[:, 4] > 0) & (rows[:, 4] <= 1)).all()
    assert torch.allclose(rows[:, 6:].sum(1), torch.ones(len(rows)), atol=1e-5)
    assert (rows[:, 6:] >= 0).all()
    assert (rows[:, :4] >= 0).all() and (rows[:, :4] <= SIZE).all()
    assert (rows[:, 2] >= rows[:, 0]).all() and (rows[:, 3] >= rows[:, 1]).all()
    return int(real.sum())


def test_padded_detection_format() -> None:
    images = torch.rand(2, 3, SIZE, SIZE)
    everything = make_net(score_thresh=0.0).predict(images)[DET]
    assert check_padded(everything) > 0
    unpacked = unpack_detections(everything)
    assert len(unpacked) == 2 and unpacked[0]["probs"].shape[1] == C_DET
    nothing = make_net(score_thresh=1.0).predict(images)[DET]
    assert check_padded(nothing) == 0


def test_predict_activates_segmentation() -> None:
    probs = make_net().predict(torch.rand(1, 3, SIZE, SIZE))[SEG]
    assert torch.allclose(probs.sum(1), torch.ones(1, SIZE, SIZE), atol=1e-5)


# ---- losses ------------------------------------------------------------------------------------
def test_losses_ignore_absent_samples() -> None:
    net = make_net().eval()  # eval: BatchNorm running stats, so samples do not interact
    images, segs, targets = rectangles(2, seed=1)
    out = net(images)
    garbage = [targets[0], {"boxes": torch.tensor([[float("nan"), 90.0, -5.0, 1.0]]), "labels": torch.tensor([17])}]
    bad_segs = segs.clone()
    bad_segs[1] = 99
    base = net.losses(out, labels_for(targets, segs, [True, False], [True, False]))
    noisy = net.losses(out, labels_for(garbage, bad_segs, [True, False], [True, False]))
    alone = net.losses(net(images[:1]), labels_for(targets[:1], segs[:1], [True], [True]))
    for name in (DET, SEG):
        assert base[name] > 0
        assert torch.allclose(base[name], noisy[name])
        assert torch.allclose(base[name], alone[name], atol=1e-5)
    none = net.losses(out, labels_for(garbage, bad_segs, [False, False], [False, False]))
    assert all(v.item() == 0 for v in none.values())


def test_empty_box_list_is_a_labelled_sample() -> None:
    net = make_net().eval()
    images, segs, targets = rectangles(2, seed=2)
    empty = [targets[0], {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    terms = net.detection_loss_terms(net(images), empty, torch.tensor([True, True]))
    assert terms.shape == (2, 3)
    assert terms[1, 0] > 0 and terms[1, 1:].eq(0).all()  # only classification: every location is background
    assert (terms[0] > 0).all()


def test_per_sample_weights() -> None:
    net = make_net().eval()
    images, segs, targets = rectangles(2, seed=3)
    out = net(images)
    labels = labels_for(targets, segs, [True, True], [True, True])
    terms = net.detection_loss_terms(out, targets, torch.tensor([True, True])).sum(1)
    weighted = net.losses(out, labels, {DET: torch.tensor([3.0, 0.0])})
    assert torch.allclose(weighted[DET], 3.0 * terms[0] / 2)
    plain = net.losses(out, labels)
    assert torch.allclose(plain[DET], terms.mean())


def test_training_lowers_both_losses() -> None:
    net = make_net(dropout=0.0)
    images, segs, targets = rectangles(4, seed=4)
    labels = labels_for(targets, segs, [True] * 4, [True] * 4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first: dict[str, float] = {}
    for step in range(30):
        losses = net.losses(net(images), labels)
        if step == 0:
            first = {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    last = {k: v.item() for k, v in net.losses(net(images), labels).items()}
    for name in (DET, SEG):
        assert last[name] < 0.75 * first[name], (name, first, last)


def test_box_regression_recovers_when_pushed_negative() -> None:
    """The collapse at lr 5e-3 (Penn-Fudan, docs/detseg.md): one large Adam step made FCOS's box
    distances negative everywhere, torchvision's ReLU then gave exactly 0 with 0 gradient and every
    box stayed at its anchor point. Here all four distance channels start negative (as after such a
    step): with softplus the regression still gets a gradient and the boxes grow back."""
    net = make_net(dropout=0.0)
    with torch.no_grad():
        net.fcos.head.regression_head.bbox_reg.bias.fill_(-3.0)
    images, segs, targets = rectangles(4, seed=5)
    labels = labels_for(targets, segs, [True] * 4, [True] * 4)
    present = torch.ones(4, dtype=torch.bool)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3, weight_decay=1e-4)
    first = net.detection_loss_terms(net(images), targets, present)[:, 1].mean().item()
    for _ in range(30):
        losses = net.losses(net(images), labels)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    out = net(images)
    last = net.detection_loss_terms(out, targets, present)[:, 1].mean().item()
    degenerate, predicted = count_degenerate(out.final[DET])
    assert first > 0.95  # GIoU loss of (nearly) zero-size boxes
    assert last < 0.7 * first, (first, last)
    assert predicted > 0 and degenerate < 0.1 * predicted, (degenerate, predicted)


# ---- MC dropout and crops ----------------------------------------------------------------------
def test_mc_samples_shape_and_variability() -> None:
    net = make_net(dropout=0.5).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    samples = net.mc_samples(torch.rand(2, 3, SIZE, SIZE), n=4)
    assert set(samples) == {SEG}
    s = samples[SEG]
    assert s.shape == (2, 4, C_SEG, SIZE, SIZE)
    assert (s[:, 0] - s[:, 1]).abs().max() > 1e-4
    assert all(m.training for m in net.modules())  # modes restored
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # BN stats untouched
    with pytest.raises(ValueError, match="n must be"):
        net.mc_samples(torch.rand(1, 3, SIZE, SIZE), n=0)


def test_segment_crops_shapes() -> None:
    net = make_net().eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    crops = net.segment_crops(images, [torch.tensor([[0.0, 0.0, 20.0, 30.0], [5, 5, 60, 60]]), torch.zeros(0, 4)], 32)
    assert [tuple(c.shape) for c in crops] == [(2, C_SEG, 32, 32), (0, C_SEG, 32, 32)]
    assert torch.allclose(crops[0].sum(1), torch.ones(2, 32, 32), atol=1e-5)
    none = net.segment_crops(images, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert [tuple(c.shape) for c in none] == [(0, C_SEG, 64, 64)] * 2


def test_segment_crops_of_whole_image_match_predict() -> None:
    net = make_net()  # training mode: segment_crops must still run deterministically in eval mode
    smooth = F.interpolate(torch.rand(1, 3, 4, 4), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    crop = net.segment_crops(smooth, [torch.tensor([[0.0, 0.0, SIZE, SIZE]])], size=SIZE)[0]
    full = net.predict(smooth)[SEG]
    assert (crop - full).abs().mean() < 0.005
    assert net.training


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "items, match",
    [
        ([(SEG, "segmentation", 4)], "exactly one detection"),
        ([("a", "detection", 2), ("b", "detection", 2), (SEG, "segmentation", 4)], r"detection=\['a', 'b'\]"),
        ([(DET, "detection", 2)], "at least one dense"),
    ],
)
def test_bad_modalities(items: list[tuple[str, str, int]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DetSegNet(build_modalities(items), "tiny")


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(1, 1, SIZE, SIZE), "3 \\(RGB\\) channels"),
        (torch.rand(0, 3, SIZE, SIZE), "empty batch"),
        (torch.full((1, 3, SIZE, SIZE), float("nan")), "NaN"),
        (torch.rand(1, 3, 16, 16), "at least 32x32"),
    ],
)
def test_bad_images(images: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_net()(images)


@pytest.mark.parametrize(
    "boxes, cls, match",
    [
        ([[10.0, 10.0, 80.0, 20.0]], [0], "outside the 64x64 image"),
        ([[30.0, 10.0, 20.0, 20.0]], [0], "x2 <= x1"),
        ([[10.0, 10.0, 20.0, 20.0]], [3], r"class ids must be integers in \[0, 3\)"),
        ([[10.0, 10.0, 20.0]], [0], r"boxes must be \[N, 4\]"),
    ],
)
def test_bad_detection_labels(boxes: list[list[float]], cls: list[int], match: str) -> None:
    net = make_net()
    images, segs, targets = rectangles(1, seed=5)
    bad = [{"boxes": torch.tensor(boxes), "labels": torch.tensor(cls)}]
    with pytest.raises(ValueError, match=f"modality '{DET}'.*{match}"):
        net.losses(net(images), labels_for(bad, segs, [True], [True]))


def test_registry_builds_detseg() -> None:
    from mtal_models.nets import NETWORKS, build_network, choose_network

    mods = build_modalities([(DET, "detection", C_DET), (SEG, "segmentation", C_SEG)])
    assert NETWORKS[choose_network(mods)] is DetSegNet
    net = build_network("detseg", mods, "tiny")
    assert isinstance(net, DetSegNet) and net.config == get_config("tiny")


def test_bad_crop_boxes() -> None:
    net = make_net()
    with pytest.raises(ValueError, match="x2 < x1"):
        net.segment_crops(torch.rand(1, 3, SIZE, SIZE), [torch.tensor([[30.0, 0.0, 10.0, 10.0]])])
    with pytest.raises(ValueError, match="box lists for a batch"):
        net.segment_crops(torch.rand(2, 3, SIZE, SIZE), [torch.zeros(0, 4)])
