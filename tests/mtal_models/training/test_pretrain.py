from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network
from mtal_models.training.pretrain import PretrainConfig, PretrainRefused, check_pool, pretrain, trunk_of
from mtal_models.training.views import overlap_grids, two_views

DENSE = build_modalities([("sem", "segmentation", 3), ("depth", "depth", 1)])
DETSEG = build_modalities([("boxes", "detection", 2), ("mask", "segmentation", 2)])
FAST = PretrainConfig(steps=4, budget_s=0, batch_size=4, view_size=(32, 32), min_images=8, warmup=2, grid=3,
                      proj_dim=16, pred_dim=8, save_every=2)


def _pool(n: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 [H, W, 3] images of a few coloured rectangles on a ramp, sizes varying."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 40 + 4 * (i % 3), 48
        img = np.tile(np.linspace(0, 120, w, dtype=np.uint8)[None, :, None], (h, 1, 3))
        for _ in range(3):
            y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
            img[y : y + 10, x : x + 10] = rng.integers(0, 256, 3)
        out.append(img)
    return out


def _net(name: str = "padnet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(name, DETSEG if name == "detseg" else DENSE, "tiny")


def _split(model: torch.nn.Module, names: tuple[str, ...]) -> tuple[dict, dict]:
    trunk, rest = {}, {}
    for k, v in model.state_dict().items():
        (trunk if k.split(".", 1)[0] in names else rest)[k] = v.clone()
    return trunk, rest


@pytest.mark.parametrize("network", ["padnet", "detseg"])
def test_pretrain_lowers_its_loss_changes_the_trunk_and_leaves_the_heads(network: str) -> None:
    torch.set_num_threads(1)
    model = _net(network)
    names = trunk_of(model).names
    trunk_before, rest_before = _split(model, names)
    model.eval()
    config = PretrainConfig(**{**FAST.to_dict(), "steps": 60, "view_size": (32, 32) if network == "padnet"
                               else (64, 64), "lr": 1e-2, "warmup": 5})
    result = pretrain(model, _pool(16), config)
    assert not model.training  # mode restored
    assert result.steps == 60 and len(result.losses) == 60 and result.stopped_by == "steps"
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10]) - 0.1
    assert all(-1.0 - 1e-4 <= v <= 1.0 for v in result.losses)
    trunk_after, rest_after = _split(model, names)
    assert any(not torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before if "weight" in k)
    assert all(torch.equal(rest_before[k], rest_after[k]) for k in rest_before)  # heads untouched
    assert result.feature_std > 0.01  # not collapsed to one vector
    assert result.summary()["pretrained"] and result.summary()["steps"] == 60


def test_pools_below_the_minimum_are_refused_with_a_reason() -> None:
    assert check_pool(8, FAST) is None
    assert "has 3 image(s), it needs at least 8" in (check_pool(3, FAST) or "")
    with pytest.raises(PretrainRefused, match="needs at least 8") as err:
        pretrain(_net(), _pool(3), FAST)
    assert "3 image" in err.value.reason


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    pool = _pool(10)
    whole = _net()
    pretrain(whole, pool, FAST)
    first = _net()
    ck = tmp_path / "pretrain.pt"
    progress: list[int] = []
    stop_after_two = pretrain(first, pool, FAST, checkpoint=ck, should_stop=lambda: len(progress) >= 2,
                              progress=lambda step, loss: progress.append(step))
    assert stop_after_two.stopped_by == "stop" and stop_after_two.steps == 2 and ck.is_file()
    resumed = _net(seed=1)  # other initial weights: the checkpoint's trunk replaces them
    result = pretrain(resumed, pool, FAST, start=ck, progress=lambda step, loss: progress.append(step))
    assert progress == [1, 2, 3, 4] and result.steps == 4 and len(result.losses) == 2
    names = trunk_of(whole).names
    expected, _ = _split(whole, names)
    got, _ = _split(resumed, names)
    for k in expected:
        assert torch.allclose(expected[k].float(), got[k].float(), atol=1e-6), k
    # a finished state resumes to nothing more
    again = pretrain(_net(), pool, FAST, start=result.state())
    assert again.steps == 4 and again.losses == []


def test_the_time_budget_is_respected() -> None:
    torch.set_num_threads(1)
    config = PretrainConfig(**{**FAST.to_dict(), "steps": 10**6, "budget_s": 0.6})
    result = pretrain(_net(), _pool(8), config)
    assert result.stopped_by == "budget" and result.steps >= 1
    assert result.seconds < 0.6 + 0.5


def test_bad_starts_and_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="not a pretrain state"):
        pretrain(_net(), _pool(8), FAST, start={"step": 1})
    with pytest.raises(ValueError, match="batch_size"):
        PretrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="RGB"):
        pretrain(_net(), [np.zeros((8, 8))] * 8, FAST)


def test_views_see_the_same_image_points_at_their_grids() -> None:
    """An image whose channels are its own x and y coordinates: sampling each view at its lattice gives
    the same coordinates in both views (mirroring included)."""
    h, w = 60, 80
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack([xs, ys, torch.zeros_like(xs)])
    gen = torch.Generator().manual_seed(0)
    pair = two_views([image] * 6, (32, 40), gen, scale=(0.2, 0.8), grid=5, strength=0.0, grey_p=0.0)
    a = F.grid_sample(pair.first, pair.grid_first, align_corners=False)
    b = F.grid_sample(pair.second, pair.grid_second, align_corners=False)
    assert pair.first.shape == (6, 3, 32, 40) and pair.grid_first.shape == (6, 5, 5, 2)
    assert (a - b)[:, :2].abs().max() < 0.03  # a pixel or so of a ramp over 60-80 pixels
    assert pair.grid_first.abs().max() <= 1.0 and pair.grid_second.abs().max() <= 1.0


def test_disjoint_boxes_fall_back_to_the_first_box() -> None:
    g1, g2 = overlap_grids([((0, 0, 10, 10), (20, 20, 30, 30))], [(False, True)], 2)
    assert torch.allclose(g1, torch.tensor([[[[-0.5, -0.5], [0.5, -0.5]], [[-0.5, 0.5], [0.5, 0.5]]]]))
    assert g2.shape == (1, 2, 2, 2)
