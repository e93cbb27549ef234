#!/usr/bin/env python
"""AQ-Map (paper §3.2) for a folder of images and their prompts.

    python scripts/aq_map.py --input DIR --prompts FILE --output DIR

``--prompts`` is a CSV file with a header holding at least the columns ``name`` (the image file
name inside ``--input``) and ``prompt`` — the AGIQA-3K layout. For every image the output folder
gets ``<stem>/defect_map.png`` (the defect map D of Eq. 6, grayscale: white = to redraw, black
everywhere when no phrase is defective), ``<stem>/defect_overlay.png`` (D over the image),
``<stem>/phrase_<j>.png`` (each scored phrase's A_phs over the image) and ``<stem>/phrases.json``
(per phrase: text, scored content, noun, ancestor, score, noun score, defect); ``scores.csv``
sums up every image (score a of Eq. 8, the whole-prompt score, the emphasised prompt of Eq. 7).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.image_io import (  # noqa: E402
    ImageLoadError,
    heatmap_overlay,
    load_image,
    map_to_image,
    save_image_atomic,
    write_text_atomic,
)
from grefine.maps.aq_map import AQMap, AQMapResult  # noqa: E402
from grefine.maps.syntax_tree import EmptyPromptError, add_nltk_data_dir  # noqa: E402

SUMMARY_COLUMNS = ("name", "score", "prompt_score", "defects", "emphasized_prompt")


def read_prompts(path: Path) -> list[tuple[str, str]]:
    """(image name, prompt) rows of a CSV file with ``name`` and ``prompt`` columns."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"name", "prompt"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: the CSV header needs the columns 'name' and 'prompt' (missing {sorted(missing)}).")
        return [(row["name"], row["prompt"]) for row in reader]


def save_result(result: AQMapResult, image, folder: Path) -> None:
    """Write the defect map, its overlay, the per-phrase overlays and the phrase table."""
    save_image_atomic(map_to_image(result.defect_map), folder / "defect_map.png")
    save_image_atomic(heatmap_overlay(image, result.defect_map), folder / "defect_overlay.png")
    for j, (phrase, phrase_map) in enumerate(zip(result.phrases, result.phrase_maps, strict=True)):
        if phrase.score is not None:
            save_image_atomic(heatmap_overlay(image, phrase_map), folder / f"phrase_{j:02d}.png")
    table = [asdict(phrase) for phrase in result.phrases]
    write_text_atomic(json.dumps(table, indent=2, ensure_ascii=False), folder / "phrases.json")


def run(aq_map: AQMap, input_dir: Path, prompts_file: Path, output_dir: Path) -> int:
    """AQ-Map every listed image; returns how many failed (unreadable image or empty prompt)."""
    rows, failures = [], 0
    for name, prompt in read_prompts(prompts_file):
        try:
            image = load_image(input_dir / name)
            result = aq_map(image, prompt)
        except (ImageLoadError, EmptyPromptError) as err:
            print(f"skipped {name}: {err}", file=sys.stderr)
            failures += 1
            continue
        save_result(result, image, output_dir / Path(name).stem)
        defects = ";".join(f"{p.text}={p.defect}" for p in result.phrases if p.defect != "none")
        rows.append((name, f"{result.score:.6f}", f"{result.prompt_score:.6f}", defects, str(result.emphasized_prompt)))
        print(f"{name}: a = {result.score:.4f}")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), output_dir / "scores.csv")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of images")
    parser.add_argument("--prompts", type=Path, required=True, help="CSV with columns name,prompt")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    parser.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--num-blocks", type=int, default=6, help="VVV surgery blocks (Eq. 1)")
    parser.add_argument("--a-bound", type=float, default=None, help="noun-unmatched bound of Eq. 6")
    parser.add_argument("--beta", type=float, default=None, help="cask-effect bound β of Eq. 8")
    parser.add_argument("--margin", type=float, default=None, help="adjective-unmatched margin of Eq. 6")
    parser.add_argument("--nltk-data", type=Path, default=None, help="folder holding NLTK's tagger and stop words")
    args = parser.parse_args(argv)
    if args.nltk_data is not None:
        add_nltk_data_dir(args.nltk_data)
    options = (("a_bound", args.a_bound), ("beta", args.beta), ("margin", args.margin))
    bounds = {key: value for key, value in options if value is not None}
    aq_map = AQMap.from_pretrained(args.model, args.pretrained, device=args.device, num_blocks=args.num_blocks, **bounds)
    return 1 if run(aq_map, args.input, args.prompts, args.output) else 0


if __name__ == "__main__":
    raise SystemExit(main())
