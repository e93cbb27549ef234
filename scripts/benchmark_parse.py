#!/usr/bin/env python
"""Prompt-parsing speed (Eq. 4 + Algorithm 1) over the distinct prompts of AGIQA-3K.

    python scripts/benchmark_parse.py [--csv ../shared/data/agiqa3k.csv] [--nltk-data ../shared/nltk_data]

Loads the tagger once (not timed), then times ``parse_prompt`` on every distinct prompt,
``--repeats`` times, and prints the best mean in ms per prompt (goal: ≤ 2 ms).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.maps.syntax_tree import add_nltk_data_dir, load_tagger, parse_prompt  # noqa: E402

SHARED = REPO.parent / "shared"


def distinct_prompts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(dict.fromkeys(row["prompt"] for row in csv.DictReader(handle)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=SHARED / "data" / "agiqa3k.csv")
    parser.add_argument("--nltk-data", type=Path, default=SHARED / "nltk_data")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.nltk_data.is_dir():
        add_nltk_data_dir(args.nltk_data)
    prompts = distinct_prompts(args.csv)
    load_tagger()
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for prompt in prompts:
            parse_prompt(prompt)
        best = min(best, (time.perf_counter() - start) / len(prompts))
    print(f"{len(prompts)} prompts: {best * 1e3:.3f} ms/prompt (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
