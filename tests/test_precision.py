"""The half-precision and offload paths a GPU run takes, reproduced on the CPU with tiny models:
CLIP built as ``open_clip.create_model(precision=fp16/bf16)`` builds it, the whole pipeline in
bf16 and fp16, accelerate's model CPU offload, and NaN pixels refused instead of written black."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from grefine import GRefinePipeline
from grefine.config import GRefineConfig
from grefine.errors import NonFiniteImageError
from grefine.maps.aq_map import AQMap
from grefine.maps.pq_map import PQMap
from grefine.refine.mask import binarize
from grefine.refine.stage1 import InpaintStage1
from grefine.tiny import (
    build_tiny_open_clip,
    build_tiny_pasd_stage2,
    build_tiny_pq_clip,
    build_tiny_sdxl_inpaint_pipeline,
)
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny-random.yaml"
PROMPT = "a red cube on a blue table"


def _image(width=72, height=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _tiny_config(**overrides) -> GRefineConfig:
    config = GRefineConfig.from_yaml(TINY)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_maps_run_on_a_half_precision_clip_as_open_clip_builds_it(precision, pq_embeddings_dir):
    """open_clip keeps the positional and token embeddings in fp32 next to half-precision blocks:
    the learned PQ prompts must still flow through the text tower in the blocks' dtype."""
    half, tokenizer = build_tiny_pq_clip(precision=precision)
    full, _ = build_tiny_pq_clip()
    assert half.positional_embedding.dtype == torch.float32 and half.transformer.get_cast_dtype() != torch.float32
    image = _image()
    pq = PQMap(half, tokenizer, pq_embeddings_dir, num_blocks=2)(image)
    pq_ref = PQMap(full, tokenizer, pq_embeddings_dir, num_blocks=2)(image)
    assert np.isfinite(pq.map).all() and pq.score == pytest.approx(pq_ref.score, abs=0.05)
    text_half, _ = build_tiny_open_clip(precision=precision)
    text_full, _ = build_tiny_open_clip()
    pq, pq_ref = PQMap(text_half, tokenizer, num_blocks=2)(image), PQMap(text_full, tokenizer, num_blocks=2)(image)
    assert np.isfinite(pq.map).all() and pq.score == pytest.approx(pq_ref.score, abs=0.05)
    aq, aq_ref = AQMap(text_half, tokenizer, num_blocks=2)(image, PROMPT), AQMap(text_full, tokenizer, num_blocks=2)(image, PROMPT)
    assert np.isfinite(aq.defect_map).all() and aq.score == pytest.approx(aq_ref.score, abs=0.05)


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_whole_pipeline_runs_in_half_precision_without_nans(dtype, torch_dtype):
    pipe = GRefinePipeline.from_pretrained(_tiny_config(dtype=dtype))
    models = [pipe.stage1.pipe.unet, pipe.stage1.pipe.vae, pipe.stage2.unet, pipe.stage2.controlnet, pipe.stage2.vae]
    assert all(model.dtype == torch_dtype for model in models)
    assert pipe.pq_map.surgery.dtype == torch_dtype
    image = _image()
    out = pipe(image, PROMPT, seed=3)
    assert out.stage1.ran and out.stage2_steps > 0
    assert np.isfinite(out.pq.map).all() and np.isfinite(out.aq.defect_map).all()
    assert math.isfinite(out.pq.score) and math.isfinite(out.aq.score)
    refined = np.asarray(out.image, dtype=np.float32)
    assert refined.std() > 10 and not np.array_equal(refined, np.asarray(image, dtype=np.float32))


def test_cpu_offload_runs_every_model_through_its_offload_hook():
    """With model CPU offload a model is moved onto the GPU by a hook on its forward (or on the
    VAE's encode/decode): PASD's tiled VAE must go through it too."""
    image = _image(seed=1)
    plain = GRefinePipeline.from_pretrained(_tiny_config())(image, PROMPT, seed=2)
    pipe = GRefinePipeline.from_pretrained(_tiny_config(cpu_offload=True))
    calls: dict[str, int] = {}
    models = {
        "stage1 unet": pipe.stage1.pipe.unet,
        "stage1 vae": pipe.stage1.pipe.vae,
        "stage2 unet": pipe.stage2.unet,
        "stage2 controlnet": pipe.stage2.controlnet,
        "stage2 vae": pipe.stage2.vae,
        "stage2 text encoder": pipe.stage2.text_encoder,
    }
    for name, model in models.items():
        hook = model._hf_hook
        original = hook.pre_forward

        def counting(module, *args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(module, *args, **kwargs)

        hook.pre_forward = counting
    out = pipe(image, PROMPT, seed=2)
    assert set(calls) == set(models)
    assert np.array_equal(np.asarray(out.image), np.asarray(plain.image))


def test_nan_pixels_of_stage_one_are_refused():
    sdxl = build_tiny_sdxl_inpaint_pipeline()
    with torch.no_grad():
        sdxl.vae.decoder.conv_out.bias.fill_(float("nan"))  # what an fp16 overflow leaves behind
    image = _image(seed=4)
    mask = binarize(np.zeros((48, 72), np.float32), np.zeros((48, 72), np.float32), perceptual_bound=0.5, alignment_bound=0.5)
    with pytest.raises(NonFiniteImageError, match="stage 1.*stage1.vae"):
        InpaintStage1(sdxl, resolution=None)(image, PROMPT, mask, strength=0.5, num_steps=1, seed=0)


def test_nan_pixels_of_stage_two_are_refused():
    stage2 = build_tiny_pasd_stage2()
    with torch.no_grad():
        stage2.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteImageError, match="stage 2.*bf16 or fp32"):
        stage2(_image(seed=5), PROMPT, strength=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
