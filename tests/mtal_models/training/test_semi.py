"""The semi-supervised term: EMA teacher update, ramp, off switch, resume, every modality kind, budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtal_models.data.files import save_png
from mtal_models.data.sample import Sample
from mtal_models.data.unlabelled import ImageFiles
from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network
from mtal_models.nets.base import MultiTaskOutput
from mtal_models.nets.config import get_config
from mtal_models.nets.detseg import DetSegNet
from mtal_models.training import (
    EMATeacher,
    TrainConfig,
    fit,
    load_checkpoint,
    plan_epochs,
    rampup,
    step_budget,
)
from mtal_models.training.loop import _semi_branch
from mtal_models.training.semi import class_balanced_keep, frozen_bn_stats, teacher_targets
from tests.mtal_models.training.helpers import MODALITIES, TinyNet, build_tiny, make_samples

CFG = TrainConfig(epochs=2, batch_size=2, lr=1e-2, weight_decay=0.0, device="cpu", seed=5)


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(MODALITIES)


def _pool(n: int, seed: int = 9) -> list[Sample]:
    return [Sample(f"u{i}", s.image) for i, s in enumerate(make_samples(n, seed=seed))]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_teacher_update_known_answer() -> None:
    student = _net()
    teacher = EMATeacher(student, decay=0.5)
    t0 = _state(teacher.model)
    assert _same(t0, _state(student)) and not any(p.requires_grad for p in teacher.model.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    s1 = _state(student)
    assert teacher.current_decay() == pytest.approx(0.1)  # warm-up: min(0.5, (1 + 0) / (10 + 0))
    teacher.update(student)
    for k, v in _state(teacher.model).items():
        assert torch.allclose(v, 0.1 * t0[k] + 0.9 * s1[k]), k
    t1 = _state(teacher.model)
    assert teacher.current_decay() == pytest.approx(2 / 11)
    teacher.update(student)
    for k, v in _state(teacher.model).items():
        assert torch.allclose(v, 2 / 11 * t1[k] + 9 / 11 * s1[k]), k
    teacher.updates = 100
    assert teacher.current_decay() == 0.5  # the configured decay once warm
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(student, decay=1.0)


def test_rampup_rises_to_one() -> None:
    assert rampup(0.0, 0.2) == pytest.approx(math.exp(-5))
    assert rampup(0.1, 0.2) == pytest.approx(math.exp(-1.25))
    assert rampup(0.2, 0.2) == 1.0 and rampup(0.9, 0.2) == 1.0 and rampup(0.0, 0.0) == 1.0


def test_off_switch_trains_exactly_as_without_a_pool() -> None:
    samples = make_samples(6)
    reference = _net()
    fit(reference, samples, CFG)
    for unlabelled, cfg in [(_pool(8), TrainConfig(**{**CFG.to_dict(), "semi_weight": 0.0})), ([], CFG)]:
        model = _net()
        result = fit(model, samples, cfg, unlabelled=unlabelled)
        assert _same(_state(model), _state(reference))
        assert result.teacher is None and result.unlabelled == 0


def test_pool_changes_training_and_teacher_follows() -> None:
    samples = make_samples(6)
    plain, semi = _net(), _net()
    fit(plain, samples, CFG)
    result = fit(semi, samples, CFG, unlabelled=_pool(10))
    assert not _same(_state(plain), _state(semi))
    assert result.unlabelled == 10 and result.teacher is not None and result.teacher.updates == 6
    assert all(math.isfinite(v) for v in result.step_losses)


def test_resume_reproduces_with_the_teacher(tmp_path: Path) -> None:
    samples, pool = make_samples(6), _pool(10)
    cfg = TrainConfig(**{**CFG.to_dict(), "epochs": 3, "strong_aug": True})
    whole = _net()
    full = fit(whole, samples, cfg, unlabelled=pool)
    first = _net()
    part = fit(first, samples, cfg, unlabelled=pool, until_epoch=1)
    part.save(tmp_path / "m.pt", first)
    ck = load_checkpoint(tmp_path / "m.pt", builder=build_tiny)
    assert "ema_state" in ck.extra
    rest = fit(ck.model, samples, cfg, unlabelled=pool, start=ck)
    assert _same(_state(ck.model), _state(whole))
    assert _same(_state(rest.teacher.model), _state(full.teacher.model))
    assert rest.teacher.updates == full.teacher.updates


def _scene(i: int, rng: np.random.Generator, size: int = 32) -> Sample:
    image = rng.integers(30, 80, (size, size, 3), dtype=np.uint8)
    x, y, w = int(rng.integers(0, size - 14)), int(rng.integers(0, size - 14)), int(rng.integers(8, 14))
    image[y : y + w, x : x + w] = 220
    mask = np.zeros((size, size), np.int64)
    mask[y : y + w, x : x + w] = 1
    depth = np.where(mask > 0, 1.0, 3.0).astype(np.float32)
    normals = np.zeros((size, size, 3), np.float32)
    normals[..., 2] = 1.0
    labels = {"boxes": {"boxes": np.array([[x, y, x + w, y + w]], np.float32), "labels": np.zeros(1, np.int64)},
              "sem": mask, "fg": mask.astype(np.uint8), "depth": depth, "normals": normals}
    return Sample(f"r{i}", image, labels, {k: True for k in labels})


@pytest.mark.parametrize("kinds", [("sem", "fg", "depth", "normals"), ("depth",), ("boxes", "sem")])
def test_every_modality_kind_trains_with_the_pool(kinds: tuple[str, ...]) -> None:
    every = {"boxes": ("boxes", "detection", 1), "sem": ("sem", "segmentation", 2), "fg": ("fg", "binary", 1),
             "depth": ("depth", "depth", 1), "normals": ("normals", "normals", 3)}
    mods = build_modalities([every[k] for k in kinds])
    rng = np.random.default_rng(0)
    scenes = [_scene(i, rng) for i in range(6)]
    train = [Sample(s.id, s.image, {k: s.labels[k] for k in kinds}, {k: True for k in kinds}) for s in scenes[:2]]
    pool = [Sample(s.id, s.image) for s in scenes[2:]]
    torch.manual_seed(0)
    if "boxes" in kinds:
        net = DetSegNet(mods, get_config("tiny", dropout=0.0), score_thresh=0.05)
    else:
        net = build_network("padnet", mods, "tiny")
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-3, device="cpu", semi_threshold=0.0, strong_aug=True)
    result = fit(net, train, cfg, unlabelled=pool)
    assert result.teacher is not None and all(math.isfinite(v) for v in result.step_losses)


def test_no_dense_modality_means_no_term_and_a_warning() -> None:
    class DetectionOnly(torch.nn.Module):  # all _semi_branch looks at
        modalities = build_modalities([("boxes", "detection", 1)])

    with pytest.warns(UserWarning, match="no dense modality"):
        assert _semi_branch(DetectionOnly(), _pool(3), CFG, None) is None  # type: ignore[arg-type]


def test_step_budget_rule_and_fit_follows_it() -> None:
    assert step_budget(10, 300, 10.0) == 300 and step_budget(40, 300, 10.0) == 400
    assert step_budget(1000, 300, 10.0, max_steps=2000) == 2000 and step_budget(0, 0, 0.0) == 1
    cfg = TrainConfig(epochs=99, batch_size=4, device="cpu", min_steps=7, steps_per_label=0.5)
    assert plan_epochs(cfg, 6, 2) == 4  # max(7, 3) = 7 steps -> 4 epochs of 2
    assert plan_epochs(TrainConfig(epochs=3), 6, 2) == 3
    result = fit(_net(), make_samples(6), cfg)
    assert result.epochs == 4 and result.epochs_run == 4 and len(result.step_losses) == 8


def test_pool_images_learn_only_the_modalities_they_lack() -> None:
    """A pool image with a label of a modality gets no teacher target for it: a pool of fully labelled
    images adds nothing (TinyNet has no BatchNorm or dropout, so the extra forward changes nothing either)."""
    samples = make_samples(6)
    plain, semi = _net(), _net()
    fit(plain, samples, CFG)
    result = fit(semi, samples, CFG, unlabelled=make_samples(8, seed=4))
    assert result.teacher is not None and _same(_state(plain), _state(semi))
    partly = fit(_net(), samples, CFG, unlabelled=make_samples(8, present={"sem": True}, seed=4))
    assert partly.teacher is not None and not _same(_state(partly.teacher.model), _state(result.teacher.model))


def test_unlabelled_forward_leaves_batchnorm_statistics_alone() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    before = _state(net)
    with frozen_bn_stats(net):
        out = net(torch.rand(2, 3, 5, 5) * 9)
    assert _same(_state(net), before) and out.requires_grad
    net(torch.rand(2, 3, 5, 5) * 9)
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])


def test_pool_streams_from_disk(tmp_path: Path) -> None:
    paths = []
    for s in _pool(5):
        paths.append(tmp_path / f"{s.id}.png")
        save_png(paths[-1], s.image)
    result = fit(_net(), make_samples(4), CFG, unlabelled=ImageFiles(paths))
    assert result.unlabelled == 5 and result.teacher is not None and result.teacher.updates == 4


def _photo_pool(n: int, labelled: bool) -> list[Sample]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        if labelled:
            out.append(Sample(f"l{i}", image, {"sem": (image[..., 0] > 128).astype(np.int64)}, {"sem": True}))
        else:
            out.append(Sample(f"u{i}", image))
    return out


@pytest.mark.parametrize("pool_size", [5, 9])
def test_a_pool_leaving_a_last_batch_of_one_trains(pool_size: int) -> None:
    """Bug (issue #30 audit): 5 or 9 unlabelled images in batches of 4 left a last batch of one, and PAD-Net's
    BatchNorm raised "Expected more than 1 value per channel when training" mid-run."""
    mods = build_modalities([("sem", "segmentation", 2)])
    torch.manual_seed(0)
    net = build_network("padnet", mods, "tiny")
    cfg = TrainConfig(epochs=2, batch_size=4, device="cpu", semi_threshold=0.0)
    result = fit(net, _photo_pool(8, True), cfg, unlabelled=_photo_pool(pool_size, False))
    assert result.teacher is not None and result.teacher.updates == 4


def test_a_pool_of_one_image_trains_supervised_with_a_warning() -> None:
    mods = build_modalities([("sem", "segmentation", 2)])
    torch.manual_seed(0)
    net = build_network("padnet", mods, "tiny")
    with pytest.warns(UserWarning, match="one unlabelled image"):
        result = fit(net, _photo_pool(4, True), TrainConfig(epochs=1, batch_size=4, device="cpu"),
                     unlabelled=_photo_pool(1, False))
    assert result.teacher is None


def test_class_balanced_keep_known_answer() -> None:
    """Audit finding (issue #30): at threshold 0.95 a CamVid teacher's kept pixels were sky, building and road
    only (steps.csv of scripts/semi_inspect.py); the class share keeps every predicted class's best pixels."""
    confidence = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.6, 0.7, 0.8, 0.9])
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert class_balanced_keep(confidence, classes, 0.95, 0.0).tolist() == [True] * 4 + [False] * 4
    # share 0.5: class 1 keeps its top half (0.8, 0.9); class 0 keeps all (the global threshold is lower)
    assert class_balanced_keep(confidence, classes, 0.95, 0.5).tolist() == [True] * 4 + [False, False, True, True]
    # share 1: every pixel
    assert class_balanced_keep(confidence, classes, 0.95, 1.0).all()


def test_teacher_targets_keep_a_rare_class_with_a_class_share() -> None:
    mods = build_modalities([("sem", "segmentation", 2)])

    teacher = TinyNet(mods)
    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 0] = 5.0
    logits[:, :, :, :2] = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    logits[:, 1, 0, 0] = 2.0  # one pixel of class 1 more confident (p 0.88)
    teacher.forward = lambda images, given=None, committee=False: MultiTaskOutput(final={"sem": logits})  # type: ignore[method-assign]
    plain = teacher_targets(teacher, torch.zeros(2, 3, 4, 4), 0.95)["sem"]
    balanced = teacher_targets(teacher, torch.zeros(2, 3, 4, 4), 0.95, class_share=0.25)["sem"]
    assert (plain == 1).sum() == 0 and (plain == 0).sum() == 16  # only the frequent class survives 0.95
    assert (balanced == 0).sum() == 16 and (balanced == 1).sum() >= 2  # class 1's best quarter kept
    assert (balanced[:, 0, 0] == 1).all()
