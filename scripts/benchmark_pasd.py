"""Benchmark one PASD denoising step against its cost floor (plain SD1.5 UNet + diffusers ControlNet).

Full-size SD1.5 configs with random weights (no download), fp16 by default. For each resolution
one "step" is what G-Refine's stage 2 runs per iteration: ControlNet + UNet on a batch of 2
(classifier-free guidance). Reports seconds per step (median of ``--repeats`` after
``--warmup``) and peak accelerator memory, and prints a JSON line per measurement.

    python scripts/benchmark_pasd.py --device cuda                 # 512² and 1024², fp16
    python scripts/benchmark_pasd.py --device cpu --tiny --sizes 64 # smoke test of the script
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.bench.speed import SD15_UNET_CONFIG
from grefine.refine.pasd import PASDControlNetModel, PASDUNet2DConditionModel


def _unet_config(tiny: bool) -> dict:
    if not tiny:
        return SD15_UNET_CONFIG
    from grefine.tiny import TINY_PASD_UNET_CONFIG

    return TINY_PASD_UNET_CONFIG


def _build(kind: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(unet, controlnet) for ``kind`` in {'pasd', 'sd15+controlnet'}, random weights."""
    unet_class, controlnet_class = (
        (PASDUNet2DConditionModel, PASDControlNetModel) if kind == "pasd" else (UNet2DConditionModel, ControlNetModel)
    )
    extra = {"conditioning_embedding_out_channels": (8, 16, 16, 32)} if tiny else {}
    with device:  # random initialisation directly on the device
        unet = unet_class(**_unet_config(tiny))
        controlnet = controlnet_class.from_unet(unet, **extra)
    return unet.to(dtype).eval(), controlnet.to(dtype).eval()


def _step_fn(unet, controlnet, size: int, device: torch.device, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """One guided denoising step (batch 2) at ``size``² pixels."""
    latents = torch.randn(2, 4, size // 8, size // 8, device=device, dtype=dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    image = torch.rand(2, 3, size, size, device=device, dtype=dtype)
    timestep = torch.tensor(500, device=device)

    def step() -> torch.Tensor:
        down, mid = controlnet(latents, timestep, encoder_hidden_states=text, controlnet_cond=image, return_dict=False)
        return unet(latents, timestep, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(kind: str, size: int, args: argparse.Namespace) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet, controlnet = _build(kind, args.tiny, device, dtype)
    step = _step_fn(unet, controlnet, size, device, dtype)
    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    params = sum(p.numel() for p in [*unet.parameters(), *controlnet.parameters()]) / 1e6
    del unet, controlnet, step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": kind,
        "size": size,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else args.device,
        "params_M": round(params, 1),
        "s_per_step": round(statistics.median(times), 4),
        "peak_mem_GiB": peak,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square image sides in pixels")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="tiny configs (smoke test of the script on CPU)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.dtype == "float16":
        args.dtype = "float32"
    rows = [measure(kind, size, args) for size in args.sizes for kind in ("sd15+controlnet", "pasd")]
    for row in rows:
        print(json.dumps(row))
    print(f"\n{'size':>6} {'model':>16} {'params (M)':>11} {'s/step':>8} {'peak GiB':>9}")
    for row in rows:
        print(f"{row['size']:>6} {row['model']:>16} {row['params_M']:>11} {row['s_per_step']:>8} {row['peak_mem_GiB']!s:>9}")


if __name__ == "__main__":
    main()
