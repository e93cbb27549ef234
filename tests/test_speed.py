"""The full-size random architectures the benchmarks time are the published ones (meta device)."""
from __future__ import annotations

import json

import torch
from diffusers import UNet2DConditionModel

from grefine.eval.speed import SD15_UNET_CONFIG, SDXL_INPAINT_UNET_CONFIG
from grefine.refine.pasd import PASDUNet2DConditionModel
from tests.conftest import REPO


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sdxl_inpainting_unet_has_sdxl_size():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_INPAINT_UNET_CONFIG)
    assert unet.conv_in.in_channels == 9
    assert 2.55e9 < _params(unet) < 2.58e9  # SDXL's UNet: 2.57 B parameters


def test_sd15_config_is_the_one_of_the_pasd_manifest():
    manifest = json.loads((REPO / "tests" / "data" / "pasd_sd15_manifest.json").read_text())
    with torch.device("meta"):
        ours = PASDUNet2DConditionModel(**SD15_UNET_CONFIG)
        theirs = PASDUNet2DConditionModel.from_config(manifest["unet_config"])
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
