#!/usr/bin/env python
"""Per-image seconds of the whole G-Refine pipeline against its bare-UNet lower bound.

    python scripts/benchmark_speed.py --random-weights [--sizes 512 1024] [--images 3] [--device cuda]
        [--dtype fp16|bf16|fp32] [--compile unet controlnet vae] [--compile-mode max-autotune]
        [--fuse-qkv] [--channels-last] [--cpu-offload] [--vae-upcast]
    python scripts/benchmark_speed.py --random-weights --tiny --device cpu --sizes 64 --images 1 --total-steps 2

Full-size architectures (CLIP ViT-B/16 for both maps, SDXL-inpainting, SD1.5 + PASD) with random
weights (:mod:`grefine.bench.speed`); speed and memory do not depend on weight values. The mask's
perceptual bound is raised (``--perceptual-bound``) so that stage 1 always runs. ``--tiny`` runs
the tiny components of ``configs/tiny-random.yaml`` instead (a smoke test of this script).

For each size, after one warm-up image (which also compiles, with ``--compile``), ``--images``
images are timed (medians reported) and then, in the same run, the **bare-UNet lower bound**:
the denoisers alone — stage 1's SDXL UNet, stage 2's PASD ControlNet + UNet — replayed on the
very inputs they received, as many calls as the timed image made (same size, step count, batch
with guidance, dtype and speed switches), ``--images`` times (median). Every figure is printed
beside its bound and the ratio to it. Forward hooks (with CUDA synchronisation) also time every
UNet, ControlNet and VAE pass: the rest — maps, parsing, mask, text encoders, pre/post-processing,
colour fix — is the non-diffusion overhead, whose goal is at most 10 % of the total. Peak GPU memory is recorded per
stage (maps, stage 1, stage 2) and for the whole image. The speed switches are those of the
config's ``speed`` section (checked the same way, before anything is built).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

from grefine.config import COMPILE_MODES, COMPILE_TARGETS, ConfigError, GRefineConfig  # noqa: E402
from grefine.pipeline import GRefinePipeline, resolve_dtype  # noqa: E402

PROMPT = "a cat wearing a red hat sitting on a wooden table, soft lighting"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-weights", action="store_true", required=True, help="random full-size weights (no download)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"], help="auto: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square image sides")
    parser.add_argument("--images", type=int, default=3, help="timed images per size (after one warm-up)")
    parser.add_argument("--total-steps", type=int, default=20, help="n1 + n2 (paper: 20)")
    parser.add_argument("--perceptual-bound", type=float, default=0.9, help="high, so that stage 1 runs on random maps")
    parser.add_argument("--cpu-offload", action="store_true", help="accelerate model CPU offload of the diffusion pipelines")
    parser.add_argument("--vae-upcast", action="store_true", help="SDXL VAE with force_upcast (fp32 VAE passes in fp16), as a VAE without the fp16 fix")
    speed = parser.add_argument_group("speed switches (the config's speed section)")
    speed.add_argument("--compile", nargs="+", default=[], choices=COMPILE_TARGETS, help="models to torch.compile")
    speed.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile mode (default: torch's)")
    speed.add_argument("--compile-fullgraph", action="store_true")
    speed.add_argument("--compile-dynamic", choices=["true", "false"], help="torch.compile dynamic (default: automatic)")
    speed.add_argument("--compile-backend", default="inductor")
    speed.add_argument("--fuse-qkv", action="store_true", help="fused QKV projections")
    speed.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--tiny", action="store_true", help="tiny components (smoke test)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.total_steps < 2 or min(args.sizes) < 16:
        parser.error("need --images >= 1, --total-steps >= 2 and sizes >= 16")
    return args


def benchmark_config(args: argparse.Namespace) -> GRefineConfig:
    """The run's settings as a config, so that every value is checked as a config file's is."""
    speed = {
        "compile": list(args.compile),
        "compile_mode": args.compile_mode,
        "compile_fullgraph": args.compile_fullgraph,
        "compile_dynamic": None if args.compile_dynamic is None else args.compile_dynamic == "true",
        "compile_backend": args.compile_backend,
        "fuse_qkv": args.fuse_qkv,
        "channels_last": args.channels_last,
    }
    base = GRefineConfig.from_yaml(REPO / "configs" / "tiny-random.yaml") if args.tiny else GRefineConfig()
    return GRefineConfig.from_dict(
        {
            "device": args.device,
            "dtype": args.dtype,
            "total_steps": args.total_steps,
            "cpu_offload": args.cpu_offload,
            "pq_map": vars(base.pq_map),
            "aq_map": vars(base.aq_map),
            "mask": {**vars(base.mask), "perceptual_bound": args.perceptual_bound},
            "stage1": {**vars(base.stage1), "resolution": None},
            "stage2": vars(base.stage2),
            "speed": speed,
        },
        source="benchmark_speed.py arguments",
    )


def build(args: argparse.Namespace, config: GRefineConfig) -> GRefinePipeline:
    """The tiny pipeline of the config, or the full-size random architectures with its settings."""
    if args.tiny:
        pipeline = GRefinePipeline.from_pretrained(config)
        pipeline.stage1.pipe.vae.register_to_config(force_upcast=args.vae_upcast)
        return pipeline
    import open_clip

    from grefine.bench.speed import build_random_pasd_stage2, build_random_sdxl_inpaint_pipeline
    from grefine.maps.aq_map import AQMap
    from grefine.maps.pq_map import PQMap
    from grefine.refine.speedups import apply_speed
    from grefine.refine.stage1 import InpaintStage1, place_pipeline

    device = torch.device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    clip = open_clip.create_model("ViT-B-16", pretrained=None, device=device, precision=precision).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    embeddings = REPO.parent / "shared" / "pq_embeddings"
    pq_map = PQMap(clip, tokenizer, embeddings if embeddings.is_dir() else None)
    aq_map = AQMap(clip, tokenizer, text_cache=None)  # random weights: nothing worth keeping on disk
    home = torch.device("cpu") if config.cpu_offload else device
    sdxl = build_random_sdxl_inpaint_pipeline(home, dtype, vae_force_upcast=args.vae_upcast)
    stage2 = build_random_pasd_stage2(home, dtype, process_size=None)
    for pipe in (sdxl, stage2):
        pipe.set_progress_bar_config(disable=True)
        place_pipeline(pipe, device, config.cpu_offload)
    apply_speed(config.speed, [sdxl, stage2])
    return GRefinePipeline(pq_map, aq_map, InpaintStage1(sdxl, resolution=None), stage2, config)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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

    def _start(self, module, *_):
        synchronize(self.device)
        self._starts[id(module)] = time.perf_counter()

    def _stop(self, module, *_):
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._starts.pop(id(module))


@dataclass
class Denoiser:
    """One denoising model's calls: how many the last image made, and the first call's inputs."""

    name: str
    module: torch.nn.Module
    calls: int = 0
    inputs: tuple | None = None

    def record(self, module, args, kwargs) -> None:
        self.calls += 1
        if self.inputs is None:  # copies: CUDA-graph outputs (compile mode reduce-overhead) are reused
            self.inputs = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, (args, kwargs))


@dataclass
class UNetBound:
    """The bare-UNet lower bound of each stage: its denoisers alone, replayed on recorded inputs."""

    device: torch.device
    stages: dict[str, list[Denoiser]] = field(default_factory=dict)

    @classmethod
    def attach(cls, pipeline: GRefinePipeline, device: torch.device) -> "UNetBound":
        bound = cls(device, {"stage1": [Denoiser("SDXL UNet", pipeline.stage1.pipe.unet)]})
        if pipeline.stage2 is not None:
            bound.stages["stage2"] = [Denoiser("PASD ControlNet", pipeline.stage2.controlnet), Denoiser("PASD UNet", pipeline.stage2.unet)]
        for denoiser in (d for stage in bound.stages.values() for d in stage):
            denoiser.module.register_forward_pre_hook(denoiser.record, with_kwargs=True)
        return bound

    def reset(self, keep_inputs: bool = True) -> None:
        for denoiser in (d for stage in self.stages.values() for d in stage):
            denoiser.calls = 0
            if not keep_inputs:
                denoiser.inputs = None

    def steps(self) -> dict[str, int]:
        """UNet calls per stage in the last image (= denoising steps; CFG is in the batch)."""
        return {stage: denoisers[-1].calls for stage, denoisers in self.stages.items()}

    @torch.no_grad()
    def replay(self, steps: dict[str, int]) -> dict[str, float]:
        """Seconds of each stage's denoisers alone for ``steps`` calls each, on their recorded inputs."""
        seconds = {}
        for stage, denoisers in self.stages.items():
            recorded = [d for d in denoisers if d.inputs is not None]
            synchronize(self.device)
            start = time.perf_counter()
            for _ in range(steps.get(stage, 0)):
                for denoiser in recorded:
                    args, kwargs = denoiser.inputs
                    denoiser.module.forward(*args, **kwargs)  # forward: not counted by the hooks
            synchronize(self.device)
            seconds[stage] = time.perf_counter() - start
        return seconds


class StageMemory:
    """Peak GPU memory of each stage: the pipeline's maps / stage1 / stage2 calls, wrapped."""

    def __init__(self, pipeline: GRefinePipeline, device: torch.device) -> None:
        self.device, self.peaks = device, {}
        pipeline.maps = self._measured("maps", pipeline.maps)
        pipeline.stage1 = self._measured("stage1", pipeline.stage1)
        if pipeline.stage2 is not None:
            pipeline.stage2 = self._measured("stage2", pipeline.stage2)

    def _measured(self, stage: str, call: Callable) -> Callable:
        def measured(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result = call(*args, **kwargs)
            if self.device.type == "cuda":
                self.peaks[stage] = torch.cuda.max_memory_allocated() / 2**30
            return result

        return measured


@dataclass
class Measurement:
    """One timed image: seconds per stage, diffusion-model seconds, peak memory per stage."""

    seconds: dict[str, float]
    diffusion: float
    peaks: dict[str, float]


def measure(pipeline: GRefinePipeline, image: Image.Image, seed: int, clock: DiffusionClock, memory: StageMemory, device: torch.device) -> Measurement:
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock.seconds, memory.peaks = 0.0, {}
    start = time.perf_counter()
    out = pipeline(image, PROMPT, seed=seed)
    synchronize(device)
    total = time.perf_counter() - start
    seconds = {**{key: out.timings[key] for key in ("maps", "mask", "stage1", "stage2")}, "total": total}
    peaks = {**memory.peaks, "total": torch.cuda.max_memory_allocated() / 2**30} if device.type == "cuda" else {}
    return Measurement(seconds, clock.seconds, peaks)


def _gib(peaks: dict[str, float], key: str) -> str:
    return f"peak {peaks[key]:6.2f} GiB" if key in peaks else "peak n/a"


def report(side: int, runs: list[Measurement], bound: dict[str, float], steps: dict[str, int]) -> None:
    median = {key: statistics.median(run.seconds[key] for run in runs) for key in runs[0].seconds}
    peaks = {key: max(run.peaks[key] for run in runs) for key in runs[0].peaks}
    diffusion = statistics.median(run.diffusion for run in runs)
    bound_total = sum(bound.values())
    names = {"stage1": "SDXL UNet", "stage2": "PASD ControlNet + UNet"}

    def beside(seconds: float, floor: float) -> str:
        return f"| bare {floor:7.3f} s | x{seconds / floor:5.2f}" if floor > 0 else "| bare      -   |"

    print(f"\n{side}x{side}, median of {len(runs)} image(s):")
    print(f"  total    {median['total']:7.3f} s {beside(median['total'], bound_total)}   {_gib(peaks, 'total')}")
    print(f"  maps     {median['maps']:7.3f} s {'':30}  {_gib(peaks, 'maps')}")
    print(f"  mask     {median['mask']:7.3f} s")
    for stage in ("stage1", "stage2"):
        floor = bound.get(stage, 0.0)
        detail = f"  ({names[stage]}, {steps.get(stage, 0)} steps)" if stage in bound else ""
        print(f"  {stage}   {median[stage]:7.3f} s {beside(median[stage], floor)}   {_gib(peaks, stage)}{detail}")
    overhead = 1.0 - diffusion / median["total"]
    print(
        f"  diffusion models (UNets, ControlNet, VAEs) {diffusion:.3f} s {beside(diffusion, bound_total)}; "
        f"non-diffusion overhead {overhead:.1%} of the total (goal <= 10%)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = benchmark_config(args)
    except ConfigError as err:
        print(f"benchmark_speed.py: {err}", file=sys.stderr)
        return 2
    pipeline = build(args, config)
    device = torch.device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    clock = DiffusionClock(pipeline, device)
    bound = UNetBound.attach(pipeline, device)
    memory = StageMemory(pipeline, device)
    switches = {key: value for key, value in vars(config.speed).items() if value not in ([], None, False, "inductor")}
    print(
        f"G-Refine {'tiny' if args.tiny else 'full-size'} random weights, {device}, {dtype}, {config.total_steps} steps, "
        f"cpu_offload={config.cpu_offload}, vae_upcast={args.vae_upcast}, speed={switches or 'all off'}"
    )
    rng = np.random.default_rng(0)
    for side in args.sizes:
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        bound.reset(keep_inputs=False)
        pipeline(image, PROMPT, seed=0)  # warm-up (and compilation); records the denoisers' inputs
        runs = []
        for index in range(args.images):
            bound.reset()
            runs.append(measure(pipeline, image, index + 1, clock, memory, device))
        steps = bound.steps()
        bound.replay(steps)  # warm-up of the replay itself
        replays = [bound.replay(steps) for _ in range(args.images)]
        report(side, runs, {stage: statistics.median(r[stage] for r in replays) for stage in replays[0]}, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
