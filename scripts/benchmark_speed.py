#!/usr/bin/env python
"""Per-stage seconds and peak GPU memory of the whole G-Refine pipeline, per image.

    python scripts/benchmark_speed.py --random-weights [--sizes 512 1024] [--images 3] [--device cuda]

Full-size architectures (CLIP ViT-B/16 for both maps, SDXL-inpainting, SD1.5 + PASD) with
random weights in fp16 (:mod:`grefine.eval.speed`); speed and memory do not depend on weight
values. The mask's perceptual bound is raised (``--perceptual-bound``) so that stage 1 always runs.
Besides the pipeline's own timings, forward hooks (with CUDA synchronisation) time every UNet,
ControlNet and VAE pass: the rest — maps, parsing, mask, text encoders, pre/post-processing,
I/O — is the overhead, whose goal is at most 10% of the total. ``--tiny`` runs tiny random
components on the CPU (smoke test of this script).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from grefine.config import GRefineConfig  # noqa: E402
from grefine.pipeline import GRefinePipeline  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-weights", action="store_true", required=True, help="random full-size weights (no download)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square image sides")
    parser.add_argument("--images", type=int, default=3, help="timed images per size (after one warm-up)")
    parser.add_argument("--total-steps", type=int, default=20, help="n1 + n2 (paper: 20)")
    parser.add_argument("--perceptual-bound", type=float, default=0.9, help="high, so that stage 1 runs on random maps")
    parser.add_argument("--tiny", action="store_true", help="tiny components on CPU (smoke test)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> GRefinePipeline:
    config = GRefineConfig.from_dict(
        {
            "device": str(device),
            "total_steps": args.total_steps,
            "mask": {"perceptual_bound": args.perceptual_bound},
            "stage1": {"resolution": None},
            "stage2": {"strength": 0.1},
        },
        source="benchmark",
    )
    if args.tiny:
        tiny = GRefineConfig.from_yaml(REPO / "configs" / "tiny-random.yaml")
        tiny.total_steps, tiny.mask.perceptual_bound = args.total_steps, args.perceptual_bound
        return GRefinePipeline.from_pretrained(tiny)
    import open_clip

    from grefine.eval.speed import (
        build_random_pasd_stage2,
        build_random_sdxl_inpaint_pipeline,
    )
    from grefine.maps.aq_map import AQMap
    from grefine.maps.pq_map import PQMap
    from grefine.refine.stage1 import InpaintStage1

    precision = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    clip = open_clip.create_model("ViT-B-16", pretrained=None, device=device, precision=precision).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    embeddings = REPO.parent / "shared" / "pq_embeddings"
    pq_map = PQMap(clip, tokenizer, embeddings if embeddings.is_dir() else None).to(device)
    aq_map = AQMap(clip, tokenizer).to(device)
    stage1 = InpaintStage1(build_random_sdxl_inpaint_pipeline(device, dtype), resolution=None)
    stage2 = build_random_pasd_stage2(device, dtype, process_size=None)
    for pipe in (stage1.pipe, stage2):
        pipe.set_progress_bar_config(disable=True)
    return GRefinePipeline(pq_map, aq_map, stage1, stage2, config)


class DiffusionClock:
    """Sums the wall time of every UNet / ControlNet / VAE encoder+decoder forward."""

    def __init__(self, pipeline: GRefinePipeline, device: torch.device) -> None:
        self.device, self.seconds, self._starts = device, 0.0, {}
        modules = [pipeline.stage1.pipe.unet, pipeline.stage1.pipe.vae.encoder, pipeline.stage1.pipe.vae.decoder]
        if pipeline.stage2 is not None:
            modules += [pipeline.stage2.unet, pipeline.stage2.controlnet, pipeline.stage2.vae.encoder, pipeline.stage2.vae.decoder]
        for module in modules:
            module.register_forward_pre_hook(self._start)
            module.register_forward_hook(self._stop)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _start(self, module, *_):
        self._sync()
        self._starts[id(module)] = time.perf_counter()

    def _stop(self, module, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._starts.pop(id(module))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    pipeline = build(args, device, dtype)
    clock = DiffusionClock(pipeline, device)
    prompt = "a cat wearing a red hat sitting on a wooden table, soft lighting"
    rng = np.random.default_rng(0)
    print(f"G-Refine {'tiny' if args.tiny else 'full-size'} random weights, {device}, {dtype}, {args.total_steps} steps")
    header = f"{'size':>5} {'maps s':>7} {'mask s':>7} {'stage1 s':>9} {'stage2 s':>9} {'total s':>8} {'diffusion s':>12} {'overhead':>9} {'peak GiB':>9}"
    print(header)
    for side in args.sizes:
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        pipeline(image, prompt, seed=0)  # warm-up
        rows = []
        for index in range(args.images):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            clock.seconds = 0.0
            start = time.perf_counter()
            out = pipeline(image, prompt, seed=index)
            if device.type == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            rows.append((out.timings["maps"], out.timings["mask"], out.timings["stage1"], out.timings["stage2"], total, clock.seconds, peak))
        m = [statistics.median(column) for column in zip(*rows)]
        overhead = 1.0 - m[5] / m[4]
        print(f"{side:>5} {m[0]:>7.3f} {m[1]:>7.3f} {m[2]:>9.3f} {m[3]:>9.3f} {m[4]:>8.3f} {m[5]:>12.3f} {overhead:>8.1%} {m[6]:>9.2f}")


if __name__ == "__main__":
    main()
