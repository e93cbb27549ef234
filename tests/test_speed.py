"""The full-size random architectures the benchmarks time are the published ones (meta device)."""
from __future__ import annotations

import json

import torch
from diffusers import UNet2DConditionModel

from grefine.bench.speed import SD15_UNET_CONFIG, SDXL_INPAINT_UNET_CONFIG
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


def _benchmark_script():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("benchmark_speed", REPO / "scripts" / "benchmark_speed.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up
    spec.loader.exec_module(script)
    return script


def test_speed_benchmark_prints_every_figure_beside_the_bare_unet_bound(capsys):
    script = _benchmark_script()
    argv = ["--random-weights", "--tiny", "--device", "cpu", "--sizes", "48", "--images", "1", "--total-steps", "4", "--fuse-qkv"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "speed={'fuse_qkv': True}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for stage in ("total", "stage1", "stage2"):
        assert "| bare" in lines[stage] and "| x" in lines[stage] and "peak n/a" in lines[stage]
    assert "(SDXL UNet, 2 steps)" in lines["stage1"] and "(PASD ControlNet + UNet, 2 steps)" in lines["stage2"]
    assert "non-diffusion overhead" in lines["diffusion"]


def test_speed_benchmark_refuses_bad_switches_before_building(capsys):
    script = _benchmark_script()
    argv = ["--random-weights", "--tiny", "--device", "cpu", "--compile", "unet", "--cpu-offload"]
    assert script.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "speed.compile cannot be combined with cpu_offload" in err[0]
