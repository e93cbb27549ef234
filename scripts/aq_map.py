#!/usr/bin/env python
"""AQ-Map (paper §3.2) for a folder of images and their prompts.

    python scripts/aq_map.py --input DIR [--prompts FILE] --output DIR

Prompts come from ``--prompts`` (CSV with ``name`` and ``prompt`` columns — the AGIQA-3K layout
— or JSONL) or from sidecar ``<stem>.txt`` files, as for ``scripts/refine.py``. For every image
``<name>`` the output folder gets ``<name>/defect_map.png`` (the defect map D of Eq. 6,
grayscale: white = to redraw, black everywhere when no phrase is defective),
``<name>/defect_overlay.png`` (D over the image), ``<name>/phrase_<j>.png`` (each scored phrase's
A_phs over the image) and ``<name>/phrases.json`` (per phrase: text, scored content, noun,
ancestor, score, noun score, defect); ``scores.csv`` sums up every image (score a of Eq. 8, the
whole-prompt score, the emphasised prompt of Eq. 7, or the image's error).

Options, folders and prompts are checked before the model loads (exit 2, one line); an image that
cannot be read or has no usable prompt is an error row and the others go on (exit 1).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.config import AQMapConfig, ConfigError, check_value  # noqa: E402
from grefine.errors import MissingWeightsError, RunInputError, printable, refusal_text  # noqa: E402
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
from grefine.run.sources import WorkItem, check_encoding, scan_folder  # noqa: E402
from grefine.weights import WeightsUnavailableError, missing_nltk_data, open_clip_weights, require_weights  # noqa: E402

SUMMARY_COLUMNS = ("name", "score", "prompt_score", "defects", "emphasized_prompt", "error")


def save_result(result: AQMapResult, image, folder: Path) -> None:
    """Write the defect map, its overlay, the per-phrase overlays and the phrase table."""
    save_image_atomic(map_to_image(result.defect_map), folder / "defect_map.png")
    save_image_atomic(heatmap_overlay(image, result.defect_map), folder / "defect_overlay.png")
    for j, (phrase, phrase_map) in enumerate(zip(result.phrases, result.phrase_maps, strict=True)):
        if phrase.score is not None:
            save_image_atomic(heatmap_overlay(image, phrase_map), folder / f"phrase_{j:02d}.png")
    table = [asdict(phrase) for phrase in result.phrases]
    write_text_atomic(json.dumps(table, indent=2, ensure_ascii=False), folder / "phrases.json")


def run(aq_map: AQMap, items: Sequence[WorkItem], output_dir: Path) -> int:
    """AQ-Map every item into ``output_dir/<name>/`` and ``scores.csv``; returns how many failed
    (no prompt, an unreadable image, an empty prompt), each an error row."""
    rows: list[dict[str, str]] = []
    for item in tqdm(items, desc="AQ-Map", unit="img"):
        try:
            if item.prompt is None:
                raise ValueError(item.error or "no prompt")
            image = load_image(item.image)
            result = aq_map(image, item.prompt)
        except (ImageLoadError, EmptyPromptError, ValueError) as err:
            tqdm.write(f"aq_map: {printable(item.name)}: {err}")
            rows.append({"name": printable(item.name), "error": printable(str(err))})
            continue
        save_result(result, image, output_dir / item.name)
        defects = ";".join(f"{p.text}={p.defect}" for p in result.phrases if p.defect != "none")
        rows.append({"name": printable(item.name), "score": f"{result.score:.6f}", "prompt_score": f"{result.prompt_score:.6f}", "defects": defects, "emphasized_prompt": str(result.emphasized_prompt)})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), output_dir / "scores.csv")
    return sum(1 for row in rows if row.get("error"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--input", type=Path, required=True, help="folder of images")
    parser.add_argument("--prompts", type=Path, help="CSV (name,prompt) or JSONL prompts; else sidecar .txt files")
    parser.add_argument("--prompt-encoding", help="encoding of the prompts file and sidecars (default: UTF-8)")
    parser.add_argument("--output", type=Path, required=True, help="output folder (not the input folder)")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    parser.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--num-blocks", type=int, default=6, help="VVV surgery blocks (Eq. 1)")
    parser.add_argument("--a-bound", type=float, default=None, help="noun-unmatched bound of Eq. 6")
    parser.add_argument("--beta", type=float, default=None, help="cask-effect bound β of Eq. 8")
    parser.add_argument("--margin", type=float, default=None, help="adjective-unmatched margin of Eq. 6")
    parser.add_argument("--nltk-data", type=Path, default=None, help="folder holding NLTK's tagger and stop words")
    return parser.parse_args(argv)


def checked_options(args: argparse.Namespace) -> dict[str, object]:
    """AQMap's keyword options from the command line, each checked as the config's key is."""
    options: dict[str, object] = {"num_blocks": check_value(AQMapConfig, "num_blocks", args.num_blocks, "--num-blocks")}
    for key in ("a_bound", "beta", "margin"):
        value = getattr(args, key)
        if value is not None:
            options[key] = check_value(AQMapConfig, key, value, f"--{key.replace('_', '-')}")
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = checked_options(args)
        check_encoding(args.prompt_encoding)
        scan = scan_folder(args.input, args.prompts, args.prompt_encoding)
        if args.output.resolve() == args.input.resolve():
            raise RunInputError(f"--output {args.output} is the input folder; choose another folder.")
        if args.nltk_data is not None:
            add_nltk_data_dir(args.nltk_data)
        clip = open_clip_weights(f"AQ-Map CLIP {args.model}/{args.pretrained}", args.model, args.pretrained, "--pretrained")
        require_weights([clip] if clip else [], "aq_map", other_missing=missing_nltk_data())
        aq_map = AQMap.from_pretrained(args.model, args.pretrained, device=args.device, **options)
    except (ConfigError, RunInputError, MissingWeightsError, WeightsUnavailableError) as err:
        print(f"aq_map: {refusal_text(err)}", file=sys.stderr)
        return 2
    if scan.unused_prompts:
        print(f"aq_map: {len(scan.unused_prompts)} prompt(s) in {args.prompts} match no image (e.g. {printable(scan.unused_prompts[0])})", file=sys.stderr)
    failed = run(aq_map, scan.items, args.output)
    print(f"aq_map: {len(scan.items) - failed} images mapped, {failed} failed -> {printable(str(args.output))}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
