#!/usr/bin/env python
"""The interactive G-Refine app in a browser: one image, its maps, its mask edited before refining.

    python scripts/app.py [--config YAML] [--port N]

Needs the ``app`` extra (``pip install -e ".[app]"``, Gradio). Serves on http://127.0.0.1:N
(default 7860, this machine only; no share link, nothing fetched from the network): upload or pick
an image and type its prompt; see the PQ-Map P, the defect map D, the scores and the phrase table;
move the mask's bounds, dilation and feather and the strengths and steps, and paint on the mask
(green adds a region, black removes one) while the mask stage 1 will use updates; refine; compare
before and after with a slider; download the refined image, its maps, the mask and the phrase
table. ``--config configs/tiny-random.yaml`` runs it with tiny random models on a CPU (noise
outputs: to try the app without weights).

The options, the config, the weights and the port are checked before any model loads: a problem
is one line on stderr and exit status 2. Ctrl-C stops the app.
"""
from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.config import ConfigError, GRefineConfig  # noqa: E402
from grefine.errors import MissingWeightsError, RunInputError, printable  # noqa: E402
from grefine.weights import WeightsUnavailableError, check_weights  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default: 7860)")
    return parser.parse_args(argv)


def check_port(port: int) -> None:
    """The port is a valid one and free on 127.0.0.1."""
    if not 1 <= port <= 65535:
        raise RunInputError(f"--port {port}: a port is a number from 1 to 65535.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise RunInputError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({err.strerror}); choose another port with --port.") from err


def check_gradio() -> None:
    if importlib.util.find_spec("gradio") is None:
        raise RunInputError('the app needs Gradio, which is not installed: pip install -e ".[app]"')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_gradio()
        config = GRefineConfig.from_yaml(args.config)
        check_port(args.port)
        check_weights(config)
    except (ConfigError, RunInputError, WeightsUnavailableError, MissingWeightsError) as err:
        print(f"app: {printable(' '.join(str(err).split()))}", file=sys.stderr)
        return 2
    from grefine.app import build_app, launch
    from grefine.pipeline import GRefinePipeline
    from grefine.run.demo import DEMO_PROMPTS, write_demo_inputs

    pipeline = GRefinePipeline.from_pretrained(config)
    with tempfile.TemporaryDirectory(prefix="grefine-app-") as workdir:
        examples = [(path, DEMO_PROMPTS[path.stem]) for path in write_demo_inputs(Path(workdir) / "examples")]
        app = build_app(pipeline, Path(workdir), examples)
        url = launch(app, args.port, Path(workdir))
        print(f"app: serving {url} (Ctrl-C stops it)", flush=True)
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
