"""Stage 1 of the quality refiner (Eq. 9-10): mask, strength, steps, and a tiny SDXL-inpaint run."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from grefine.maps.aq_map import EmphasizedPrompt
from grefine.refine.mask import binarize, stage1_strength
from grefine.refine.stage1 import (
    InpaintStage1,
    ModelUnavailable,
    inference_steps_for,
    paste_back,
)
from grefine.testing import build_tiny_sdxl_inpaint_pipeline

H, W = 48, 64  # not multiples of 16: exercises the working-size rounding


def ones():
    return np.ones((H, W), np.float32)


def square_defect(top=16, left=24, size=12):
    """P = 1 (good) except a low-quality square."""
    P = ones()
    P[top : top + size, left : left + size] = 0.1
    return P


# ----------------------------------------------------------------------------- binarize


def test_binarize_thresholds_one_minus_p_plus_a():
    P = ones()
    P[:, :10] = 0.4  # M = (1 − 0.4 + 1)/2 = 0.8 > 0.75
    P[:, 10:20] = 0.6  # M = 0.7
    mask = binarize(P, ones(), dilation=0, feather=0)
    assert mask.binary.dtype == bool and mask.soft.dtype == np.float32
    assert mask.binary[:, :10].all() and not mask.binary[:, 10:].any()
    assert np.array_equal(mask.soft, mask.binary.astype(np.float32))
    assert binarize(P, ones(), threshold=0.65, dilation=0, feather=0).binary[:, :20].all()


def test_binarize_alignment_map_lowers_mask_outside_defective_region():
    P = np.full((H, W), 0.4, np.float32)  # mediocre everywhere
    A = np.zeros((H, W), np.float32)
    A[:, W // 2 :] = 1.0  # a defective phrase's region
    mask = binarize(P, A, dilation=0, feather=0)
    assert mask.binary[:, W // 2 :].all() and not mask.binary[:, : W // 2].any()


def test_binarize_good_image_is_empty():
    mask = binarize(np.full((H, W), 0.9, np.float32), ones())
    assert mask.is_empty and mask.coverage == 0.0 and not mask.soft.any()


def test_binarize_dilation_grows_by_radius():
    P = ones()
    P[24, 32] = 0.0
    assert binarize(P, ones(), dilation=0, feather=0).binary.sum() == 1
    grown = binarize(P, ones(), dilation=5, feather=0).binary
    assert grown[24, 37] and grown[19, 32] and not grown[24, 38] and not grown[20, 36]


def test_binarize_feather_is_soft_inside_bounds_and_zero_far_away():
    mask = binarize(square_defect(), ones(), dilation=6, feather=2)
    core = mask.soft[16:28, 24:36]
    assert core.min() > 0.99  # dilation ≥ 3σ: the defect itself is fully redrawn
    edge = mask.soft[mask.binary & ~ndimage.binary_erosion(mask.binary)]
    assert ((edge > 0) & (edge < 1)).all()  # the boundary is feathered
    assert mask.soft[0, 0] == 0.0 and mask.soft[:, :10].max() == 0.0  # beyond dilation + 3σ
    assert mask.soft.min() >= 0.0 and mask.soft.max() <= 1.0


def test_binarize_rejects_mismatched_maps():
    with pytest.raises(ValueError):
        binarize(ones(), np.ones((H, W + 1), np.float32))


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


@pytest.mark.parametrize("steps", [1, 7, 10])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.45, 0.5, 0.7, 0.9, 1.0])
def test_inference_steps_run_exactly_n1(steps, strength):
    total = inference_steps_for(steps, strength)
    assert min(int(total * strength), total) == steps  # diffusers' get_timesteps
    assert total == steps or min(int((total - 1) * strength), total - 1) < steps


def test_paste_back_is_exact_where_weight_is_zero():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    weight = np.zeros((H, W), np.float32)
    weight[:, 40:] = 1.0
    weight[:, 30:40] = 0.5
    out = np.asarray(paste_back(original, generated, weight))
    assert np.array_equal(out[:, :30], np.asarray(original)[:, :30])
    assert np.array_equal(out[:, 40:], np.asarray(generated)[:, 40:])


# ---------------------------------------------------------------------- tiny SDXL inpaint


@pytest.fixture(scope="module")
def stage1():
    return InpaintStage1(build_tiny_sdxl_inpaint_pipeline(), resolution=None)


@pytest.fixture
def unet_calls(stage1):
    calls = []
    handle = stage1.pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def test_stage1_changes_only_the_masked_region(stage1, image, unet_calls):
    mask = binarize(square_defect(), ones(), dilation=4, feather=1)
    result = stage1(image, "a red cat", mask, strength=0.6, num_steps=3, seed=0)
    assert result.ran and result.steps_run == 3 and result.strength == 0.6
    assert result.image.size == image.size and result.image.mode == "RGB"
    assert len(unet_calls) == 3  # one batched (CFG) UNet call per step
    before, after = np.asarray(image), np.asarray(result.image)
    outside = mask.soft == 0
    assert np.array_equal(after[outside], before[outside])
    assert not np.array_equal(after[mask.binary], before[mask.binary])


def test_stage1_skips_empty_mask_without_model_call(stage1, image, unet_calls):
    mask = binarize(np.full((H, W), 0.9, np.float32), ones())
    result = stage1(image, "a red cat", mask, strength=0.6, num_steps=3, seed=0)
    assert not result.ran and result.steps_run == 0 and unet_calls == []
    assert np.array_equal(np.asarray(result.image), np.asarray(image))


def test_stage1_seed_reproduces(stage1, image):
    mask = binarize(square_defect(), ones(), dilation=4, feather=1)

    def run(**seed):
        return np.asarray(stage1(image, "a cat", mask, strength=0.8, num_steps=2, **seed).image)

    assert np.array_equal(run(seed=3), run(seed=3))
    assert np.array_equal(run(seed=3), run(generator=torch.Generator().manual_seed(3)))
    assert not np.array_equal(run(seed=3), run(seed=4))
    with pytest.raises(ValueError):
        run(seed=3, generator=torch.Generator())


def test_stage1_emphasis_adds_weighted_phrase_embeddings(stage1):
    encode = stage1.pipe.encode_prompt
    plain = stage1._prompt_embeds("a red cat", do_cfg=True)
    phrase, _, phrase_pooled, _ = encode("red", device="cpu", do_classifier_free_guidance=False)
    emphasised = stage1._prompt_embeds(
        EmphasizedPrompt("a red cat", ("red", "red"), weight=0.1), do_cfg=True
    )
    torch.testing.assert_close(emphasised["prompt_embeds"], plain["prompt_embeds"] + 0.2 * phrase)
    torch.testing.assert_close(
        emphasised["pooled_prompt_embeds"], plain["pooled_prompt_embeds"] + 0.2 * phrase_pooled
    )
    torch.testing.assert_close(
        emphasised["negative_prompt_embeds"], plain["negative_prompt_embeds"]
    )


def test_stage1_working_resolution_and_emphasised_prompt_run(stage1, image):
    stage = InpaintStage1(stage1.pipe, resolution=40)
    assert stage._working_size((W, H)) == (40, 32)
    mask = binarize(square_defect(), ones(), dilation=4, feather=1)
    prompt = EmphasizedPrompt("a red cat", ("red",))
    result = stage(image, prompt, mask, strength=0.5, num_steps=2, seed=0)
    assert result.ran and result.steps_run == 2 and result.image.size == image.size
    outside = mask.soft == 0
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(image)[outside])


def test_missing_weights_raise_model_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="checkpoints/README.md") as info:
        InpaintStage1.from_pretrained(str(tmp_path / "no-such-model"), device="cpu")
    assert "no-such-model" in str(info.value)
