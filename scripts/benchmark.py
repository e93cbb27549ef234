#!/usr/bin/env python
"""Refine a database with one method and score it before and after (the paper's Tables 2-5).

    python scripts/benchmark.py --database NAME --root DIR --output DIR [--method NAME|YAML] [--config YAML]
                                [--tiny-random] [--name NAME] [--metrics LIST] [--split S[,S]] [--match PATTERNS] [--limit N] [--seed S]
                                [--resume | --overwrite] [--format {same,png}] [--max-pixels N] [--metric-resolution N]
                                [--prefetch N] [--no-progress]

Reads the database (``agiqa3k``, ``agiqa1k``, ``aigiqa20k``, ``diffusiondb``, ``genimage``) from its
unpacked download ``--root`` (images are found by file name anywhere under it; missing images and
prompt-less rows are reported and skipped; a record that cannot be refined becomes a failed row),
takes a reproducible sample (``--limit N --seed S``: the paper refines 3,000 images of DiffusionDB
and of GenImage, AGIQA-1K/3K whole), and refines it with one method (``configs/methods/``:
g-refine, g-refine-notebook, g-refine-never-worse, the Table 8 ablations g-refine-aq-only, g-refine-pq-only and
g-refine-stage1-only, identity, sdxl-refiner, sdxl-img2img, sdxl-inpaint-full, pasd; or a method YAML) into ``DIR/<database>/<method>/``: the refined images, ``results.csv`` (one row per
image, every metric before and after), ``summary.csv`` / ``summary.md`` (per metric the means
before and after, the change, images improved/worsened, † negative optimisation, the
negative-optimisation rate = the share of images made worse; for a method with ``verify``, e.g.
g-refine-never-worse, the share of images reverted) and ``report.html`` (every image
before/after, its maps and scores), with ``DIR/<database>/report.html`` showing the database's
methods side by side per image and ``DIR/report.html`` linking them all. Then
``python scripts/make_tables.py DIR`` gathers every database × method into the paper's tables.

Metrics: the paper's 13 by default; those that cannot be created here are recorded per row in
``metric_errors``. ``--config`` replaces a g-refine method's G-Refine config (e.g. an ablation;
give it a ``--name``). ``--tiny-random`` runs the method with tiny random models (a smoke test
without weights; its outputs are noise; a g-refine method keeps its ablation and gate).
``--match`` keeps the images whose names match shell patterns (e.g. one generator of AIGIQA-20K,
as in the paper's Table 8). Several processes split the images:
``accelerate launch --multi_gpu --num_processes N scripts/benchmark.py ...`` or
``torchrun --standalone --nproc_per_node N scripts/benchmark.py ...``.

Everything (options, method, config, metric names, database and its metadata, folders, an earlier
results.csv, the method's weights) is checked before any model loads. Exit status: 0 when every
image was refined, 1 when any failed (see its row in results.csv), 2 when the run was refused
(one line on stderr names the input and the fix).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from accelerate import PartialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.config import ConfigError, GRefineConfig, check_value  # noqa: E402
from grefine.errors import MissingWeightsError, RunInputError, printable  # noqa: E402
from grefine.bench.benchmark import benchmark_folder, run_benchmark  # noqa: E402
from grefine.bench.report import benchmark_report  # noqa: E402
from grefine.data.databases import DatabaseError, SkippedRecordsWarning, list_databases, load_database  # noqa: E402
from grefine.bench.methods import check_method_weights, load_method, tiny_random_overrides  # noqa: E402
from grefine.eval.metrics import PAPER_METRICS, check_metric_names  # noqa: E402
from grefine.run.runner import Processes, RunOptions  # noqa: E402
from grefine.weights import WeightsUnavailableError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="agiqa3k, agiqa1k, aigiqa20k, diffusiondb or genimage")
    parser.add_argument("--root", type=Path, required=True, help="the database's unpacked download")
    parser.add_argument("--output", type=Path, required=True, help="benchmark folder: results go to DIR/<database>/<method>/")
    parser.add_argument("--method", default="g-refine", help="a method of configs/methods/ or a method YAML (default: g-refine)")
    parser.add_argument("--config", type=Path, help="G-Refine config replacing a g-refine method's own (e.g. an ablation)")
    parser.add_argument("--tiny-random", action="store_true", help="tiny random models at 64 px (smoke test without weights; outputs are noise)")
    parser.add_argument("--name", help="folder and table row name (default: the method's name)")
    parser.add_argument("--metrics", help="comma-separated metric names (default: the paper's 13); 'none' for no scores")
    parser.add_argument("--split", help="split(s) to read, comma-separated (default: every split found)")
    parser.add_argument("--match", help="only images whose name matches one of these comma-separated shell patterns, e.g. 'SD1.5_*' (case-sensitive; before --limit)")
    parser.add_argument("--limit", type=int, help="refine a reproducible sample of N images (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default: 0); the refinement seed is the method's")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue a run: skip images that have a refined output and a successful row")
    again.add_argument("--overwrite", action="store_true", help="refine every image again in a folder that has results (rows are kept until replaced)")
    parser.add_argument("--format", choices=["same", "png"], default="same", help="same: each input's format and metadata; png: lossless <name>.png")
    parser.add_argument("--max-pixels", type=int, help="refuse larger images (width x height; default: 16,777,216)")
    parser.add_argument("--metric-resolution", type=int, help="long side the metrics score at most (default: 1024)")
    parser.add_argument("--prefetch", type=int, help="images decoded ahead of / written and scored behind the refinement in worker threads; 0: in turn (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def method_from_args(args: argparse.Namespace):
    """The method with the command line's overrides (--config, --tiny-random), checked."""
    method = load_method(args.method)
    overrides = tiny_random_overrides(method.type) if args.tiny_random else {}
    if args.config is not None:
        if method.type != "g-refine":
            raise ConfigError(f"--config {args.config}: a G-Refine config, but method {method.name} is of type {method.type}; change its YAML instead.")
        overrides["config"] = str(args.config)
    return load_method(args.method, overrides=overrides) if overrides else method


def metric_names(args: argparse.Namespace) -> list[str]:
    """The requested metrics (default: the paper's 13), every name checked against the registry."""
    if args.metrics is None:
        return list(PAPER_METRICS)
    return check_metric_names([m.strip() for m in args.metrics.split(",") if m.strip() and m.strip() != "none"], "--metrics")


def check_options(args: argparse.Namespace) -> None:
    """The options checkable without reading anything: the database's name, the sample size,
    and the sizes (checked as the config's keys are)."""
    if args.database not in list_databases():
        raise RunInputError(f"--database {args.database}: unknown database; known databases: {', '.join(list_databases())}.")
    if args.limit is not None and args.limit < 1:
        raise RunInputError(f"--limit {args.limit}: a sample needs at least one image; leave --limit out to refine them all.")
    for option, key in (("--max-pixels", "max_pixels"), ("--metric-resolution", "metric_resolution"), ("--prefetch", "prefetch")):
        value = getattr(args, key)
        setattr(args, key, getattr(GRefineConfig(), key) if value is None else check_value(GRefineConfig, key, value, option))


def database_from_args(args: argparse.Namespace, report: bool):
    """The database (a reproducible sample of it with --limit), its skipped records reported."""
    splits = [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRecordsWarning)  # reported below, once
        match = [p.strip() for p in args.match.split(",") if p.strip()] if args.match is not None else None
        database = load_database(args.database, args.root, split=splits, match=match, limit=args.limit, seed=args.seed, progress=report and not args.no_progress)
    if report:
        for line in database.report():
            print(f"benchmark: {printable(line)}", file=sys.stderr)
        sample = f" matching {args.match}" if args.match is not None else ""
        sample += f" (sample of {args.limit}, seed {args.seed})" if args.limit is not None else ""
        print(f"benchmark: {args.database}: {len(database)} image(s){sample} under {printable(str(args.root))}", file=sys.stderr)
    return database


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_options(args)
        method = method_from_args(args)
        names = metric_names(args)
        benchmark_folder(args.output, args.database, args.name or method.name, args.root)
        check_method_weights(method)
        state = PartialState(cpu=method.device.type == "cpu" or not torch.cuda.is_available())  # gloo on CPUs
        if state.num_processes > 1:
            method.settings.device = str(state.device)
        database = database_from_args(args, report=state.is_main_process)
        result = run_benchmark(
            database,
            method,
            args.output,
            name=args.name,
            metric_names=names,
            mode="resume" if args.resume else "overwrite" if args.overwrite else "new",
            output_format=None if args.format == "same" else args.format,
            options=RunOptions(
                max_pixels=args.max_pixels,
                metric_resolution=args.metric_resolution,
                prefetch=args.prefetch,
                progress=not args.no_progress and state.is_local_main_process,
                report=benchmark_report,
            ),
            processes=Processes.from_accelerate(state),
            report=lambda line: print(f"benchmark: {line}", file=sys.stderr),
        )
    except (ConfigError, DatabaseError, RunInputError, WeightsUnavailableError, MissingWeightsError) as err:
        print(f"benchmark: {printable(' '.join(str(err).split()))}", file=sys.stderr)
        return 2
    if state.is_main_process:
        run = result.run
        print((result.folder / "summary.md").read_text(encoding="utf-8"))
        if result.other_rows:
            print(f"benchmark: results.csv also holds {result.other_rows} row(s) of images outside this run (an earlier sample); the summary includes them.", file=sys.stderr)
        print(
            f"benchmark: {len(run.done)} refined, {len(run.skipped)} already done, {len(run.failed)} failed -> "
            f"{printable(str(result.folder))} (results.csv, summary.csv, summary.md, report.html; the methods side by side: "
            f"{printable(str(result.folder.parent / 'report.html'))})"
        )
    return result.run.exit_code


if __name__ == "__main__":
    sys.exit(main())
