"""Pretrained backbones by name through torchvision's weights API, offline: fabricated state dicts are
placed in a temporary TORCH_HOME (tests/conftest.py blocks every download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, resnet18, resnet50

from mtal_models.nets.backbone import build_backbone
from mtal_models.nets.config import IMAGENET_MEAN, NetConfig, get_config
from mtal_models.nets.pretrained import (
    WeightsUnavailable,
    cache_file,
    is_standard,
    parse_weights,
    standard_trunk,
    with_weights,
)
from tests.support.weights import place_weights, random_state

IMAGES = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _trunk(config: NetConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(config).eval()


def test_parse_weights_names() -> None:
    assert parse_weights("resnet18", "imagenet") is ResNet18_Weights.DEFAULT
    assert parse_weights("resnet50", "IMAGENET") is ResNet50_Weights.IMAGENET1K_V2  # DEFAULT of resnet50
    assert parse_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1") is ResNet50_Weights.IMAGENET1K_V1
    assert parse_weights("resnet34", None) is None and parse_weights("resnet34", "none") is None
    assert parse_weights("resnet18", "/some/file.pth") == Path("/some/file.pth")
    with pytest.raises(ValueError, match="do not belong to backbone 'resnet18'.*ResNet18_Weights.IMAGENET1K_V1"):
        parse_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(ValueError, match="unknown weights 'ResNet50_Weights.NOPE'"):
        parse_weights("resnet50", "ResNet50_Weights.NOPE")
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        parse_weights("vgg16", "imagenet")


def test_cache_file_is_torchvisions_name_under_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert cache_file(ResNet34_Weights.IMAGENET1K_V1) == tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"


def test_imagenet_loads_from_the_cache_without_network(offline_torch_hub: list[str]) -> None:
    config = with_weights(standard_trunk(get_config("tiny"), "resnet18"), "imagenet")
    assert config.weights == "ResNet18_Weights.IMAGENET1K_V1"
    fabricated = random_state(resnet18(), seed=1)  # torchvision's own keys, fc.* included
    place_weights(ResNet18_Weights.IMAGENET1K_V1, fabricated)
    trunk = _trunk(config)
    random = _trunk(with_weights(config, None))
    assert offline_torch_hub == []  # nothing was downloaded
    assert torch.equal(trunk.state_dict()["layer4.1.conv2.weight"], fabricated["layer4.1.conv2.weight"])
    assert torch.equal(trunk.state_dict()["bn1.running_var"], fabricated["bn1.running_var"])
    with torch.no_grad():
        assert not torch.allclose(trunk(IMAGES)[-1], random(IMAGES)[-1])


def test_resnet50_enum_name_loads_the_fabricated_file(offline_torch_hub: list[str]) -> None:
    config = with_weights(standard_trunk(get_config("tiny"), "resnet50"), "ResNet50_Weights.IMAGENET1K_V1")
    fabricated = random_state(resnet50(), seed=2)
    place_weights(ResNet50_Weights.IMAGENET1K_V1, fabricated)
    trunk = _trunk(config)
    assert offline_torch_hub == []
    assert trunk.out_channels == (256, 512, 1024, 2048)
    assert torch.equal(trunk.state_dict()["layer3.5.bn3.weight"], fabricated["layer3.5.bn3.weight"])


def test_missing_file_offline_names_the_file_and_the_cache_folder(offline_torch_hub: list[str]) -> None:
    config = with_weights(standard_trunk(get_config("tiny"), "resnet18"), "imagenet")
    expected = cache_file(ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(WeightsUnavailable) as info:
        build_backbone(config)
    message = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert repr(expected.name) in message and repr(str(expected.parent)) in message
    assert "TORCH_HOME" in message
    assert offline_torch_hub == [ResNet18_Weights.IMAGENET1K_V1.url]  # tried once, as torchvision does


def test_a_file_that_does_not_match_is_refused_clearly() -> None:
    config = with_weights(standard_trunk(get_config("tiny"), "resnet50"), "imagenet")
    path = place_weights(ResNet50_Weights.IMAGENET1K_V2, random_state(resnet18(), seed=3))  # wrong network
    with pytest.raises(ValueError, match=r"ResNet50_Weights.IMAGENET1K_V2 \(cached file .*does not match.*"
                                         r"missing \[.*shape mismatch"):
        build_backbone(config)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read as a state dict.*delete it to download it again"):
        build_backbone(config)


def test_named_weights_need_the_standard_trunk() -> None:
    tiny = get_config("tiny")
    assert not is_standard(tiny) and is_standard(get_config("default"))
    assert is_standard(standard_trunk(tiny, "resnet34"))
    with pytest.raises(ValueError, match="loads only into torchvision's standard resnet18"):
        with_weights(tiny, "imagenet")
    with pytest.raises(ValueError, match="standard resnet18"):  # also when set on the config directly
        build_backbone(get_config("tiny", weights="imagenet"))


def test_normalisation_follows_the_weights() -> None:
    config = get_config("tiny", norm_mean=(0.0, 0.0, 0.0), norm_std=(1.0, 1.0, 1.0))
    chosen = with_weights(standard_trunk(config, "resnet50"), "ResNet50_Weights.IMAGENET1K_V2")
    transform = ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert list(chosen.norm_mean) == pytest.approx(transform.mean)
    assert list(chosen.norm_std) == pytest.approx(transform.std)
    # the trunk normalises with the config's statistics
    a, b = _trunk(config), _trunk(get_config("tiny"))
    assert torch.equal(a.mean.flatten(), torch.zeros(3)) and b.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    with torch.no_grad():
        assert not torch.allclose(a(IMAGES)[-1], b(IMAGES)[-1])


def test_config_round_trip_keeps_normalisation_and_old_configs_get_imagenet() -> None:
    config = get_config("tiny", norm_mean=(0.5, 0.5, 0.5), norm_std=(0.25, 0.25, 0.25), weights="imagenet")
    assert NetConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["norm_mean"], old["norm_std"]
    assert NetConfig.from_dict(old).norm_mean == IMAGENET_MEAN


def test_a_checkpoint_never_reads_its_starting_weights_again(tmp_path: Path) -> None:
    from mtal_models.modalities import ModalitySpec
    from mtal_models.nets import build_network
    from mtal_models.training.checkpoint import load_checkpoint, save_checkpoint

    start = tmp_path / "trunk.pt"
    torch.save(random_state(build_backbone(get_config("tiny")), seed=4), start)
    mods = {"seg": ModalitySpec("seg", "segmentation", 3)}
    net = build_network("padnet", mods, get_config("tiny", weights=str(start)))
    saved = save_checkpoint(tmp_path / "ck.pt", net)
    start.unlink()  # gone (or, for named weights, not in this machine's cache)
    loaded = load_checkpoint(saved).model
    assert torch.equal(loaded.state_dict()["backbone.conv1.weight"], net.state_dict()["backbone.conv1.weight"])
