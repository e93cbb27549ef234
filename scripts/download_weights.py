#!/usr/bin/env python
"""Fetch every weight a config and its metrics need into the usual caches, for runs without network.

    python scripts/download_weights.py [--config YAML] [--metrics LIST] [--device DEVICE]

First a plan on stderr — what will be fetched, from where, how large (the hub's file metadata),
into which cache, and the free space there; refused at once, in one line, when it cannot fit —,
then the downloads with progress bars: the config's models into the Hugging Face cache
(``HF_HOME``), PQ-Map's official embeddings into ``~/.cache/grefine`` (SHA-256 checked), the
metrics' files into pyiqa's and the hub's caches. Interrupted? Run it again: complete files are
kept, only the rest is fetched. Then NLTK's tagger and stop words (AQ-Map), and each metric is
created once on the CPU so that its library fetches whatever the plan could not name. Afterwards
``HF_HUB_OFFLINE=1 python scripts/refine.py --config YAML ...`` runs without network.

``--device`` is the device the runs will use (default: the config's; ``auto`` is this machine's):
with a GPU the fp16 variant files of ``stage1.model`` are fetched, on a CPU the fp32 ones. Exit
status: 0 when everything is in the caches, 1 when a metric could not be prepared (listed), 2 when
refused (one line on stderr: options, config, no network, not enough space, a failed download).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.config import ConfigError, GRefineConfig, check_value  # noqa: E402
from grefine.errors import MissingWeightsError, RunInputError, printable  # noqa: E402
from grefine.weights import WeightsUnavailableError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: the config's 'metrics'); 'none' for none")
    parser.add_argument("--device", default=None, help="the device the runs will use: auto, cpu, cuda, ... (default: the config's)")
    return parser.parse_args(argv)


def metric_names(args: argparse.Namespace, config: GRefineConfig) -> list[str]:
    """The requested metrics and the one ``verify.select`` names, every name checked against the
    registry (no model is built)."""
    if args.metrics is None:
        names, where = config.metrics, f"metrics in {config.source}"
    else:
        names, where = [m.strip() for m in args.metrics.split(",") if m.strip() and m.strip() != "none"], "--metrics"
    select = [config.verify.metric] if config.verify.metric else []
    if not names + select:
        return []
    from grefine.eval.metrics import check_metric_names

    return list(dict.fromkeys(check_metric_names(names, where) + check_metric_names(select, f"verify.select in {config.source}")))


def fetch_weights(config: GRefineConfig, names: list[str]) -> None:
    """Plan and fetch the config's and the metrics' weights, then check that an offline run
    finds everything (NLTK's data is fetched by that check when missing)."""
    from grefine.eval.metric_weights import metric_weights
    from grefine.weights import check_weights, hub_offline, hub_reachable, prepare_weights, required_weights

    if hub_offline():
        raise RunInputError("downloads are off (HF_HUB_OFFLINE is set): unset it to fetch the weights.")
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise RunInputError(f"the Hugging Face hub ({endpoint}) cannot be reached: run this on a machine with network.")
    prepare_weights(required_weights(config) + metric_weights(names), say=lambda line: print(line, file=sys.stderr))
    check_weights(config, online=False)


def prepare_metrics(names: list[str]) -> dict[str, str]:
    """Create each metric once on the CPU (its library fetches its files into its cache); returns
    the reason of each that could not be created."""
    from grefine.eval.metrics import MetricUnavailable, create_metric

    failures = {}
    for name in names:
        try:
            create_metric(name, device="cpu")
            print(f"grefine: metric {name} ready", file=sys.stderr)
        except MetricUnavailable as err:
            failures[name] = " ".join(str(err).split())
    return failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = GRefineConfig.from_yaml(args.config)
        if args.device is not None:
            config.device = check_value(GRefineConfig, "device", args.device, "--device")
        names = metric_names(args, config)
        fetch_weights(config, names)
    except (ConfigError, RunInputError, WeightsUnavailableError, MissingWeightsError) as err:
        print(f"grefine: {printable(' '.join(str(err).split()))}", file=sys.stderr)
        return 2
    failures = prepare_metrics(names)
    for name, reason in failures.items():
        print(f"grefine: metric {name} could not be prepared: {reason}", file=sys.stderr)
    if failures:
        return 1
    print(f"grefine: every weight of {args.config} and its metrics is in the caches; "
          f"HF_HUB_OFFLINE=1 python scripts/refine.py --config {args.config} ... runs without network.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
