"""PartAL pseudo-labels: targets for a partially labelled sample's missing modalities, conditioned on its
labels; ``fit`` learns from them only where labels are partial."""

from __future__ import annotations

import pytest
import torch

from mtal_models.data.sample import collate
from mtal_models.modalities import build_modalities
from mtal_models.nets import build_network
from mtal_models.nets.base import Labels
from mtal_models.training import TrainConfig, fit, make_loader
from mtal_models.training.pseudo import pseudo_labels, ramp
from tests.mtal_models.training.helpers import MODALITIES, make_samples

NAMES = list(MODALITIES)


def _padnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("padnet", MODALITIES, "tiny")


def _batch(flags: list[dict[str, bool]], size: int = 32):
    samples = [make_samples(1, present=f, seed=i, size=size)[0] for i, f in enumerate(flags)]
    for i, s in enumerate(samples):
        s.id = f"s{i}"
    return collate(samples, MODALITIES)


def test_pseudo_target_formats() -> None:
    mods = build_modalities([("s", "segmentation", 3), ("b", "binary", 1), ("d", "depth", 1), ("n", "normals", 3)])
    logits = torch.tensor([0.1, 2.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    seg = mods["s"].pseudo_target(logits)
    assert seg.dtype == torch.int64 and seg.shape == (2, 4, 4) and (seg == 1).all()
    binary = mods["b"].pseudo_target(torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1).expand(2, 1, 4, 4))
    assert binary.dtype == torch.float32 and (binary[0] == 0).all() and (binary[1] == 1).all()
    depth = torch.rand(2, 1, 4, 4, requires_grad=True)
    guess = mods["d"].pseudo_target(depth)
    assert torch.equal(guess, depth.detach()) and not guess.requires_grad
    sure = mods["s"].pseudo_target(torch.stack([logits[0], -logits[0]]), confidence=0.8)
    assert (sure[0] == 1).all() and (sure[1] == 255).all()  # top class 0.83: kept; 0.72: ignored
    sure_binary = mods["b"].pseudo_target(torch.tensor([-3.0, 0.5]).view(2, 1, 1, 1), confidence=0.9)
    assert sure_binary.flatten().tolist() == [0.0, 255.0]  # p = 0.05 -> class 0 at 0.95; p = 0.62 ignored
    with pytest.raises(ValueError, match="channels"):
        mods["n"].pseudo_target(torch.rand(2, 1, 4, 4))


def test_only_missing_modalities_of_partially_labelled_samples_get_targets() -> None:
    model = _padnet().train()
    batch = _batch([
        {"sem": True, "depth": True, "normals": True},  # full: nothing to guess
        {"depth": True},  # guess sem and normals
        {},  # nothing to condition on: no guesses
        {"sem": True, "normals": True},  # guess depth
    ])  # fmt: skip
    pseudo = pseudo_labels(model, batch.images, batch.labels, NAMES)
    assert pseudo is not None and model.training  # the teacher pass leaves train mode on
    assert pseudo.present["sem"].tolist() == [False, True, False, False]
    assert pseudo.present["normals"].tolist() == [False, True, False, False]
    assert pseudo.present["depth"].tolist() == [False, False, False, True]
    # the targets are the eval-mode final predictions with the sample's labels given
    given = Labels(
        {n: batch.labels.values[n][[1, 3]] for n in NAMES},
        {n: batch.labels.present[n][[1, 3]] for n in NAMES},
    )
    with torch.no_grad():
        out = model.eval()(batch.images[[1, 3]], given=given)
    model.train()
    assert torch.equal(pseudo.values["sem"][1], out.final["sem"][0].argmax(0))
    assert torch.allclose(pseudo.values["depth"][3], out.final["depth"][1], atol=1e-6)
    assert pseudo_labels(model, batch.images[:1], Labels(
        {n: v[:1] for n, v in batch.labels.values.items()}, {n: p[:1] for n, p in batch.labels.present.items()}
    ), NAMES) is None  # fmt: skip


def test_guesses_are_conditioned_on_the_given_labels() -> None:
    model = _padnet()
    model.encoders_trained.fill_(True)  # as after training with substitution (untrained ones are ignored)
    batch = _batch([{"depth": True}])
    first = pseudo_labels(model, batch.images, batch.labels, NAMES)
    batch.labels.values["depth"] = batch.labels.values["depth"] * 3
    second = pseudo_labels(model, batch.images, batch.labels, NAMES)
    assert first is not None and second is not None
    assert not torch.allclose(first.values["normals"], second.values["normals"])
    assert pseudo_labels(model, batch.images, batch.labels, []) is None  # no label encoders: no guesses


def test_ramp_rises_linearly_to_one() -> None:
    assert ramp(1, 1, 10, 2) == pytest.approx(0.05)
    assert ramp(1, 10, 10, 2) == pytest.approx(0.5)
    assert ramp(2, 10, 10, 2) == 1.0


def test_config_needs_substitution() -> None:
    with pytest.raises(ValueError, match="substitution_prob"):
        TrainConfig(pseudo_label_weight=1.0)
    with pytest.raises(ValueError, match="pseudo_label_weight"):
        TrainConfig(pseudo_label_weight=-1.0, substitution_prob=0.2)
    with pytest.raises(ValueError, match="pseudo_label_confidence"):
        TrainConfig(pseudo_label_confidence=1.5)


def _train(samples, weight: float, teacher: torch.nn.Module | None = None) -> torch.nn.Module:
    model = _padnet()
    config = TrainConfig(epochs=15, batch_size=4, lr=5e-3, device="cpu", substitution_prob=0.2,
                         pseudo_label_weight=weight, pseudo_label_confidence=0.0, sampling="image")
    loader = make_loader(samples, MODALITIES, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    fit(model, loader, config, teacher=teacher)
    return model


def _guess_gap(model: torch.nn.Module, samples, guesser: torch.nn.Module | None = None) -> float:
    """Loss of ``model``'s plain predictions (no labels given) against the conditioned guesses of
    ``guesser`` (default: ``model`` itself) on the missing modalities."""
    batch = collate(samples, MODALITIES)
    guesses = pseudo_labels(guesser or model, batch.images, batch.labels, NAMES)
    assert guesses is not None
    with torch.no_grad():
        losses = model.eval().losses(model(batch.images), guesses)
    return float(losses["sem"] + losses["normals"])


def test_fit_learns_from_guesses_only_on_partial_labels() -> None:
    full = make_samples(8, size=32)
    plain, with_guesses = _train(full, 0.0).state_dict(), _train(full, 1.0).state_dict()
    assert all(torch.equal(plain[k], with_guesses[k]) for k in plain)  # fully labelled: nothing changes
    partial = make_samples(8, present={"depth": True}, size=32)
    taught, untaught = _train(partial, 1.0), _train(partial, 0.0)
    # the term pulls the plain predictions of the missing modalities towards the conditioned guesses
    assert _guess_gap(taught, partial) < 0.5 * _guess_gap(untaught, partial)


def test_a_teacher_guesses_instead_of_the_network_and_is_never_trained() -> None:
    partial = make_samples(8, present={"depth": True}, size=32)
    teacher = _train(partial, 0.0)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _train(partial, 1.0, teacher=teacher)
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    # the student's plain predictions follow the teacher's guesses, closer than its own untaught twin does
    assert _guess_gap(student, partial, teacher) < 0.5 * _guess_gap(_train(partial, 0.0), partial, teacher)
