"""Stage 1 of the quality refiner (Eq. 9-10): steps, paste-back, Eq. 7's emphasis and a tiny
SDXL-inpaint run (the mask and strength are tested in test_mask.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from grefine.maps.aq_map import EmphasizedPrompt
from grefine.refine.mask import binarize
from grefine.refine.stage1 import (
    InpaintStage1,
    ModelUnavailable,
    emphasized_embeddings,
    inference_steps_for,
    paste_back,
)
from grefine.tiny import build_tiny_sdxl_inpaint_pipeline

H, W = 48, 64  # not multiples of 16: exercises the working-size rounding


def nothing_missing():
    return np.zeros((H, W), np.float32)


def square_defect(top=16, left=24, size=12):
    """P = 1 (good) except a low-quality square."""
    P = np.ones((H, W), np.float32)
    P[top : top + size, left : left + size] = 0.1
    return P


# ----------------------------------------------------------------------------- steps


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
    mask = binarize(square_defect(), nothing_missing(), dilation=4, feather=1)
    result = stage1(image, "a red cat", mask, strength=0.6, num_steps=3, seed=0)
    assert result.ran and result.steps_run == 3 and result.strength == 0.6
    assert result.image.size == image.size and result.image.mode == "RGB"
    assert len(unet_calls) == 3  # one batched (CFG) UNet call per step
    before, after = np.asarray(image), np.asarray(result.image)
    outside = mask.soft == 0
    assert np.array_equal(after[outside], before[outside])
    assert not np.array_equal(after[mask.binary], before[mask.binary])


def test_stage1_skips_empty_mask_without_model_call(stage1, image, unet_calls):
    mask = binarize(np.full((H, W), 0.9, np.float32), nothing_missing())  # good, nothing missing
    result = stage1(image, "a red cat", mask, strength=0.6, num_steps=3, seed=0)
    assert not result.ran and result.steps_run == 0 and unet_calls == []
    assert np.array_equal(np.asarray(result.image), np.asarray(image))


def test_stage1_seed_reproduces(stage1, image):
    mask = binarize(square_defect(), nothing_missing(), dilation=4, feather=1)

    def run(**seed):
        return np.asarray(stage1(image, "a cat", mask, strength=0.8, num_steps=2, **seed).image)

    assert np.array_equal(run(seed=3), run(seed=3))
    assert np.array_equal(run(seed=3), run(generator=torch.Generator().manual_seed(3)))
    assert not np.array_equal(run(seed=3), run(seed=4))
    with pytest.raises(ValueError):
        run(seed=3, generator=torch.Generator())


PROMPT = "a red cube on a blue table"
RED_CUBE = EmphasizedPrompt(PROMPT, ((2, 10),), ("red cube",), 0.1)


def _token_positions(tokenizer, text: str, span: tuple[int, int]) -> list[int]:
    """Positions (after BOS) of the tokens of ``text[span]`` in the tokenised ``text``."""
    before = len(tokenizer.tokenize(text[: span[0]]))
    return list(range(1 + before, 1 + before + len(tokenizer.tokenize(text[span[0] : span[1]]))))


def test_emphasis_changes_only_the_phrase_tokens_and_the_pooled_vector(stage1):
    pipe = stage1.pipe
    plain, _, plain_pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    embeds, pooled = emphasized_embeddings(pipe, RED_CUBE)
    assert embeds.shape == plain.shape and pooled.shape == plain_pooled.shape
    changed = torch.nonzero((embeds - plain).abs().amax(dim=-1)[0] > 0).flatten().tolist()
    assert changed == _token_positions(pipe.tokenizer, PROMPT, (2, 10)) == list(range(2, 9))  # r,e,d,c,u,b,e
    # both encoders' halves move at those positions (the tiny encoders are 32 wide each)
    assert (embeds - plain)[0, 2, :32].abs().max() > 0 and (embeds - plain)[0, 2, 32:].abs().max() > 0
    # E_∅ + 1.1·(E − E_∅) at the phrase's tokens, E_∅ = the empty prompt's embedding there
    empty, _, empty_pooled, _ = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds[0, 2:9], empty[0, 2:9] + 1.1 * (plain[0, 2:9] - empty[0, 2:9]))
    phrase_pooled = pipe.encode_prompt("red cube", device="cpu", do_classifier_free_guidance=False)[2]
    torch.testing.assert_close(pooled, plain_pooled + 0.1 * (phrase_pooled - empty_pooled))


@pytest.mark.parametrize("text", [PROMPT, " ".join([PROMPT] * 6)])  # the long one is truncated at 77 tokens
def test_no_emphasis_is_the_plain_prompt(stage1, text):
    pipe = stage1.pipe
    plain, _, plain_pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
    embeds, pooled = emphasized_embeddings(pipe, EmphasizedPrompt(text, ((2, 10),), ("red cube",), 0.0))
    torch.testing.assert_close(embeds, plain)
    torch.testing.assert_close(pooled, plain_pooled)
    assert stage1._prompt_embeds(EmphasizedPrompt(text)) == {"prompt": text}


def test_prompt_characters_are_not_read_as_weighting_syntax(stage1):
    """compel's own syntax ("ball++", ".and()") in a prompt stays plain text."""
    pipe = stage1.pipe
    text = "a ball++ and cat.and(dog)"
    plain = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)[0]
    embeds, _ = emphasized_embeddings(pipe, EmphasizedPrompt(text, ((2, 6),), ("ball",), 0.0))
    torch.testing.assert_close(embeds, plain)


def test_stage1_working_resolution_and_emphasised_prompt_run(stage1, image):
    stage = InpaintStage1(stage1.pipe, resolution=40)
    assert stage._working_size((W, H)) == (40, 32)
    mask = binarize(square_defect(), nothing_missing(), dilation=4, feather=1)
    result = stage(image, RED_CUBE.with_suffix(", high quality"), mask, strength=0.5, num_steps=2, seed=0)
    assert result.ran and result.steps_run == 2 and result.image.size == image.size
    outside = mask.soft == 0
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(image)[outside])


def test_missing_weights_raise_model_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="checkpoints/README.md") as info:
        InpaintStage1.from_pretrained(str(tmp_path / "no-such-model"), device="cpu")
    assert "no-such-model" in str(info.value)


# ------------------------------------------------------- the authors' notebook's stage 1


def _notebook_stage1(**options) -> InpaintStage1:
    """The notebook's call on a tiny SDXL-inpainting pipeline whose default size is SDXL's
    1024×1024 (a 5-level VAE, scale 16, and a 64-latent UNet keep it cheap)."""
    from diffusers import AutoencoderKL

    from grefine.config import GRefineConfig
    from grefine.tiny import assemble_sdxl_inpaint_pipeline
    from tests.conftest import REPO

    tiny = build_tiny_sdxl_inpaint_pipeline()
    vae = AutoencoderKL(
        block_out_channels=(8,) * 5,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        mid_block_add_attention=False,
    )
    tiny.unet.register_to_config(sample_size=64)
    pipe = assemble_sdxl_inpaint_pipeline(tiny.unet, vae, tiny.text_encoder, tiny.text_encoder_2, tiny.tokenizer)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 1024  # as SDXL's 128 x 8
    config = GRefineConfig.from_yaml(REPO / "configs" / "authors-notebook.yaml").stage1
    return InpaintStage1(pipe, resolution=config.resolution, **{**config.options, **options})


def test_the_notebook_stage1_regenerates_the_whole_image_at_1024(one_thread):
    stage = _notebook_stage1()
    assert stage._working_size((512, 768)) == (672, 1024)  # long side 1024, multiples of 32
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (768, 512, 3), dtype=np.uint8))
    binary = np.zeros((768, 512), bool)
    binary[300:400, 200:300] = True
    mask = binarize(np.ones((768, 512), np.float32), binary.astype(np.float32), perceptual_bound=0.0, alignment_bound=0.5, dilation=0, feather=0)
    result = stage(image, "a red cat, high quality, hyper detail", mask, strength=0.9, num_steps=1, seed=0)
    assert result.ran and result.image.size == (1024, 1024)  # the pipeline's own size, not pasted back
    generated = np.asarray(result.image, np.float32)
    resized = np.asarray(image.resize((1024, 1024), Image.LANCZOS), np.float32)
    assert np.abs(generated - resized)[:200].mean() > 10  # far from the mask, redrawn too


def test_the_notebook_stage1_runs_on_an_empty_mask_and_the_options_are_checked(stage1, image, unet_calls):
    empty = binarize(np.ones((H, W), np.float32), nothing_missing())
    notebook = InpaintStage1(stage1.pipe, resolution=None, paste_back=False, skip_empty_mask=False)
    result = notebook(image, "a cat", empty, strength=0.5, num_steps=1, seed=0)
    assert result.ran and len(unet_calls) == 1 and result.image.size == image.size  # output_size: input
    assert not np.array_equal(np.asarray(result.image), np.asarray(image))  # nothing pasted back
    with pytest.raises(ValueError, match="paste_back needs output_size='input'"):
        InpaintStage1(stage1.pipe, output_size="working")
    with pytest.raises(ValueError, match="working_size"):
        InpaintStage1(stage1.pipe, working_size="square")
