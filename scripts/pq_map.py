#!/usr/bin/env python
"""PQ-Map (paper Eq. 1-3) of an image or a folder: a heat-map overlay PNG and a score per image.

    python scripts/pq_map.py --input IMG_OR_DIR --output DIR [--embeddings official|FOLDER|none]

Writes ``<stem>_pq_overlay.png`` (jet map over the image), ``<stem>_pq.png`` (the map as 8-bit
grayscale, 255 = best quality) and ``scores.csv`` (p and the four factor scores, or the error of
an image that could not be read; the others go on). Exit status 1 when any image failed.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tqdm.auto import tqdm  # noqa: E402

from grefine.errors import MissingWeightsError, RunInputError  # noqa: E402
from grefine.image_io import (  # noqa: E402
    IMAGE_SUFFIXES,
    heatmap_overlay,
    load_image,
    map_to_image,
    save_image_atomic,
    write_text_atomic,
)
from grefine.maps.pq_map import QUALITY_FACTORS, PQMap, QualityEmbeddingError  # noqa: E402
from grefine.run.sources import list_images  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--embeddings", default="official", help="'official' (the authors' PQ-*.pth, fetched once and SHA-256 checked), a folder with PQ-*.pth, or 'none' for plain text pairs")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name")
    parser.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--num-blocks", type=int, default=6, help="blocks with the VVV path (Eq. 1)")
    parser.add_argument("--input-size", default=None, help="CLIP input side (int), or 'native'; default: the model's")
    parser.add_argument("--batch-size", type=int, default=8, help="images per image-encoder forward")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--tiny-random", action="store_true", help="a tiny random CLIP (smoke test only; outputs are noise)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> PQMap:
    embeddings = None if args.embeddings.lower() == "none" else args.embeddings
    size = args.input_size if args.input_size in (None, "native") else int(args.input_size)
    options = dict(num_blocks=args.num_blocks, input_size=size)
    if args.tiny_random:
        from grefine.tiny import build_tiny_open_clip

        model, tokenizer = build_tiny_open_clip()
        return PQMap(model, tokenizer, None, **{**options, "num_blocks": min(args.num_blocks, 3)})
    return PQMap.from_pretrained(args.model, args.pretrained, embeddings, device=args.device, **options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.input.is_file() and args.input.suffix.lower() in IMAGE_SUFFIXES:
        paths = [args.input]
    else:
        try:
            paths, _ = list_images(args.input)
        except RunInputError as err:
            print(f"pq_map: {err}", file=sys.stderr)
            return 2
    try:
        pq_map = build(args)
    except (MissingWeightsError, QualityEmbeddingError, ValueError) as err:
        print(f"pq_map: {err}", file=sys.stderr)
        return 2
    rows: list[dict[str, object]] = []
    for start in tqdm(range(0, len(paths), args.batch_size), desc="PQ-Map", unit="batch"):
        batch, images = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                images.append(load_image(path))
                batch.append(path)
            except ValueError as err:
                rows.append({"name": path.name, "error": str(err)})
                tqdm.write(f"pq_map: {err}")
        for path, image, result in zip(batch, images, pq_map(images) if images else []):
            save_image_atomic(heatmap_overlay(image, result.map), args.output / f"{path.stem}_pq_overlay.png")
            save_image_atomic(map_to_image(result.map), args.output / f"{path.stem}_pq.png")
            rows.append({"name": path.name, "p": f"{result.score:.6f}", **{k: f"{v:.6f}" for k, v in result.factor_scores.items()}})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["name", "p", *QUALITY_FACTORS, "error"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: str(r["name"])))
    write_text_atomic(buffer.getvalue(), args.output / "scores.csv")
    failed = sum(1 for row in rows if row.get("error"))
    print(f"pq_map: {len(rows) - failed} images scored, {failed} failed -> {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
