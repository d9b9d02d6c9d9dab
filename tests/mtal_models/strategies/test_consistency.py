import pytest
import torch
import torch.nn.functional as F

from mtal_models.modalities import ModalitySpec
from mtal_models.strategies import BoxMask, EquAL
from mtal_models.strategies.base import BatchOutputs
from mtal_models.strategies.consistency import committee_inconsistency, flip_inconsistency, unflip
from mtal_models.strategies.mtc import mtc_image_score, mtc_scores

KINDS = [("segmentation", 4), ("binary", 1), ("depth", 1), ("normals", 3)]


def _pred(kind: str, c: int, b: int, h: int, w: int, seed: int) -> torch.Tensor:
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)) * 3
    return F.normalize(x, dim=1) if kind == "normals" else x


@pytest.mark.parametrize(("kind", "c"), KINDS)
@pytest.mark.parametrize(("h", "w"), [(4, 4), (8, 6)])
def test_committee_disagreement_outranks_agreement(kind: str, c: int, h: int, w: int) -> None:
    spec = ModalitySpec(kind, kind, c)
    initial = _pred(kind, c, 2, h, w, 0)
    agree = initial.clone()
    other = _pred(kind, c, 2, h, w, 1)
    if kind in ("segmentation", "binary"):
        agree, other = initial * 5, -initial * 5  # same / opposite decisions, confident
    # image 0: all committee members agree with the initial prediction; image 1: one member disagrees
    refined = {"x": agree.clone(), "y": agree.clone()}
    refined["y"][1] = other[1]
    s = committee_inconsistency(spec, initial, refined)
    assert s.shape == (2,) and float(s[1]) > float(s[0])
    if not spec.categorical:
        assert float(s[0]) == pytest.approx(0.0, abs=1e-5)


def test_committee_without_members_raises() -> None:
    with pytest.raises(ValueError, match="committee"):
        committee_inconsistency(ModalitySpec("d", "depth", 1), torch.zeros(1, 1, 2, 2), {})


@pytest.mark.parametrize(("kind", "c"), KINDS)
@pytest.mark.parametrize(("b", "h", "w"), [(1, 4, 4), (3, 5, 7)])
def test_flip_equivariant_prediction_is_consistent(kind: str, c: int, b: int, h: int, w: int) -> None:
    spec = ModalitySpec(kind, kind, c)
    pred = _pred(kind, c, b, h, w, 2)
    # what a perfectly flip-equivariant net predicts for the mirror image: mirrored map, normals' x negated
    mirrored = pred.flip(-1)
    if kind == "normals":
        mirrored = torch.cat([-mirrored[:, :1], mirrored[:, 1:]], dim=1)
    s_equi = flip_inconsistency(spec, pred, unflip(spec, mirrored))
    assert torch.allclose(s_equi, torch.zeros(b), atol=1e-5)
    s_bad = flip_inconsistency(spec, pred, _pred(kind, c, b, h, w, 3))
    assert (s_bad > s_equi + 1e-3).all()


def test_equal_strategy_ranks_the_inconsistent_image_first() -> None:
    spec = ModalitySpec("sem", "segmentation", 3)
    pred = torch.zeros(3, 3, 4, 4)
    pred[:, 0] = 5.0
    flipped = pred.clone()
    flipped[1, 0], flipped[1, 2] = 0.0, 5.0  # image 1 changes its mind under flipping
    out = BatchOutputs(modalities={"sem": spec}, final={"sem": pred}, flipped={"sem": flipped})
    strategy = EquAL()
    sel = strategy.select(strategy.score_batch(out), {"sem": torch.zeros(3, dtype=torch.bool)}, 1)
    assert sel.pairs == [(1, "sem")]


def _seg_logits(cls_map: torch.Tensor, classes: int = 3) -> torch.Tensor:
    return F.one_hot(cls_map, classes).permute(2, 0, 1).float() * 20  # [C, H, W], near one-hot softmax


def _crop(seg_class: int, s: int, classes: int = 3) -> torch.Tensor:
    return _seg_logits(torch.full((s, s), seg_class, dtype=torch.long), classes)


@pytest.mark.parametrize(
    ("h", "w", "box"), [(32, 32, (8, 8, 24, 24)), (20, 40, (0, 2, 10, 18)), (16, 16, (3, 3, 4, 4))]
)
def test_boxmask_disagreeing_segmentation_outranks_agreeing(h: int, w: int, box: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = box
    agree_map = torch.zeros(h, w, dtype=torch.long)
    agree_map[y1:y2, x1:x2] = 1  # det class 0 -> seg class 1 inside the box
    disagree_map = torch.zeros(h, w, dtype=torch.long)  # background everywhere
    seg = torch.stack([_seg_logits(agree_map), _seg_logits(disagree_map)])
    det = torch.zeros(2, 2, 8)
    det[:, :, 5] = -1
    det[:, 0, :6] = torch.tensor([x1, y1, x2, y2, 0.9, 0.0])
    det[:, 0, 6:] = torch.tensor([1.0, 0.0])
    crops = [_crop(1, 16)[None], _crop(1, 16)[None]]
    r = mtc_scores(seg, det, crops)
    assert float(r["score"][0]) < 0.05  # consistent: S_loc disagreement 0, S_cls ~ 0, S_seg 0
    assert float(r["s_seg"][1]) == 0.0 and float(r["score"][1]) == pytest.approx(float(r["s_box"][1]))
    assert float(r["score"][1]) > 1.0  # full localisation disagreement plus a large class divergence
    strategy = BoxMask()
    pool = strategy.score_batch(
        BatchOutputs(
            modalities={"boxes": ModalitySpec("boxes", "detection", 2), "sem": ModalitySpec("sem", "segmentation", 3)},
            final={"boxes": det, "sem": seg},
            crops=crops,
        )
    )
    labelled = {"boxes": torch.zeros(2, dtype=torch.bool), "sem": torch.zeros(2, dtype=torch.bool)}
    assert strategy.select(pool, labelled, 2).pairs == [(1, "boxes"), (1, "sem")]


def test_segmentation_outside_boxes_counts_in_s_seg() -> None:
    h = w = 16
    cls_map = torch.zeros(h, w, dtype=torch.long)
    cls_map[0:4, 0:4] = 1  # box region, consistent
    cls_map[10:12, 10:15] = 2  # 10 pixels of an object class outside every box (det class 1 -> seg 2)
    seg = _seg_logits(cls_map).softmax(0)
    r = mtc_image_score(seg, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0]), torch.tensor([[1.0, 0.0]]),
                        _crop(1, 8)[None].softmax(1), torch.tensor([1, 2]))
    assert float(r["s_seg"]) == pytest.approx(10 / (h * w - 16))
    assert float(r["s_loc"][0]) == pytest.approx(0.0)


def test_empty_boxmask_is_full_disagreement_and_no_box_scores_s_seg_only() -> None:
    seg = _seg_logits(torch.zeros(8, 8, dtype=torch.long)).softmax(0)
    r = mtc_image_score(seg, torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([0]), torch.tensor([[1.0, 0.0]]),
                        _crop(0, 8)[None].softmax(1), torch.tensor([1, 2]))  # crop sees background only
    assert float(r["s_loc"][0]) == 1.0 and float(r["s_cls"][0]) == 0.0 and float(r["score"]) == 1.0
    r = mtc_image_score(seg, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2),
                        torch.zeros(0, 3, 8, 8), torch.tensor([1, 2]))
    assert float(r["score"]) == 0.0


def test_boxmask_bad_inputs() -> None:
    seg = torch.zeros(1, 3, 8, 8)
    det = torch.zeros(1, 1, 8)
    det[0, 0, :6] = torch.tensor([0, 0, 4, 4, 0.9, 0])
    with pytest.raises(ValueError, match="crops"):
        mtc_scores(seg, det, [torch.zeros(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="det_to_seg"):
        mtc_scores(seg, det, [torch.zeros(1, 3, 4, 4)], det_to_seg=torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="detection"):
        BoxMask().score_batch(BatchOutputs(modalities={"sem": ModalitySpec("sem", "segmentation", 3)}))
