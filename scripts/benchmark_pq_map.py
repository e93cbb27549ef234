#!/usr/bin/env python
"""PQ-Map throughput (maps per second) with a full-size CLIP ViT-B/16 and random weights.

    python scripts/benchmark_pq_map.py --random-weights [--device cuda] [--dtype fp16]

Speed and memory do not depend on the weight values, so a randomly initialised ViT-B/16
(``open_clip.create_model("ViT-B-16", pretrained=None)``) stands in for the real one. Measured:
the whole ``PQMap`` call (pre-processing, VVV image tower, Eq. 3, bicubic resize and
normalisation of the maps) at 224² for batch 1 and 32, and at the images' native size
(``input_size="native"``, batch 1). ``--tiny`` uses a tiny model (CPU smoke test).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from grefine.maps.pq_map import PQMap  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-weights", action="store_true", required=True, help="random weights (the only mode: no download)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="fp32 is forced on CPU")
    parser.add_argument("--embeddings", default=str(REPO.parent / "shared" / "pq_embeddings"), help="PQ-*.pth folder ('none': text pairs)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--native", type=int, nargs="+", default=[512, 1024], help="native square sizes to time at batch 1")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="tiny random CLIP (CPU smoke test)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device) -> tuple[PQMap, PQMap]:
    if args.tiny:
        from grefine.tiny import build_tiny_open_clip

        model, tokenizer = build_tiny_open_clip()
        embeddings, blocks = None, 2
    else:
        import open_clip

        precision = "fp32" if device.type == "cpu" else args.dtype
        model = open_clip.create_model(args.model, pretrained=None, device=device, precision=precision).eval()
        tokenizer = open_clip.get_tokenizer(args.model)
        embeddings = None if args.embeddings == "none" or not Path(args.embeddings).is_dir() else args.embeddings
        blocks = 6
    fixed = PQMap(model, tokenizer, embeddings, num_blocks=blocks).to(device)
    native = PQMap(model, tokenizer, fixed.prompts, num_blocks=blocks, input_size="native").to(device)
    return fixed, native


def timed(pq_map: PQMap, images: list[Image.Image], repeats: int, device: torch.device) -> tuple[float, float]:
    """(maps per second, peak GPU memory in GiB) over ``repeats`` calls after one warm-up."""
    pq_map(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        pq_map(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return len(images) * repeats / seconds, peak


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    fixed, native = build(args, device)
    rng = np.random.default_rng(0)
    image = lambda side: Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))  # noqa: E731
    print(f"PQ-Map {'tiny' if args.tiny else args.model} random weights, {device}, {args.dtype if device.type != 'cpu' else 'fp32'}")
    print(f"{'input':>22} {'batch':>5} {'maps/s':>9} {'peak GiB':>9}")
    for batch in args.batches:
        rate, peak = timed(fixed, [image(512) for _ in range(batch)], args.repeats, device)
        print(f"{'224x224 (from 512²)':>22} {batch:>5} {rate:>9.1f} {peak:>9.2f}")
    for side in args.native:
        rate, peak = timed(native, [image(side)], args.repeats, device)
        print(f"{f'native {side}x{side}':>22} {1:>5} {rate:>9.1f} {peak:>9.2f}")


if __name__ == "__main__":
    main()
