#!/usr/bin/env python
"""Refine a folder of AI-generated images with G-Refine.

    python scripts/refine.py --input DIR --output DIR [--prompts FILE] [--config YAML] [--metrics LIST] [--resume]

Prompts come from ``--prompts`` (CSV with ``name,prompt`` columns, or JSONL) or from sidecar
``<image stem>.txt`` files. Writes the refined images under their own names, quality maps under
``maps/``, and ``results.csv``. Without ``--input`` a small built-in example set (scikit-image's
sample photos, each with a prompt) is refined into ``./grefine-demo/``.
Under ``accelerate launch scripts/refine.py ...`` the folder is split across processes.
Exit status: 0 when every image was refined, 1 when any failed, 2 when nothing could start.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.config import ConfigError, GRefineConfig  # noqa: E402
from grefine.demo import write_demo_inputs  # noqa: E402
from grefine.errors import MissingWeightsError  # noqa: E402
from grefine.pipeline import GRefinePipeline  # noqa: E402
from grefine.runner import PromptSourceError, create_metrics, run_folder  # noqa: E402
from grefine.weights import WeightsUnavailableError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="folder of images (default: the built-in demo set)")
    parser.add_argument("--output", type=Path, help="output folder (default: <input>-refined, or ./grefine-demo/output)")
    parser.add_argument("--prompts", type=Path, help="CSV (name,prompt) or JSONL prompts; else sidecar .txt files")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: the config's 'metrics'); 'none' for no scores")
    parser.add_argument("--resume", action="store_true", help="skip images that already have a refined output and a successful row")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import PartialState

    state = PartialState()
    try:
        config = GRefineConfig.from_yaml(args.config)
        if args.seed is not None:
            config.seed = args.seed
        if args.input is None:
            args.input = Path("grefine-demo") / "input"
            if state.is_main_process:
                write_demo_inputs(args.input)
            state.wait_for_everyone()
            args.output = args.output or Path("grefine-demo") / "output"
        output = args.output or args.input.with_name(args.input.name + "-refined")
        names = config.metrics if args.metrics is None else [m for m in args.metrics.split(",") if m and m != "none"]
        if state.num_processes > 1:
            config.device = str(state.device)
        pipeline = GRefinePipeline.from_pretrained(config)
        metrics, failures = create_metrics(names, device=pipeline.pq_map.text_direction.device)
    except (ConfigError, WeightsUnavailableError, MissingWeightsError, PromptSourceError, FileNotFoundError, ValueError) as err:
        print(f"grefine: {err}", file=sys.stderr)
        return 2
    for name, reason in failures.items():
        print(f"grefine: metric {name} unavailable ({reason}); recorded in results.csv", file=sys.stderr)
    try:
        summary = run_folder(
            pipeline,
            args.input,
            output,
            prompts_file=args.prompts,
            metrics=metrics,
            metric_names=names,
            metric_failures=failures,
            resume=args.resume,
            seed=config.seed,
            process_index=state.process_index,
            num_processes=state.num_processes,
            barrier=state.wait_for_everyone,
            progress=not args.no_progress and state.is_local_main_process,
        )
    except (PromptSourceError, FileNotFoundError) as err:
        print(f"grefine: {err}", file=sys.stderr)
        return 2
    print(
        f"grefine: {len(summary.done)} refined, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed -> {output} (results: {summary.results_csv})"
    )
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
