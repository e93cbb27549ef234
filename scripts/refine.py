#!/usr/bin/env python
"""Refine a folder of AI-generated images with G-Refine.

    python scripts/refine.py --input DIR --output DIR [--prompts FILE] [--config YAML] [--metrics LIST]
                             [--resume | --overwrite] [--format {same,png}] [--max-pixels N] [--prompt-encoding ENC]
                             [--prefetch N]

Prompts come from ``--prompts`` (CSV with ``name,prompt`` columns, or JSONL) or from sidecar
``<image stem>.txt`` files. Writes the refined images under their own names, quality maps and
phrase tables under ``maps/``, ``results.csv``, and ``report.html`` (open it in a browser; it is
rewritten as the run goes). Without ``--input`` a small built-in example set (scikit-image's
sample photos, each with a prompt) is refined into ``./grefine-demo/``.
Several processes split the folder: ``accelerate launch --multi_gpu --num_processes N scripts/refine.py ...``
(also on CPUs) or ``torchrun --standalone --nproc_per_node N scripts/refine.py ...``.

Everything (options, config, prompts, folders, metric names, the metric ``verify.select`` names,
an earlier results.csv) is checked before any model loads. Then, when the hub is reachable, the
weights the config and the metrics need and the caches do not hold yet are fetched, after a plan on
stderr (what, from where, how large, into which cache, the free space there;
checkpoints/README.md); ``scripts/download_weights.py`` fetches them ahead, for a run with
``HF_HUB_OFFLINE=1``. Exit status: 0 when every image was refined, 1 when any failed (see its row
in results.csv), 2 when the run was refused (one line on stderr names the input and the fix).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.bench.report import run_report  # noqa: E402
from grefine.config import ConfigError, GRefineConfig, check_value  # noqa: E402
from grefine.errors import MissingWeightsError, OneLineArgumentParser, RunInputError, RunInterrupted, interruption_text, printable, refusal_text  # noqa: E402
from grefine.run.runner import Models, Processes, RunOptions, RunSummary, run_items  # noqa: E402
from grefine.run.sources import check_encoding, scan_folder  # noqa: E402
from grefine.weights import WeightSource, WeightsUnavailableError, check_weights  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; a wrong one raises :class:`~grefine.errors.RunInputError` (one line, exit 2)."""
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="folder of images (default: the built-in demo set)")
    parser.add_argument("--output", type=Path, help="output folder, not the input folder (default: <input>-refined, or ./grefine-demo/output)")
    parser.add_argument("--prompts", type=Path, help="CSV (name,prompt) or JSONL prompts; else sidecar .txt files")
    parser.add_argument("--prompt-encoding", help="encoding of the prompts file and sidecars (default: UTF-8, a BOM is removed)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: the config's 'metrics'); 'none' for no scores")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue a run: skip images that have a refined output and a successful row")
    again.add_argument("--overwrite", action="store_true", help="refine every image again in a folder that has results (rows are kept until replaced)")
    parser.add_argument("--format", choices=["same", "png"], default="same", help="same: each input's format and metadata (JPEG at quality 95); png: lossless <name>.png")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (width x height; default: the config's max_pixels)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    parser.add_argument("--prefetch", type=int, default=None, help="images decoded ahead of / written and scored behind the refinement in worker threads; 0: in turn (default: the config's prefetch, 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> GRefineConfig:
    """The config with the command line's overrides, each checked like the file's values."""
    config = GRefineConfig.from_yaml(args.config)
    if args.seed is not None:
        config.seed = check_value(GRefineConfig, "seed", args.seed, "--seed")
    if args.max_pixels is not None:
        config.max_pixels = check_value(GRefineConfig, "max_pixels", args.max_pixels, "--max-pixels")
    if args.prefetch is not None:
        config.prefetch = check_value(GRefineConfig, "prefetch", args.prefetch, "--prefetch")
    return config


def metric_names(args: argparse.Namespace, config: GRefineConfig) -> list[str]:
    """The requested metrics, every name checked against the registry (no model is built)."""
    if args.metrics is None:
        names, where = config.metrics, f"metrics in {config.source}"
    else:
        names, where = [m.strip() for m in args.metrics.split(",") if m.strip() and m.strip() != "none"], "--metrics"
    if not names:
        return []
    from grefine.eval.metrics import check_metric_names

    return check_metric_names(names, where)


def check_verify(config: GRefineConfig) -> list[WeightSource]:
    """A metric that ``verify.select`` names is one of the registry's no-reference metrics (no
    model is built); returns the files it loads whose place is known, for the pre-flight."""
    if config.verify.metric is None:
        return []
    from grefine.eval.metric_weights import metric_weights
    from grefine.eval.metrics import check_select_metric

    check_select_metric(config.verify.metric, f"verify.select in {config.source}")
    return [replace(source, config_key="verify.select") for source in metric_weights([config.verify.metric]) if not source.note]


def loader(config: GRefineConfig, names: list[str], report: bool):
    """The ``load`` of :func:`grefine.run.runner.run_items`: the weights the config and the metrics
    need (when the hub is reachable: the plan on stderr, then the downloads), then the pipeline and
    the metrics, on the config's device."""

    def load() -> Models:
        from grefine.eval.metric_weights import metric_weights
        from grefine.eval.metrics import create_metrics, create_select_metric
        from grefine.pipeline import GRefinePipeline, resolve_device
        from grefine.weights import prepare_weights, required_weights

        select = config.verify.metric
        say = (lambda line: print(line, file=sys.stderr)) if report else None
        prepare_weights(required_weights(config) + metric_weights([*names, *([select] if select else [])]), say=say)
        select_metric = create_select_metric(select, device=resolve_device(config.device)) if select else None
        pipeline = GRefinePipeline.from_pretrained(config, select_metric=select_metric)
        metrics, failures = create_metrics(names, device=pipeline.pq_map.text_direction.device)
        for name, reason in failures.items():
            if report:
                print(f"grefine: metric {name} unavailable ({' '.join(reason.split())}); recorded in results.csv", file=sys.stderr)
        return Models(pipeline, metrics, failures)

    return load


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        config = load_config(args)
        names = metric_names(args, config)
        select_weights = check_verify(config)
        check_encoding(args.prompt_encoding)
        check_weights(config, extra=select_weights)  # the pre-flight, before anything is written (the demo's inputs included)
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=config.device == "cpu" or not torch.cuda.is_available())  # gloo on CPUs
        if state.num_processes > 1:
            config.device = str(state.device)
        if args.input is None:
            from grefine.run.demo import write_demo_inputs

            args.input = Path("grefine-demo") / "input"
            if state.is_main_process:
                write_demo_inputs(args.input)
            state.wait_for_everyone()
            args.output = args.output or Path("grefine-demo") / "output"
        output = args.output or args.input.with_name(args.input.name + "-refined")
        scan = scan_folder(args.input, args.prompts, args.prompt_encoding)
        if scan.unused_prompts and state.is_main_process:
            print(f"grefine: {len(scan.unused_prompts)} prompt(s) in {args.prompts} match no image in {args.input} (e.g. {printable(scan.unused_prompts[0])})", file=sys.stderr)
        summary = run_items(
            scan.items,
            output,
            loader(config, names, report=state.is_main_process),
            mode="resume" if args.resume else "overwrite" if args.overwrite else "new",
            output_format=None if args.format == "same" else args.format,
            protected=[args.prompts] if args.prompts else [],
            metric_names=names,
            options=RunOptions(
                seed=config.seed,
                max_pixels=config.max_pixels,
                metric_resolution=config.metric_resolution,
                prefetch=config.prefetch,
                progress=not args.no_progress and state.is_local_main_process,
                report=run_report,
            ),
            processes=Processes.from_accelerate(state),
        )
    except RunInterrupted as stop:
        print(f"grefine: {interruption_text(stop)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("grefine: interrupted before any image was refined.", file=sys.stderr)
        return 130
    except (ConfigError, RunInputError, WeightsUnavailableError, MissingWeightsError) as err:
        print(f"grefine: {refusal_text(err)}", file=sys.stderr)
        return 2
    if state.is_main_process:
        print(summary_line(summary, output))
    return summary.exit_code


def summary_line(summary: RunSummary, output: Path) -> str:
    """What the run did, where its results are, and the log of the libraries' messages, if any."""
    results = f"results: {printable(str(summary.results_csv))}; open {printable(str(output / 'report.html'))} in a browser"
    if summary.log is not None:
        results += f"; library messages: {printable(str(summary.log))}"
    if summary.skipped and not summary.done and not summary.failed:
        return f"grefine: nothing left to do: all {len(summary.skipped)} image(s) are already refined in {printable(str(output))} ({results})"
    return (
        f"grefine: {len(summary.done)} refined, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed -> {printable(str(output))} ({results})"
    )


if __name__ == "__main__":
    sys.exit(main())
