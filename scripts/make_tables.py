#!/usr/bin/env python
"""Gather a benchmark folder into the paper's result tables (Tables 2-5).

    python scripts/make_tables.py DIR

``DIR`` holds ``<database>/<method>/results.csv`` (written by ``scripts/benchmark.py``). Writes
each method's ``summary.csv`` / ``summary.md`` next to its results, and ``DIR/tables.md``,
``DIR/tables.tex`` and ``DIR/chart_<database>.png``: one table per database, rows = methods,
columns = the paper's indicators; best bold, second underlined, † negative optimisation, and
each method's count of first and second places; under each table the negative-optimisation rate
(per method and metric, the share of images made worse) and the share of images ``verify``
reverted. Exit status 2 when DIR holds no results.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.bench.tables import make_tables  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="benchmark output folder: DIR/<database>/<method>/results.csv")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"make_tables: {args.dir} is not a folder; give the --output folder of scripts/benchmark.py.", file=sys.stderr)
        return 2
    try:
        written = make_tables(args.dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"make_tables: {err}", file=sys.stderr)
        return 2
    for table in written.tables:
        print(f"{table.title}: {len(table.rows)} method(s), {len(table.metrics)} metric(s)")
    print(f"wrote {written.markdown}, {written.latex}, {len(written.charts)} chart(s) and {len(written.summaries)} method summaries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
