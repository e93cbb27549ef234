#!/usr/bin/env python
"""Cost of learning PQ-Map prompts (scripts/train_pq_map.py) with random weights: the one-off
feature pass per image and the optimisation step, and from them an epoch on a database.

    python scripts/benchmark_train_pq_map.py --random-weights [--device cuda] [--images 14000]

Speed does not depend on the weight values, so a randomly initialised CLIP of the real
architecture stands in (``open_clip.create_model(..., pretrained=None)``, fp32 as the trainer
runs). Measured: the image tower's cached CLS feature per image (PQ-Map pre-processing of a
512² image included, batches of 32, one decoding thread), and one training step (the prompt
pair through the text tower, forward and backward, Adam update). An epoch over N training
images costs ``ceil(N / batch) × step``; the feature pass is paid once per run.
``--tiny`` uses the tiny CLIP of the tests.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from grefine.maps.clip_surgery import vvv_surgery  # noqa: E402
from grefine.train.features import encode_images  # noqa: E402
from grefine.train.loss import clipiqa_plus_loss  # noqa: E402
from grefine.train.pq_prompts import QualityPromptLearner  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-weights", action="store_true", required=True, help="random weights (the only mode: no download)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=32, help="images for the feature timing")
    parser.add_argument("--steps", type=int, default=20, help="training steps to time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epoch-images", type=int, nargs="+", default=[4839, 14000], help="training-set sizes to estimate an epoch for")
    parser.add_argument("--tiny", action="store_true", help="the tiny random CLIP (CPU smoke test)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device):
    if args.tiny:
        from grefine.tiny import build_tiny_pq_clip

        model, tokenizer = build_tiny_pq_clip()
    else:
        import open_clip

        model = open_clip.create_model(args.model, pretrained=None, device=device, precision="fp32")
        tokenizer = open_clip.get_tokenizer(args.model)
    return model.to(device).eval().requires_grad_(False), tokenizer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def feature_seconds(model, images: int, device: torch.device) -> float:
    """Seconds per image of the cached-feature pass, after a warm-up batch."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(images):
            path = Path(folder) / f"{index}.png"
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        surgery = vvv_surgery(model, num_blocks=min(6, len(model.visual.transformer.resblocks)))  # PQ-Map's, as the trainer
        encode_images(surgery, paths[:4], workers=1, progress=False)
        synchronize(device)
        start = time.perf_counter()
        encode_images(surgery, paths, workers=1, progress=False)
        synchronize(device)
        return (time.perf_counter() - start) / images


def step_seconds(model, tokenizer, steps: int, batch_size: int, device: torch.device) -> float:
    """Seconds per optimisation step on cached features, after two warm-up steps."""
    learner = QualityPromptLearner.from_text_pair(model, tokenizer).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=2e-3)
    features = torch.nn.functional.normalize(torch.randn(batch_size, model.text_projection.shape[-1], device=device), dim=-1)
    targets = torch.rand(batch_size, device=device)

    def step() -> None:
        loss = clipiqa_plus_loss(torch.sigmoid(features @ learner(model)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    model, tokenizer = build(args, device)
    per_image = feature_seconds(model, args.images, device)
    per_step = step_seconds(model, tokenizer, args.steps, args.batch_size, device)
    name = "tiny" if args.tiny else args.model
    print(f"prompt training, {name} random weights, {device}, fp32, {torch.get_num_threads()} CPU threads")
    print(f"  image features (once per image, 512² input): {per_image * 1e3:.1f} ms/image")
    print(f"  training step (batch {args.batch_size}): {per_step * 1e3:.1f} ms")
    for size in args.epoch_images:
        steps = math.ceil(size / args.batch_size)
        print(f"  {size} training images: features {size * per_image:.0f} s once, then {steps * per_step:.1f} s per epoch ({steps} steps)")


if __name__ == "__main__":
    main()
