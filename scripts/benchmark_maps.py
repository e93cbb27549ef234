#!/usr/bin/env python
"""The maps' time per image and the text features' cost, with a full-size CLIP ViT-B/16 and random
weights (speed does not depend on the weight values).

    python scripts/benchmark_maps.py --random-weights [--device cuda] [--prompts 5] [--database CSV]

Measured, for AQ-Map's two text encodings (``ensemble``: the authors' 85 templates per text, the
default; ``bare``: the text alone):

* **maps per image**: PQ-Map and AQ-Map of one 512² image and its prompt, one shared VVV
  image-tower pass (as ``GRefinePipeline.maps``), with the prompt's texts *cold* (not cached:
  every text encoded) and *cached* (the same prompt again: all texts in memory);
* **text cost**: seconds per distinct text (one text-tower pass of 85 rows, or 1), per prompt
  alone (all its texts and ``""``, nothing cached), and per image of a database: its distinct
  texts (every prompt parsed, each text counted once, as the cache encodes them) × the time per
  text, over its images — cold (encoded) and cached on disk (read back from the disk cache by
  a new run).

The prompts are the database's (default: AGIQA-3K's ``data.csv`` in ``../shared/data``: 300
prompts over 2,982 images); ``--prompts`` of them (seeded sample) are timed.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from grefine.maps.aq_map import AQMap, alignment_texts  # noqa: E402
from grefine.maps.clip_surgery import TowerPasses  # noqa: E402
from grefine.maps.pq_map import PQMap  # noqa: E402
from grefine.maps.syntax_tree import add_nltk_data_dir, parse_prompt  # noqa: E402
from grefine.maps.text_features import TextFeatures  # noqa: E402

SHARED = REPO.parent / "shared"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-weights", action="store_true", required=True, help="random weights (the only mode: no download)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="fp32 is forced on CPU")
    parser.add_argument("--database", type=Path, default=SHARED / "data" / "agiqa3k.csv", help="CSV with name,prompt columns")
    parser.add_argument("--prompts", type=int, default=5, help="prompts timed (a seeded sample of the database's)")
    parser.add_argument("--embeddings", default=str(SHARED / "pq_embeddings"), help="PQ-*.pth folder ('none': text pairs)")
    parser.add_argument("--nltk-data", type=Path, default=SHARED / "nltk_data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny random CLIP (CPU smoke test)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device):
    if args.tiny:
        from grefine.tiny import build_tiny_open_clip

        model, tokenizer = build_tiny_open_clip()
        return model.to(device), tokenizer, None, 2
    import open_clip

    precision = "fp32" if device.type == "cpu" else args.dtype
    model = open_clip.create_model(args.model, pretrained=None, device=device, precision=precision).eval()
    embeddings = None if args.embeddings == "none" or not Path(args.embeddings).is_dir() else args.embeddings
    return model, open_clip.get_tokenizer(args.model), embeddings, 6


def read_prompts(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [row["prompt"] for row in csv.DictReader(handle)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def maps_seconds(pq: PQMap, aq: AQMap, image: Image.Image, prompt: str, device: torch.device) -> float:
    def run() -> None:
        tower = TowerPasses([image])
        pq.read(tower)
        aq.read(tower, [prompt])

    return timed(device, run)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    add_nltk_data_dir(args.nltk_data)
    model, tokenizer, embeddings, blocks = build(args, device)
    pq = PQMap(model, tokenizer, embeddings, num_blocks=blocks).to(device)
    database = read_prompts(args.database)
    distinct_prompts = list(dict.fromkeys(database))
    texts_of = {prompt: alignment_texts(parse_prompt(prompt)) for prompt in distinct_prompts}
    distinct_texts = len({text for texts in texts_of.values() for text in texts} | {""})
    sample = random.Random(args.seed).sample(distinct_prompts, min(args.prompts, len(distinct_prompts)))
    rng = np.random.default_rng(args.seed)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in sample]
    precision = "fp32" if device.type == "cpu" else args.dtype
    print(f"maps: {'tiny' if args.tiny else args.model} random weights, {device}, {precision}, {torch.get_num_threads()} threads")
    print(f"database {args.database.name}: {len(database)} images, {len(distinct_prompts)} prompts, {distinct_texts} distinct texts "
          f"(with \"\"); {len(sample)} prompts timed, {np.mean([len(texts_of[p]) + 1 for p in sample]):.1f} texts each")
    maps_seconds(pq, AQMap(model, tokenizer, num_blocks=blocks, text_encoding="bare", text_cache=None).to(device), images[0], "a cat", device)  # warm-up
    rows = []
    for encoding in ("ensemble", "bare"):
        aq = AQMap(model, tokenizer, num_blocks=blocks, text_encoding=encoding, text_cache=None).to(device)
        cold = [maps_seconds(pq, aq, image, prompt, device) for image, prompt in zip(images, sample)]
        cached = [maps_seconds(pq, aq, image, prompt, device) for image, prompt in zip(images, sample)]
        per_prompt = []
        for prompt in sample:  # each prompt alone, nothing cached
            alone = TextFeatures(model, tokenizer, encoding=encoding)
            per_prompt.append(timed(device, lambda: alone(["", *texts_of[prompt]])))
        with tempfile.TemporaryDirectory() as folder:
            written = TextFeatures(model, tokenizer, encoding=encoding, cache_dir=Path(folder))
            texts = list(dict.fromkeys(["", *(text for prompt in sample for text in texts_of[prompt])]))
            encode = timed(device, lambda: written(texts)) / len(texts)
            reread = TextFeatures(model, tokenizer, encoding=encoding, cache_dir=Path(folder))
            assert reread.folder is not None  # the tower's fingerprint: once per run, not a per-text cost
            load = timed(device, lambda: reread(texts)) / len(texts)
            assert reread.encoded == 0 and reread.disk_hits == len(texts)
        rows.append((encoding, np.mean(cold), np.mean(cached), encode, np.mean(per_prompt), load))
    print(f"\n{'encoding':>9} {'maps/img cold':>14} {'maps/img cached':>16} {'s/text':>8} {'s/prompt':>9} "
          f"{'db s/img cold':>14} {'db s/img disk':>14} {'db cold total':>14}")
    for encoding, cold, cached, encode, prompt, load in rows:
        db_cold = distinct_texts * encode
        print(f"{encoding:>9} {cold:>14.2f} {cached:>16.3f} {encode:>8.3f} {prompt:>9.2f} "
              f"{db_cold / len(database):>14.3f} {distinct_texts * load / len(database):>14.5f} {db_cold / 60:>12.1f} min")
    print("\nmaps/img: PQ-Map + AQ-Map of one image (shared tower pass); cold: its prompt's texts encoded, cached: in memory.\n"
          "s/text: one distinct text encoded (batched with the others); s/prompt: one prompt's texts and \"\" alone.\n"
          "db: the database's distinct texts x s/text (cold) or x the disk read per text (a later run), over its images.")


if __name__ == "__main__":
    main()
