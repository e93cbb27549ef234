#!/usr/bin/env python
"""Does the folder runner keep the GPU busy? Folder-run time per image against the refiner's own time.

    python scripts/benchmark_runner.py [--images 16] [--size 1024] [--refine-seconds 1.0]
                                       [--metrics psnr] [--prefetch 0 2] [--keep DIR]

Writes ``--images`` JPEGs of ``--size``² (smooth random colour fields, as large as real outputs
when compressed), then refines the folder with :func:`grefine.run.runner.run_folder` once per
``--prefetch`` value. The refiner is a stand-in for the diffusion on a GPU: it waits
``--refine-seconds`` without holding the GIL (as a thread blocked on CUDA does) and returns a
changed image; everything else is the runner's real work (decoding, writing the refined image
and its JPEG metadata, the weight-free ``--metrics`` before and after). Prints, per prefetch, the
seconds per image and its ratio to ``--refine-seconds``: 1.00 means that decoding, writing and
scoring are hidden behind the diffusion (issue 13: a folder of N images costs about N times the
per-image diffusion time). With real models, compare ``scripts/refine.py --prefetch 0`` and
``--prefetch 2`` on the same folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.eval.metrics import check_metric_names, create_metrics  # noqa: E402
from grefine.run.runner import run_folder  # noqa: E402


@dataclass
class StandInResult:
    """What the runner needs of a refiner's result: the image and a summary row."""

    image: Image.Image

    def summary(self) -> dict[str, object]:
        return {"note": "stand-in refiner"}


@dataclass
class StandInRefiner:
    """Waits ``seconds`` (the GPU's share, GIL released) and brightens the image a little."""

    seconds: float

    def __call__(self, image: Image.Image, prompt: str, *, seed: int | None = None) -> StandInResult:
        time.sleep(self.seconds)
        return StandInResult(Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + 3, 0, 255).astype(np.uint8)))


def write_inputs(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` JPEGs of ``size``² with a prompt each (sidecar .txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.integers(0, 256, (size // 64 + 1, size // 64 + 1, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(folder / f"img{index:04d}.jpg", quality=95)
        (folder / f"img{index:04d}.txt").write_text(f"a test image number {index}\n", encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--images", type=int, default=16, help="images in the folder (default: 16)")
    parser.add_argument("--size", type=int, default=1024, help="side of each square image (default: 1024)")
    parser.add_argument("--refine-seconds", type=float, default=1.0, help="the stand-in refiner's time per image (default: 1.0, the issue's goal)")
    parser.add_argument("--metrics", default="psnr", help="weight-free metrics scored before and after (default: psnr; ssim costs ~6 s per 1024² image on a 2-core CPU); 'none' for none")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0, 2], help="prefetch values to compare (default: 0 2)")
    parser.add_argument("--keep", type=Path, help="keep the inputs and outputs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < 16 or args.refine_seconds < 0 or any(p < 0 for p in args.prefetch):
        parser.error("--images >= 1, --size >= 16, --refine-seconds >= 0 and every --prefetch >= 0, please.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [] if args.metrics == "none" else check_metric_names([m.strip() for m in args.metrics.split(",") if m.strip()], "--metrics")
    metrics, failures = create_metrics(names, device="cpu")
    if failures:
        print(f"benchmark_runner: metrics unavailable: {failures}", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="grefine-runner-"))
    try:
        write_inputs(root / "input", args.images, args.size)
        print(f"{args.images} images of {args.size}², stand-in refiner {args.refine_seconds:.2f} s/img, metrics: {', '.join(names) or 'none'}")
        for prefetch in args.prefetch:
            output = root / f"output-prefetch{prefetch}"
            shutil.rmtree(output, ignore_errors=True)
            start = time.perf_counter()
            summary = run_folder(StandInRefiner(args.refine_seconds), root / "input", output, metrics=metrics, metric_names=names, prefetch=prefetch, progress=False)
            per_image = (time.perf_counter() - start) / args.images
            if not summary.ok:
                print(f"benchmark_runner: {len(summary.failed)} image(s) failed: {next(iter(summary.failed.values()))}", file=sys.stderr)
                return 1
            ratio = per_image / args.refine_seconds if args.refine_seconds else float("nan")
            print(f"prefetch {prefetch}: {per_image:.3f} s/img, {ratio:.2f}x the refiner's time")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
