#!/usr/bin/env python
"""How well quality scores agree with human MOS (paper §4.4, Tables 6-7), and what each is worth
as an automatic QA gate.

    python scripts/evaluate_scores.py --database NAME --root DIR --output DIR [--scorers LIST]
        [--split S] [--config YAML | --tiny-random] [--resume | --overwrite]
        [--autoqa [--accept-mos X] [--costs C_GEN,C_AQA,C_MQA]] [--n-boot N] [--seed S]

Scores every image of a rated database (agiqa3k, agiqa1k, aigiqa20k) once per scorer into
``scores.csv`` (``--resume`` scores only what is missing), then writes ``correlations.csv`` /
``.md`` (SRCC, PLCC, KRCC, RMSE with bootstrap intervals; perceptual scorers against the
perceptual MOS, alignment scorers against the alignment MOS) and ``plots/scatter_*.png``; with
``--autoqa`` also ``autoqa.csv`` / ``.md`` and ``plots/savings_*.png``
(:mod:`grefine.eval.score_eval`). AIGIQA-20K and AGIQA-1K have one MOS, used for both
(:mod:`grefine.data.mos`).

``--split``: ``all``, one of the database's own splits (AIGIQA-20K: ``train``, ``val``,
``test``), or a seeded ratio split ``RATIO:PHASE[:SEED[:INDEX]]`` of all its images (``802:test``:
the test fifth of pyiqa-style ratio 802, seed 123, split 1). Default: ``test`` for AIGIQA-20K
(the paper's Tables), ``all`` otherwise.

The map scorers (pq, aq, pq_aq, clip_surgery) use the config's ``pq_map`` / ``aq_map`` sections,
``device`` and ``dtype`` (default configs/default.yaml; ``--tiny-random``: tiny random CLIPs, a
smoke test whose scores are noise); a metric that cannot be created here (missing weights) gets a
row saying why. Everything (options, database, split and its MOS, scorer names, config, output
folder, the maps' weights) is checked before any model loads. Exit status: 0 every score
computed, 1 some images or scorers failed (see scores.csv and the tables' notes), 2 refused (one
line on stderr names the input and the fix).
"""
from __future__ import annotations

import argparse
import difflib
import math
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.config import ConfigError, GRefineConfig  # noqa: E402
from grefine.errors import OneLineArgumentParser, RunInputError, printable, refusal_text  # noqa: E402
from grefine.eval.autoqa import UnitCosts  # noqa: E402
from grefine.data.databases import DatabaseError, SkippedRecordsWarning  # noqa: E402
from grefine.eval.metrics import list_metrics  # noqa: E402
from grefine.data.mos import RatedSplit, load_rated  # noqa: E402
from grefine.eval.score_eval import ScoreCache, evaluate_scores  # noqa: E402
from grefine.eval.scorers import MAP_SCORERS, PAPER_SCORERS, create_scorers, list_scorers, scorer_spec  # noqa: E402
from grefine.run.lock import OutputLock  # noqa: E402
from grefine.weights import WeightsUnavailableError, check_weights  # noqa: E402

PROG = "evaluate_scores"
OUTPUTS = ("scores.csv", "correlations.csv")
"""Files that mark a folder as holding an evaluation."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="agiqa3k, agiqa1k or aigiqa20k")
    parser.add_argument("--root", type=Path, required=True, help="the database's unpacked download")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--scorers", default=None, help=f"comma-separated scorer names (default: {','.join(PAPER_SCORERS)})")
    parser.add_argument("--split", default=None, help="all, a split name (test) or RATIO:PHASE[:SEED[:INDEX]] (802:test); default: test for aigiqa20k, else all")
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--config", type=Path, default=None, help="YAML config of the map scorers (default: configs/default.yaml)")
    models.add_argument("--tiny-random", action="store_true", help="tiny random CLIPs for the map scorers (smoke test only; their scores are noise)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="keep scores.csv and score only what it lacks")
    again.add_argument("--overwrite", action="store_true", help="score everything again in a folder that holds an evaluation")
    parser.add_argument("--autoqa", action="store_true", help="also sweep every scorer as an automatic QA gate (autoqa.csv/.md, savings plots)")
    parser.add_argument("--accept-mos", type=float, default=None, help="with --autoqa: people accept an image whose MOS is above this on every MOS column (default: each column's median)")
    parser.add_argument("--costs", default=None, help="with --autoqa: unit costs c_gen,c_aqa,c_mqa (default: 0.004,0,0.5)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the intervals (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


class Plan(NamedTuple):
    """A checked evaluation: everything :func:`evaluate_scores` needs, no model loaded."""

    rated: RatedSplit
    scorers: list[str]
    config: GRefineConfig
    output: Path
    costs: UnitCosts


def scorer_names(text: str | None) -> list[str]:
    """The requested scorers, each checked against the registry (nothing is built)."""
    names = list(PAPER_SCORERS) if text is None else [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise RunInputError("--scorers names no scorer; give names such as pq,aq,pq_aq,clipiqa.")
    checked = []
    for name in names:
        try:
            checked.append(scorer_spec(name).name)
        except KeyError as err:
            if name.lower() in {metric.lower() for metric in list_metrics()}:  # full-reference: the registry says why
                raise RunInputError(f"--scorers: {err.args[0]}.") from None
            close = difflib.get_close_matches(name.lower(), list_scorers(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise RunInputError(
                f"--scorers: unknown scorer {name!r}{hint}; the names are those of grefine.eval.scorers.list_scorers(), "
                f"e.g. {', '.join(PAPER_SCORERS)}."
            ) from None
    return list(dict.fromkeys(checked))


def unit_costs(args: argparse.Namespace) -> UnitCosts:
    if not args.autoqa:
        given = [flag for flag, value in (("--accept-mos", args.accept_mos), ("--costs", args.costs)) if value is not None]
        if given:
            raise RunInputError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only to the gate report: add --autoqa.")
    if args.accept_mos is not None and not math.isfinite(args.accept_mos):
        raise RunInputError(f"--accept-mos must be a finite MOS level, got {args.accept_mos}.")
    if args.costs is None:
        return UnitCosts()
    parts = args.costs.split(",")
    try:
        values = [float(part) for part in parts]
        if len(values) != 3:
            raise ValueError(f"three costs are needed, got {len(values)}")
        return UnitCosts(*values)
    except ValueError as err:
        raise RunInputError(f"--costs {args.costs!r}: give c_gen,c_aqa,c_mqa, three finite costs ≥ 0 such as 0.004,0,0.5 ({err}).") from None


def load_config(args: argparse.Namespace) -> GRefineConfig:
    path = REPO / "configs" / "tiny-random.yaml" if args.tiny_random else args.config or REPO / "configs" / "default.yaml"
    return GRefineConfig.from_yaml(path)


def check_output(output: Path, mode: str) -> ScoreCache:
    """A writable folder; one that holds an evaluation only with ``--resume`` (its cache must be
    readable) or ``--overwrite``. Returns the scores a resumed evaluation keeps (else none)."""
    if output.exists() and not output.is_dir():
        raise RunInputError(f"--output {output} is a file, not a folder. Choose a folder (it is created when missing).")
    held = [name for name in OUTPUTS if (output / name).exists()]
    if held and mode == "new":
        raise RunInputError(
            f"--output {output} holds an earlier evaluation ({held[0]}): add --resume to keep its scores and compute only "
            "what is missing, --overwrite to score everything again, or choose another output folder."
        )
    cache = ScoreCache(output / "scores.csv")
    if mode == "resume":
        try:
            cache = ScoreCache.read(cache.path)
        except ValueError as err:
            raise RunInputError(str(err)) from None
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as err:
        raise RunInputError(f"--output {output}: cannot write there ({err.strerror}). Choose a writable folder.") from err
    return cache


def check_map_weights(plan: Plan, cache: ScoreCache) -> None:
    """The maps' weights, when a map scorer still has an image to score (not in ``cache``)."""
    names = [name for name in plan.scorers if name in MAP_SCORERS]
    if any((record.name, name) not in cache.values for record in plan.rated.records for name in names):
        check_weights(plan.config, maps_only=True)


def prepare(args: argparse.Namespace) -> Plan:
    """Every check of the module docstring, in order; raises on the first problem."""
    for flag, value, low in (("--n-boot", args.n_boot, 0), ("--seed", args.seed, 0)):
        if value < low:
            raise RunInputError(f"{flag} must be a whole number ≥ {low}, got {value}.")
    costs = unit_costs(args)
    names = scorer_names(args.scorers)
    config = load_config(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRecordsWarning)  # reported below, one line each
        rated = load_rated(args.database, args.root, args.split, progress=not args.no_progress)
    for line in rated.database.report():
        print(f"{PROG}: {printable(line)}", file=sys.stderr)
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    cache = check_output(args.output, mode)
    plan = Plan(rated, names, config, args.output, costs)
    check_map_weights(plan, cache)
    return plan


def run(plan: Plan, args: argparse.Namespace) -> int:
    """Evaluate (the output folder is locked); 0 when every score was computed, else 1."""
    rated = plan.rated
    result = evaluate_scores(
        rated.records,
        plan.scorers,
        plan.output,
        perceptual_mos=rated.perceptual,
        alignment_mos=rated.alignment,
        build_scorers=partial(create_scorers, config=plan.config),
        resume=args.resume,
        n_boot=args.n_boot,
        seed=args.seed,
        autoqa=args.autoqa,
        accept_mos=args.accept_mos,
        costs=plan.costs,
        progress=not args.no_progress,
    )
    for name, reason in result.unavailable.items():
        print(f"{PROG}: scorer {name} unavailable ({' '.join(reason.split())}); its rows say so", file=sys.stderr)
    failed = {row.scorer: row.failed for row in result.correlations}
    print(
        f"{PROG}: {len(rated.records)} images of {args.database} (split {rated.split}) x {len(plan.scorers)} scorers: "
        f"{result.scored} scores computed, {sum(failed.values())} failed, {len(result.unavailable)} scorers unavailable "
        f"-> {printable(str(plan.output / 'correlations.md'))}" + (f", {printable(str(plan.output / 'autoqa.md'))}" if args.autoqa else "")
    )
    return 1 if result.unavailable or any(failed.values()) else 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        lock = OutputLock(args.output)
        plan = prepare(args)
        lock.acquire()
    except (ConfigError, DatabaseError, RunInputError, WeightsUnavailableError) as err:
        print(f"{PROG}: {refusal_text(err)}", file=sys.stderr)
        return 2
    try:
        return run(plan, args)
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
