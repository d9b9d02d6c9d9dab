import math

import pytest
import torch

from mtal_models.modalities import ModalitySpec, build_modalities, gaussian_entropy, shannon_entropy

SPECS = build_modalities(
    [("semantic", "segmentation", 5), ("edges", "binary", 1, {"metric": "odsf"}), ("depth", "depth", 1),
     ("normals", "normals", 3)]
)


def _target(spec: ModalitySpec, b: int, h: int = 8, w: int = 8) -> torch.Tensor:
    if spec.kind == "segmentation":
        return torch.randint(0, spec.channels, (b, h, w))
    if spec.kind == "binary":
        return torch.randint(0, 2, (b, 1, h, w)).float()
    if spec.kind == "depth":
        return torch.rand(b, 1, h, w) + 0.5
    return torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1)


@pytest.mark.parametrize("name", list(SPECS))
def test_loss_ignores_absent_samples_even_with_garbage(name: str) -> None:
    spec = SPECS[name]
    pred = torch.randn(4, spec.channels, 8, 8)
    target = _target(spec, 4)
    present = torch.tensor([True, False, True, False])
    garbage = target.clone().float()
    garbage[~present] = float("nan")
    if spec.kind == "segmentation":
        garbage = garbage.nan_to_num(77).long()
    a = spec.loss(pred, target, present)
    b = spec.loss(pred, garbage, present)
    assert torch.equal(a, b)
    assert (a[~present] == 0).all() and (a[present] > 0).all()


@pytest.mark.parametrize("name", list(SPECS))
def test_bad_input_names_the_modality(name: str) -> None:
    spec = SPECS[name]
    with pytest.raises(ValueError, match=name):
        spec.loss(torch.randn(2, spec.channels + 1, 8, 8), _target(spec, 2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=name):
        spec.loss(torch.randn(0, spec.channels, 8, 8), _target(spec, 0), torch.ones(0, dtype=torch.bool))
    if spec.kind != "segmentation":
        nan = _target(spec, 2)
        nan[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            spec.loss(torch.randn(2, spec.channels, 8, 8), nan, torch.ones(2, dtype=torch.bool))


def test_entropies_match_closed_forms() -> None:
    c = 5
    uniform = torch.full((1, c, 2, 2), 1.0 / c)
    assert torch.allclose(shannon_entropy(uniform), torch.full((1, 2, 2), math.log(c)))
    var = torch.full((1, 3, 2, 2), 0.25)
    expected = 1.5 * math.log(2 * math.pi) + 0.5 * 3 * math.log(0.25) + 1.5
    assert torch.allclose(gaussian_entropy(var), torch.full((1, 2, 2), expected))


def test_uniform_softmax_is_more_uncertain_than_peaked() -> None:
    spec = SPECS["semantic"]
    flat = torch.zeros(1, 4, 5, 3, 3)
    peaked = flat.clone()
    peaked[:, :, 2] = 10.0
    assert (spec.uncertainty(flat) > spec.uncertainty(peaked)).all()


def test_build_rejects_unknown_kind_and_duplicates() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        build_modalities([("x", "voxels", 2)])
    with pytest.raises(ValueError, match="duplicate"):
        build_modalities([("x", "depth", 1), ("x", "depth", 1)])
    with pytest.raises(ValueError, match="3 channel"):
        build_modalities([("n", "normals", 1)])
