"""PAD-Net contract tests on the "tiny" config and 64x64 (or smaller) inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mtal_models.modalities import DENSE_KINDS, ModalitySpec, build_modalities
from mtal_models.nets import NETWORKS, Labels, NetConfig, PADNet, build_network, choose_network, get_config
from mtal_models.nets.backbone import MultiScaleFusion, build_backbone
from mtal_models.nets.losses import masked_mean

H = W = 64
B = 2
HEAD = CONFIG_HEAD = get_config("tiny").head_channels
KIND_NAMES = {"segmentation": "semantic", "binary": "edges", "depth": "depth", "normals": "normals"}
MODALITIES = build_modalities(
    [("semantic", "segmentation", 4), ("edges", "binary", 1), ("depth", "depth", 1), ("normals", "normals", 3)]
)


def make_label(spec: ModalitySpec, batch: int, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    """A valid random label batch in ``spec``'s format."""
    g = torch.Generator().manual_seed(seed)
    if spec.kind == "segmentation":
        return torch.randint(0, spec.channels, (batch, h, w), generator=g)
    if spec.kind == "binary":
        return torch.randint(0, 2, (batch, 1, h, w), generator=g).float()
    if spec.kind == "depth":
        return torch.rand(batch, 1, h, w, generator=g) * 5 + 0.5
    n = torch.randn(batch, 3, h, w, generator=g)
    return n / n.norm(dim=1, keepdim=True)


def all_labels(batch: int = B, present: bool = True, h: int = H, w: int = W) -> Labels:
    return Labels(
        {n: make_label(s, batch, h, w, seed=i) for i, (n, s) in enumerate(MODALITIES.items())},
        {n: torch.full((batch,), present) for n in MODALITIES},
    )


@pytest.fixture(scope="module")
def net() -> PADNet:
    torch.manual_seed(0)
    model = build_network("padnet", MODALITIES, "tiny")
    assert isinstance(model, PADNet)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", DENSE_KINDS)
def test_output_shapes(net: PADNet, images: torch.Tensor, kind: str) -> None:
    name = KIND_NAMES[kind]
    spec = MODALITIES[name]
    out = net(images, committee=True)
    assert out.final[name].shape == (B, spec.channels, H, W)
    assert out.initial[name].shape == (B, spec.channels, H, W)
    assert set(out.refined[name]) == set(MODALITIES) - {name}
    for refined in out.refined[name].values():
        assert refined.shape == (B, spec.channels, H, W)
    assert out.head_features.shape == (B, len(MODALITIES) * HEAD, H // 8, W // 8)
    assert out.pooled.shape == (B, net.backbone.out_channels[-1])
    if kind == "normals":
        torch.testing.assert_close(out.final[name].norm(dim=1), torch.ones(B, H, W))
    if kind == "depth":
        assert (out.final[name] > 0).all() and (out.initial[name] > 0).all()


def test_committee_off_by_default_costs_nothing(
    net: PADNet, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = net.committee_blocks.messages

    def counting(feats: dict[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
        calls.append(1)
        return original(feats)

    monkeypatch.setattr(net.committee_blocks, "messages", counting)
    assert net(images).refined == {} and not calls
    assert net(images, committee=True).refined and len(calls) == 1


def test_any_modality_names_work(images: torch.Tensor) -> None:
    mods = build_modalities([("items", "depth", 1), ("tag.with.dots", "binary", 1)])
    out = build_network("padnet", mods, "tiny").eval()(images, committee=True)
    assert set(out.final) == {"items", "tag.with.dots"} and set(out.refined["items"]) == {"tag.with.dots"}


def test_single_modality_net_runs(images: torch.Tensor) -> None:
    model = build_network("padnet", build_modalities([("depth", "depth", 1)]), "tiny").eval()
    out = model(images, committee=True)
    assert out.final["depth"].shape == (B, 1, H, W) and out.refined == {}
    assert model.mc_samples(images, 3)["depth"].shape == (B, 3, 1, H, W)


@pytest.mark.parametrize("kind", DENSE_KINDS)
def test_mc_samples_shape_dropout_and_single_backbone_pass(net: PADNet, images: torch.Tensor, kind: str) -> None:
    name = KIND_NAMES[kind]
    calls: list[int] = []
    handle = net.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        samples = net.mc_samples(images, 5)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert samples[name].shape == (B, 5, MODALITIES[name].channels, H, W)
    assert not torch.allclose(samples[name][:, 0], samples[name][:, 1])  # dropout on in eval mode
    torch.testing.assert_close(net(images).final[name], net(images).final[name])  # and off in forward
    assert not net.training


def test_mc_samples_without_dropout_equal_forward(images: torch.Tensor) -> None:
    """With dropout 0 every MC sample must be the forward's final output of the same image (checks the
    chunking and sample-major reordering), also with per-sample GT substitution."""
    torch.manual_seed(0)
    model = build_network("padnet", MODALITIES, get_config("tiny", dropout=0.0)).eval()
    model.encoders_trained.fill_(True)  # as after training with substitution
    batch = torch.cat([images, images.flip(0), images * 0.5])  # 6 distinct images: several chunks
    given = Labels({"depth": make_label(MODALITIES["depth"], 6)}, {"depth": torch.tensor([1, 0, 1, 0, 0, 1]) > 0})
    with torch.no_grad():
        final = model(batch, given=given).final
    samples = model.mc_samples(batch, 3, given=given)
    for name, value in final.items():
        for i in range(3):
            torch.testing.assert_close(samples[name][:, i], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", DENSE_KINDS)
def test_losses_ignore_absent_samples(net: PADNet, images: torch.Tensor, kind: str) -> None:
    name = KIND_NAMES[kind]
    out = net(images, committee=True)
    labels = all_labels()
    labels.present[name] = torch.tensor([True, False])
    base = net.losses(out, labels)
    garbage = labels.values[name].clone()
    garbage[1] = 999 if kind == "segmentation" else float("nan")
    labels.values[name] = garbage
    again = net.losses(out, labels)
    torch.testing.assert_close(again[name], base[name])
    assert torch.isfinite(base[name]) and base[name] > 0
    # the present sample alone, normalised by one sample: a weight on the absent one changes nothing,
    # a weight of 2 on the present one doubles the loss
    weighted = net.losses(out, labels, {name: torch.tensor([2.0, float("nan")])})
    torch.testing.assert_close(weighted[name], 2 * base[name])
    labels.present[name] = torch.tensor([False, False])
    assert net.losses(out, labels)[name].item() == 0.0
    del labels.values[name]
    assert net.losses(out, labels)[name].item() == 0.0


def test_masked_mean_normalises_by_present_count() -> None:
    per = torch.tensor([1.0, float("nan"), 3.0])
    present = torch.tensor([True, False, True])
    assert masked_mean(per, present).item() == pytest.approx(2.0)
    assert masked_mean(per, present, torch.tensor([2.0, 5.0, 0.0])).item() == pytest.approx(1.0)
    assert masked_mean(per, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="present"):
        masked_mean(per, torch.ones(2, dtype=torch.bool))


def test_adam_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = build_network("padnet", MODALITIES, get_config("tiny", dropout=0.0)).train()
    images = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    # blocky (4x4 cells) labels: learnable at the nets' stride-8 resolution, unlike pixel noise
    labels = all_labels(h=4, w=4)
    for name, value in labels.values.items():
        value = value.float() if value.dim() == 4 else value.unsqueeze(1).float()
        up = torch.nn.functional.interpolate(value, scale_factor=8, mode="nearest")
        labels.values[name] = up if MODALITIES[name].kind != "segmentation" else up[:, 0].long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def total() -> torch.Tensor:
        return sum(model.losses(model(images, committee=True), labels).values())

    with torch.no_grad():
        before = total().item()
    for _ in range(15):
        opt.zero_grad()
        total().backward()
        opt.step()
    with torch.no_grad():
        after = total().item()
    assert after < 0.8 * before, (before, after)


def test_gt_substitution_changes_other_modalities_per_sample(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = build_network("padnet", MODALITIES, "tiny").eval()
    net.encoders_trained.fill_(True)  # as after training with substitution
    given = Labels({"depth": make_label(MODALITIES["depth"], B, seed=7)}, {"depth": torch.tensor([True, False])})
    plain, cond = net(images), net(images, given=given)
    for name in ("semantic", "edges", "normals"):
        assert not torch.allclose(plain.final[name][0], cond.final[name][0])  # sample 0: depth given
        torch.testing.assert_close(plain.final[name][1], cond.final[name][1])  # sample 1: not given
    torch.testing.assert_close(plain.initial["depth"], cond.initial["depth"])  # initial = before substitution
    mc = net.mc_samples(images, 2, given=given)
    assert mc["normals"].shape == (B, 2, 3, H, W)


def test_untrained_label_encoders_are_not_conditioned_through(images: torch.Tensor,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A fresh network (or one trained with substitution_prob 0) ignores given labels, with a warning;
    a training forward with given labels marks that modality's encoder, and the mark survives a reload."""
    torch.manual_seed(0)
    net = build_network("padnet", MODALITIES, "tiny")
    assert net.conditionable == ()
    given = Labels({"depth": make_label(MODALITIES["depth"], B, seed=7)}, {"depth": torch.ones(B, dtype=torch.bool)})
    net.eval()
    with caplog.at_level("WARNING", logger="mtal_models.nets.padnet"):
        plain, cond = net(images), net(images, given=given)
    for name in MODALITIES:
        torch.testing.assert_close(plain.final[name], cond.final[name])
    assert "never trained" in caplog.text and "'depth'" in caplog.text
    net.train()
    net(images, given=given)  # a training forward: the encoder is in the graph
    with torch.no_grad():
        net(images, given=Labels({"normals": make_label(MODALITIES["normals"], B)},
                                  {"normals": torch.ones(B, dtype=torch.bool)}))  # no gradients: not training
    assert net.conditionable == ("depth",)
    net.eval()
    assert not torch.allclose(net(images).final["normals"], net(images, given=given).final["normals"])
    fresh = build_network("padnet", MODALITIES, "tiny")
    fresh.load_state_dict(net.state_dict())
    assert fresh.conditionable == ("depth",)
    old = {k: v for k, v in net.state_dict().items() if k != "encoders_trained"}  # saved before the flag existed
    fresh.load_state_dict(old)
    assert fresh.conditionable == ()


def tilted_planes(batch: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth d(u, v) = d0 + a*u + b*v on u, v in [-1, 1] and its (orthographic) normals.

    Surface points (u, v, d) with z away from the camera have tangents (1, 0, a) and (0, 1, b), so the
    normal facing the camera, in the x right / y down / z towards-camera convention, is (a, b, 1)/|.|.
    """
    ab = torch.rand(batch, 2, generator=g) * 2 - 1
    d0 = 3.0 + torch.rand(batch, generator=g)
    coords = torch.linspace(-1, 1, size)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    depth = d0.view(-1, 1, 1) + ab[:, 0].view(-1, 1, 1) * u + ab[:, 1].view(-1, 1, 1) * v
    n = torch.cat([ab, torch.ones(batch, 1)], dim=1)
    n = n / n.norm(dim=1, keepdim=True)
    return depth.unsqueeze(1), n.view(batch, 3, 1, 1).expand(batch, 3, size, size).contiguous()


def test_partal_given_depth_improves_normals() -> None:
    """PartAL §3.3: when depth determines normals and the image carries no information about either,
    a net trained with random depth substitution predicts normals better when given the GT depth."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    size, batch = 32, 16
    mods = build_modalities([("depth", "depth", 1), ("normals", "normals", 3)])
    model = build_network("padnet", mods, get_config("tiny", dropout=0.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        depth, normals = tilted_planes(batch, size, g)
        images = torch.rand(batch, 3, size, size, generator=g)  # independent of the plane
        labels = Labels({"depth": depth, "normals": normals}, {"depth": torch.ones(batch, dtype=torch.bool),
                                                              "normals": torch.ones(batch, dtype=torch.bool)})
        given = Labels({"depth": depth}, {"depth": torch.rand(batch, generator=g) < 0.5})
        opt.zero_grad()
        sum(model.losses(model(images, given=given), labels).values()).backward()
        opt.step()
    model.eval()
    depth, normals = tilted_planes(64, size, g)
    images = torch.rand(64, 3, size, size, generator=g)
    labels = Labels({"normals": normals}, {"normals": torch.ones(64, dtype=torch.bool)})
    given = Labels({"depth": depth}, {"depth": torch.ones(64, dtype=torch.bool)})
    with torch.no_grad():
        out_plain, out_given = model(images), model(images, given=given)
    spec = mods["normals"]
    plain = spec.loss(out_plain.final["normals"], normals, labels.present["normals"]).mean().item()
    cond = spec.loss(out_given.final["normals"], normals, labels.present["normals"]).mean().item()
    # without depth the best guess is the mean normal; with it, the plane's normal is determined
    assert cond < 0.5 * plain, (cond, plain, math.degrees(math.acos(1 - cond)))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(3, 64, 64), "4-D"),
        (torch.rand(1, 1, 64, 64), "3 \\(RGB\\) channels"),
        (torch.rand(0, 3, 64, 64), "empty batch"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_raise(net: PADNet, bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        net(bad)
    with pytest.raises(ValueError, match=match):
        net.mc_samples(bad, 2)


def test_bad_given_and_n_raise(net: PADNet, images: torch.Tensor) -> None:
    assert net.conditionable == ()  # bad labels raise whether or not the encoders were trained
    with pytest.raises(ValueError, match="'elevation'"):
        net(images, given=Labels({"elevation": torch.zeros(B, 1, H, W)}, {"elevation": torch.ones(B, dtype=bool)}))
    with pytest.raises(ValueError, match="'normals'.*\\[B, 3, H, W\\]"):
        net(images, given=Labels({"normals": torch.zeros(B, 1, H, W)}, {"normals": torch.ones(B, dtype=bool)}))
    with pytest.raises(ValueError, match="'semantic'.*class ids"):
        net(images, given=Labels({"semantic": torch.full((B, H, W), 7)}, {"semantic": torch.ones(B, dtype=bool)}))
    with pytest.raises(ValueError, match="n must be a positive int"):
        net.mc_samples(images, 0)


def test_detection_modality_rejected() -> None:
    mods = build_modalities([("semantic", "segmentation", 3), ("cars", "detection", 2)])
    with pytest.raises(ValueError, match="'cars'.*detseg"):
        PADNet(mods, "tiny")
    assert choose_network(mods) == "detseg"
    assert choose_network(MODALITIES) == "padnet"


def test_build_network_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="'unet'.*padnet"):
        build_network("unet", MODALITIES, "tiny")
    assert NETWORKS["padnet"] is PADNet
    model = build_network("padnet", MODALITIES, {"layers": [1, 1, 1, 1], "base_width": 4, "head_channels": 8})
    assert model.config.base_width == 4 and model.backbone.out_channels == (4, 8, 16, 32)


def test_backbone_strides_and_bottleneck_widths() -> None:
    trunk = build_backbone(NetConfig(backbone="resnet50", layers=(1, 1, 1, 1), base_width=4))
    feats = trunk(torch.rand(1, 3, 64, 64))
    assert trunk.out_channels == (16, 32, 64, 128)
    want = [(1, c, 64 // s, 64 // s) for c, s in zip((16, 32, 64, 128), trunk.strides, strict=True)]
    assert [tuple(f.shape) for f in feats] == want
    fused = MultiScaleFusion(trunk.out_channels, 8, target=0)(feats)
    assert fused.shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone(NetConfig(backbone="vgg"))


def test_backbone_weights_file(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    cfg = get_config("tiny")
    source = build_backbone(cfg)
    path = tmp_path / "trunk.pt"
    torch.save(source.state_dict(), path)
    model = build_network("padnet", MODALITIES, get_config(cfg, weights=str(path)))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    with pytest.raises(ValueError, match="does not exist"):
        build_network("padnet", MODALITIES, get_config(cfg, weights=str(tmp_path / "missing.pt")))
    torch.save(build_backbone(get_config("small")).state_dict(), path)
    with pytest.raises(ValueError, match="does not match.*shape mismatch"):
        build_network("padnet", MODALITIES, get_config(cfg, weights=str(path)))
