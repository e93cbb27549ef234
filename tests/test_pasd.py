"""Stage 2 (PASD restoration): models, checkpoint compatibility, sampling loop, helpers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grefine.refine.pasd import (
    PASDCheckpointMismatchError,
    PASDControlNetModel,
    PASDStage2,
    PASDUNet2DConditionModel,
    PASDWeightsNotFoundError,
    wavelet_color_fix,
)
from grefine.refine.pasd.loading import load_pasd_model
from grefine.refine.pasd.vae_tiling import tiled_apply
from grefine.tiny import (
    TINY_PASD_UNET_CONFIG,
    build_tiny_pasd_models,
    build_tiny_pasd_stage2,
)

MANIFEST = Path(__file__).parent / "data" / "pasd_sd15_manifest.json"


@pytest.fixture(scope="module")
def stage2() -> PASDStage2:
    return build_tiny_pasd_stage2(seed=0)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _run(stage2: PASDStage2, image: Image.Image, strength: float = 0.5, seed: int = 0) -> np.ndarray:
    out = stage2(image, "a red car", strength=strength, num_inference_steps=4, generator=torch.Generator().manual_seed(seed))
    return np.asarray(out, dtype=np.float64)


def test_full_size_state_dicts_match_authors_manifest() -> None:
    """SD1.5-size models built on the meta device have PASD's exact keys and shapes (the manifest was
    generated from the authors' classes, github.com/yangxy/PASD, with diffusers 0.29.2)."""
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        unet = PASDUNet2DConditionModel.from_config(manifest["unet_config"])
        controlnet = PASDControlNetModel.from_unet(unet, load_weights_from_unet=False)
    for name, model in (("unet", unet), ("controlnet", controlnet)):
        shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
        assert shapes == manifest[name], name
    assert any(".pixel_attentions." in key for key in manifest["unet"])
    assert any(".to_rgbs." in key for key in manifest["controlnet"])


def test_save_and_load_round_trip_with_strict_keys(tmp_path: Path) -> None:
    unet, controlnet = build_tiny_pasd_models(seed=1)
    unet.save_pretrained(tmp_path / "unet")
    controlnet.save_pretrained(tmp_path / "controlnet")
    loaded_unet = load_pasd_model(PASDUNet2DConditionModel, tmp_path, "unet")
    loaded_controlnet = load_pasd_model(PASDControlNetModel, tmp_path, "controlnet")
    for original, loaded in ((unet, loaded_unet), (controlnet, loaded_controlnet)):
        assert type(loaded) is type(original)
        expected, actual = original.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected)

    latents, text = torch.randn(1, 4, 9, 6), torch.randn(1, 5, TINY_PASD_UNET_CONFIG["cross_attention_dim"])
    image = torch.rand(1, 3, 72, 48)
    with torch.no_grad():
        outputs = []
        for net, cnet in ((unet, controlnet), (loaded_unet, loaded_controlnet)):
            down, mid = cnet(latents, 10, encoder_hidden_states=text, controlnet_cond=image, return_dict=False)
            outputs.append(net(latents, 10, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)


def test_pixel_aware_attention_reads_controlnet_residuals() -> None:
    """The ControlNet residuals reach the up blocks through the PACA modules, not only the skips."""
    unet, controlnet = build_tiny_pasd_models(seed=2)
    latents, text = torch.randn(1, 4, 8, 8), torch.randn(1, 5, TINY_PASD_UNET_CONFIG["cross_attention_dim"])
    with torch.no_grad():
        down, mid = controlnet(latents, 10, encoder_hidden_states=text, controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)
        with_paca = unet(latents, 10, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        for block in unet.up_blocks:
            for module in block.pixel_attentions:
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
        without_paca = unet(latents, 10, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        rgbs = controlnet.conditioning_rgbs(torch.rand(1, 3, 64, 64))
    assert not torch.allclose(with_paca, without_paca)
    assert [tuple(rgb.shape) for rgb in rgbs] == [(1, 3, 32, 32), (1, 3, 16, 16), (1, 3, 8, 8)]


@pytest.mark.parametrize("size", [(70, 45), (64, 64), (33, 90)])
def test_stage2_runs_on_cpu_and_keeps_the_input_size(stage2: PASDStage2, size: tuple[int, int]) -> None:
    image = _image(*size)
    out = stage2(image, "a red car", strength=0.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.mode == "RGB" and out.size == size
    assert not np.array_equal(np.asarray(out), np.asarray(image))


def test_stage2_is_deterministic_given_a_generator_and_depends_on_strength(stage2: PASDStage2) -> None:
    image = _image(48, 40)
    first, second = _run(stage2, image, seed=3), _run(stage2, image, seed=3)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, _run(stage2, image, seed=4))
    assert not np.array_equal(first, _run(stage2, image, strength=1.0, seed=3))


@pytest.mark.parametrize("strength", [0.0, 0.1])  # 0.1 * 4 steps rounds to 0 steps
def test_zero_steps_return_the_input(stage2: PASDStage2, strength: float) -> None:
    image = _image(70, 45)
    out = stage2(image, "a red car", strength=strength, num_inference_steps=4)
    assert out.size == image.size and np.array_equal(np.asarray(out), np.asarray(image))


def test_stage2_rejects_bad_arguments(stage2: PASDStage2) -> None:
    with pytest.raises(ValueError, match="strength"):
        stage2(_image(16, 16), "x", strength=1.5, num_inference_steps=4)
    with pytest.raises(ValueError, match="color_fix"):
        build_tiny_pasd_stage2(color_fix="histogram")
    with pytest.raises(ValueError, match="encoder_tile_size"):
        build_tiny_pasd_stage2(encoder_tile_size=100)


def test_tiled_vae_path_runs_and_keeps_size() -> None:
    tiled = build_tiny_pasd_stage2(seed=0, encoder_tile_size=32, decoder_tile_size=3)
    out = tiled(_image(70, 45), "a red car", strength=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.size == (70, 45)


@pytest.mark.parametrize("tile,overlap", [(16, 8), (24, 8), (40, 16)])
def test_tiled_apply_equals_untiled_for_tile_aligned_local_ops(tile: int, overlap: int) -> None:
    x = torch.randn(1, 3, 56, 72)
    encoded = tiled_apply(lambda t: F.avg_pool2d(t, 8), x, tile, overlap, 1 / 8)
    assert torch.allclose(encoded, F.avg_pool2d(x, 8), atol=1e-6)
    z = torch.randn(1, 4, 7, 9)
    upsample = lambda t: F.interpolate(t, scale_factor=8, mode="nearest")
    assert torch.allclose(tiled_apply(upsample, z, 3, 1, 8), upsample(z), atol=1e-6)


def test_wavelet_color_fix_removes_a_colour_cast_and_keeps_detail() -> None:
    reference = torch.rand(1, 3, 40, 40) * 0.5 + 0.25
    cast = reference + torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    assert torch.allclose(wavelet_color_fix(cast, reference), reference, atol=1e-5)
    detail = reference + 0.1 * torch.randn_like(reference)
    assert not torch.allclose(wavelet_color_fix(detail, reference), reference, atol=1e-2)


def test_from_pretrained_loads_local_folders(stage2: PASDStage2, tmp_path: Path) -> None:
    base, pasd = tmp_path / "sd15", tmp_path / "pasd"
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(stage2, name).save_pretrained(base / name)
    stage2.unet.save_pretrained(pasd / "unet")
    stage2.controlnet.save_pretrained(pasd / "controlnet")
    loaded = PASDStage2.from_pretrained(base, pasd, process_size=None, device="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet) is PASDUNet2DConditionModel and loaded.config.guidance_scale == 9.0
    image = _image(40, 32)
    assert np.array_equal(_run(stage2, image), _run(loaded, image))


def test_missing_weights_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PASDWeightsNotFoundError, match="checkpoints/README.md") as error:
        PASDStage2.from_pretrained(tmp_path, tmp_path / "pasd")
    assert str(tmp_path) in str(error.value) and isinstance(error.value, FileNotFoundError)
    with pytest.raises(PASDWeightsNotFoundError, match="no-such-org/no-such-model"):
        PASDStage2.from_pretrained("no-such-org/no-such-model", "no-such-org/no-such-pasd")
    with pytest.raises(PASDWeightsNotFoundError, match="does not exist"):
        PASDStage2.from_pretrained(tmp_path / "missing", tmp_path / "pasd")


def test_a_checkpoint_without_pixel_attention_is_rejected(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel(**TINY_PASD_UNET_CONFIG).save_pretrained(tmp_path / "unet")
    with pytest.raises(PASDCheckpointMismatchError, match="pixel_attentions"):
        load_pasd_model(PASDUNet2DConditionModel, tmp_path, "unet")
