"""Eq. 9's stage-1 decisions: the union mask Bi(1 − P + D) and the strength from (p, a)."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from grefine.refine.mask import binarize, stage1_strength

H, W = 48, 64
BOUNDS = {"perceptual_bound": 0.5, "alignment_bound": 0.6}


def good() -> np.ndarray:
    """P of an image that is good everywhere."""
    return np.full((H, W), 0.9, np.float32)


def nothing_missing() -> np.ndarray:
    return np.zeros((H, W), np.float32)


def square(top: int, left: int, size: int = 10, value: float = 0.9) -> np.ndarray:
    """A defect map that is ``value`` on one square and 0 elsewhere."""
    D = nothing_missing()
    D[top : top + size, left : left + size] = value
    return D


def random_maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy maps: P with a bad corner (rows 30+, columns < 12), D with a defect at the right."""
    rng = np.random.default_rng(seed)
    P = rng.uniform(0.55, 1.0, (H, W)).astype(np.float32)
    P[30:, :12] = rng.uniform(0.0, 0.6, (H - 30, 12))
    D = rng.uniform(0.0, 0.5, (H, W)).astype(np.float32)
    D[:12, 50:] = rng.uniform(0.4, 1.0, (12, W - 50))
    return P, D


# ----------------------------------------------------------------------------- the union


def test_good_image_with_nothing_missing_gets_an_empty_mask():
    mask = binarize(good(), nothing_missing(), **BOUNDS)
    assert mask.is_empty and mask.coverage == 0.0 and not mask.soft.any()


def test_perceptual_region_is_where_p_is_below_its_bound():
    P = good()
    P[:, :10] = 0.49
    P[:, 10:20] = 0.5  # at the bound: not defective
    mask = binarize(P, nothing_missing(), dilation=0, feather=0, **BOUNDS)
    assert mask.binary.dtype == bool and mask.soft.dtype == np.float32
    assert mask.binary[:, :10].all() and not mask.binary[:, 10:].any()
    assert np.array_equal(mask.soft, mask.binary.astype(np.float32))


def test_a_defect_enters_the_mask_where_p_is_high():
    D = square(10, 20)
    D[30:32, 30:32] = 0.6  # at the bound: not a defect
    mask = binarize(np.ones((H, W), np.float32), D, dilation=0, feather=0, **BOUNDS)
    assert np.array_equal(mask.binary, D > 0.6)
    assert mask.binary[10:20, 20:30].all() and mask.coverage == pytest.approx(100 / (H * W))


def test_the_mask_is_the_union_of_both_regions():
    P, D = random_maps(0)
    mask = binarize(P, D, dilation=0, feather=0, **BOUNDS)
    assert np.array_equal(mask.binary, (P < 0.5) | (D > 0.6))
    assert (mask.binary & ~(P < 0.5)).any() and (mask.binary & ~(D > 0.6)).any()


@pytest.mark.parametrize("dilation, feather", [(0, 0), (3, 1)])
def test_adding_a_defect_never_removes_mask_pixels(dilation, feather):
    for seed in range(5):
        P, D = random_maps(seed)
        before = binarize(P, D, dilation=dilation, feather=feather, **BOUNDS)
        more = np.maximum(D, square(5 * seed, 7 * seed))
        after = binarize(P, more, dilation=dilation, feather=feather, **BOUNDS)
        assert not (before.binary & ~after.binary).any()
        assert (after.soft >= before.soft - 1e-6).all()
        assert after.binary.sum() > before.binary.sum()


@pytest.mark.parametrize("dilation", [0, 4])
def test_two_defects_give_the_union_of_their_regions(dilation):
    first, second = square(5, 5), square(25, 40, size=12, value=0.8)
    both = binarize(good(), np.maximum(first, second), dilation=dilation, feather=0, **BOUNDS)
    one = binarize(good(), first, dilation=dilation, feather=0, **BOUNDS)
    other = binarize(good(), second, dilation=dilation, feather=0, **BOUNDS)
    assert np.array_equal(both.binary, one.binary | other.binary)
    assert not (one.binary & other.binary).any()  # disjoint squares: a union, not an intersection


# ----------------------------------------------------------------------------- dilation, feathering


def test_dilation_grows_by_radius():
    P = good()
    P[24, 32] = 0.0
    assert binarize(P, nothing_missing(), dilation=0, feather=0).binary.sum() == 1
    grown = binarize(P, nothing_missing(), dilation=5, feather=0).binary
    assert grown[24, 37] and grown[19, 32] and not grown[24, 38] and not grown[20, 36]


def test_feather_is_soft_inside_bounds_and_zero_far_away():
    mask = binarize(good(), square(16, 24, size=12), dilation=6, feather=2, **BOUNDS)
    core = mask.soft[16:28, 24:36]
    assert core.min() > 0.99  # dilation ≥ 3σ: the defect itself is fully redrawn
    edge = mask.soft[mask.binary & ~ndimage.binary_erosion(mask.binary)]
    assert ((edge > 0) & (edge < 1)).all()  # the boundary is feathered
    assert mask.soft[0, 0] == 0.0 and mask.soft[:, :10].max() == 0.0  # beyond dilation + 3σ
    assert mask.soft.min() >= 0.0 and mask.soft.max() <= 1.0


def test_binarize_rejects_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        binarize(good(), np.zeros((H, W + 1), np.float32))
    with pytest.raises(ValueError, match="dilation"):
        binarize(good(), nothing_missing(), dilation=-1)


# ----------------------------------------------------------------------------- strength


def test_strength_decreases_with_quality_and_is_clipped():
    qualities = np.linspace(0, 1, 11)
    strengths = [stage1_strength(q, q, min_strength=0.2, max_strength=0.9) for q in qualities]
    assert all(a >= b for a, b in itertools.pairwise(strengths))
    assert strengths[0] == pytest.approx(0.9) and strengths[-1] == pytest.approx(0.2)
    assert stage1_strength(0.5, 0.1, max_strength=1.0) == pytest.approx(0.7)
    assert stage1_strength(0.2, 0.4) > stage1_strength(0.4, 0.4) > stage1_strength(0.4, 0.6)
    with pytest.raises(ValueError):
        stage1_strength(0.5, 0.5, min_strength=0.9, max_strength=0.5)


def test_a_dropped_score_leaves_the_other_as_the_quality():
    assert stage1_strength(None, 0.2, max_strength=1.0) == pytest.approx(0.8)  # PQ dropped: a alone
    assert stage1_strength(0.4, None, max_strength=1.0) == pytest.approx(0.6)  # AQ dropped: p alone
    assert stage1_strength(None, None, min_strength=0.3) == pytest.approx(0.3)  # no indicator: the floor


def test_equal_bounds_fix_the_strength():
    assert {stage1_strength(q, q, min_strength=0.9, max_strength=0.9) for q in (0.0, 0.5, 1.0)} == {0.9}
