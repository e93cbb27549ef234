"""The ``speed`` config section (grefine.refine.speedups) and stage 1's VAE choice, on the tiny
models: every switch off changes nothing, fused QKV and channels-last change outputs only by
rounding, torch.compile wraps the right modules, bad values are refused before anything loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0
from PIL import Image

from grefine import GRefinePipeline
from grefine.config import ConfigError, GRefineConfig, SpeedConfig
from grefine.refine.speedups import apply_speed, diffusion_models
from grefine.refine.stage1 import InpaintStage1, ModelUnavailable
from grefine.tiny import build_tiny_sdxl_inpaint_pipeline
from grefine.weights import required_weights
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny-random.yaml"
PROMPT = "a red cube on a blue table"


def _config(speed=None, **top) -> GRefineConfig:
    data = yaml.safe_load(TINY.read_text())
    if speed is not None:
        data["speed"] = speed
    return GRefineConfig.from_dict({**data, **top}, source="tiny+speed")


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 72, 3), dtype=np.uint8))


def _refine(config: GRefineConfig) -> tuple[GRefinePipeline, np.ndarray]:
    pipe = GRefinePipeline.from_pretrained(config)
    return pipe, np.asarray(pipe(_image(), PROMPT, seed=1).image).astype(np.int16)


def _models(pipe: GRefinePipeline) -> dict[str, list[torch.nn.Module]]:
    return diffusion_models([pipe.stage1.pipe, pipe.stage2])


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """Today's output: the pipeline built from a config without a ``speed`` section."""
    return _refine(_config())[1]


def test_every_switch_off_reproduces_todays_output_bit_for_bit(reference):
    off = {"compile": [], "compile_mode": None, "compile_fullgraph": False, "compile_dynamic": None, "fuse_qkv": False, "channels_last": False}
    config = _config(off)
    assert config.speed == SpeedConfig() == GRefineConfig.from_yaml(REPO / "configs" / "default.yaml").speed
    pipe, image = _refine(config)
    assert np.array_equal(image, reference)
    for model in (model for group in _models(pipe).values() for model in group):
        assert "forward" not in vars(model) and "forward" not in vars(getattr(model, "decoder", model))
        assert not any(isinstance(p, FusedAttnProcessor2_0) for p in model.attn_processors.values())


def test_fused_qkv_projections_are_read_and_change_outputs_by_rounding_only(reference):
    pipe, image = _refine(_config({"fuse_qkv": True}))
    models = _models(pipe)
    assert [len(models[name]) for name in ("unet", "controlnet", "vae")] == [2, 1, 2]
    for model in (model for group in models.values() for model in group):
        attentions = [m for m in model.modules() if isinstance(m, Attention)]
        assert attentions and all(hasattr(m, "to_kv" if m.is_cross_attention else "to_qkv") for m in attentions)
        assert all(isinstance(p, FusedAttnProcessor2_0) for p in model.attn_processors.values())
    assert np.abs(image - reference).max() <= 2 and np.abs(image - reference).mean() < 0.01


def test_channels_last_changes_the_layout_and_outputs_by_rounding_only(reference):
    pipe, image = _refine(_config({"channels_last": True}))
    for model in (model for group in _models(pipe).values() for model in group):
        convolutions = [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
        assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert np.abs(image - reference).max() <= 2 and np.abs(image - reference).mean() < 0.01


def test_compile_wraps_the_named_models_and_the_compiled_module_computes_the_same():
    """Compiling the whole tiny pipeline takes minutes on two cores (even with the "eager"
    backend), so this checks which modules are compiled and runs one compiled VAE decoder."""
    pipe = GRefinePipeline.from_pretrained(_config())
    speed = SpeedConfig(compile=["unet", "vae"], compile_backend="eager", compile_mode="max-autotune")
    decoder = pipe.stage1.pipe.vae.decoder
    latents = torch.randn(1, 4, 6, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = decoder(latents)
    apply_speed(speed, [pipe.stage1.pipe, pipe.stage2])
    compiled = {
        "stage1 unet": pipe.stage1.pipe.unet,
        "stage2 unet": pipe.stage2.unet,
        "stage1 vae encoder": pipe.stage1.pipe.vae.encoder,
        "stage1 vae decoder": decoder,
        "stage2 vae encoder": pipe.stage2.vae.encoder,
        "stage2 vae decoder": pipe.stage2.vae.decoder,
    }
    for name, module in compiled.items():
        assert hasattr(vars(module).get("forward"), "_torchdynamo_orig_callable"), name
    for module in (pipe.stage2.controlnet, pipe.stage1.pipe.text_encoder, pipe.stage2.text_encoder, pipe.stage1.pipe.vae):
        assert "forward" not in vars(module)
    with torch.no_grad():
        assert torch.equal(decoder(latents), eager)


@pytest.mark.parametrize(
    "speed, top, match",
    [
        ({"compile": ["unet", "text_encoder"]}, {}, r"speed\.compile must be one of unet, controlnet, vae"),
        ({"compile": "unet"}, {}, r"speed\.compile must"),
        ({"compile": ["vae", "vae"]}, {}, r"speed\.compile names a model twice"),
        ({"compile_mode": "fastest"}, {}, r"speed\.compile_mode must be one of null, default, reduce-overhead"),
        ({"compile_fullgraph": "yes please"}, {}, r"speed\.compile_fullgraph must be true or false"),
        ({"compile_dynamic": 1}, {}, r"speed\.compile_dynamic must"),
        ({"fuse_qkv": "on"}, {}, r"speed\.fuse_qkv must"),
        ({"channels_last": None}, {}, r"speed\.channels_last must"),
        ({"compile": ["unet"], "compile_backend": "turbo"}, {}, r"speed\.compile_backend must be a torch\.compile backend.*inductor"),
        ({"compile": ["unet"]}, {"cpu_offload": True}, r"speed\.compile cannot be combined with cpu_offload"),
        ({"jit": True}, {}, r"unknown key\(s\) \['jit'\] at section 'speed'"),
        ({}, {"dtype": "fp8"}, r"dtype must be one of auto, fp16, bf16, fp32"),
    ],
)
def test_bad_speed_values_are_refused_at_load(speed, top, match):
    with pytest.raises(ConfigError, match=match):
        _config(speed, **top)


def test_a_replacement_vae_is_loaded_in_place_of_the_models_own(tmp_path):
    sdxl = build_tiny_sdxl_inpaint_pipeline()
    sdxl.vae.register_to_config(force_upcast=True)  # a checkpoint whose own VAE overflows in fp16
    sdxl.save_pretrained(tmp_path / "inpaint")
    fixed = AutoencoderKL.from_config(sdxl.vae.config, force_upcast=False)
    with torch.no_grad():
        for parameter in fixed.parameters():
            parameter.normal_()
    fixed.save_pretrained(tmp_path / "vae-fp16-fix")
    own = InpaintStage1.from_pretrained(str(tmp_path / "inpaint"), device="cpu", resolution=None)
    replaced = InpaintStage1.from_pretrained(str(tmp_path / "inpaint"), device="cpu", resolution=None, vae=str(tmp_path / "vae-fp16-fix"))
    assert own.pipe.vae.config.force_upcast and not replaced.pipe.vae.config.force_upcast
    assert torch.equal(replaced.pipe.vae.decoder.conv_out.weight, fixed.decoder.conv_out.weight)
    assert torch.equal(replaced.pipe.unet.conv_in.weight, own.pipe.unet.conv_in.weight)
    with pytest.raises(ModelUnavailable, match=r"stage1\.vae"):
        InpaintStage1.from_pretrained(str(tmp_path / "inpaint"), device="cpu", vae=str(tmp_path / "no-such-vae"))


def test_the_replacement_vae_is_in_the_weights_preflight():
    config = GRefineConfig.from_dict({"stage1": {"vae": "madebyollin/sdxl-vae-fp16-fix"}})
    listed = {w.config_key: w.source for w in required_weights(config)}
    assert listed["stage1.vae"] == "madebyollin/sdxl-vae-fp16-fix"
    assert "stage1.vae" not in {w.config_key for w in required_weights(GRefineConfig())}
    with pytest.raises(ConfigError, match=r"stage1\.vae must"):
        GRefineConfig.from_dict({"stage1": {"vae": " "}})


@pytest.mark.parametrize("force_upcast, decoded_in", [(True, torch.float32), (False, torch.float16)])
def test_in_fp16_a_vae_that_asks_for_it_decodes_in_fp32(force_upcast, decoded_in):
    """diffusers' handling of the SDXL VAE's fp16 overflow, which stage 1 keeps: a VAE whose config
    sets ``force_upcast`` runs in fp32; an fp16-fixed one (``force_upcast: false``) in fp16."""
    from grefine.refine.mask import binarize

    sdxl = build_tiny_sdxl_inpaint_pipeline()
    sdxl.vae.register_to_config(force_upcast=force_upcast)
    sdxl.to(dtype=torch.float16)
    seen = []
    sdxl.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    mask = binarize(np.zeros((48, 72), np.float32), np.zeros((48, 72), np.float32), perceptual_bound=0.5, alignment_bound=0.5)
    result = InpaintStage1(sdxl, resolution=None)(_image(2), PROMPT, mask, strength=0.5, num_steps=1, seed=0)
    assert result.ran and seen == [decoded_in] and sdxl.vae.dtype == torch.float16
