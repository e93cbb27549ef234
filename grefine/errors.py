"""Exceptions shared by grefine's components, and how a refused run says so."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

CHECKPOINTS_HELP = "See checkpoints/README.md for where each weight comes from and how to place it offline."


class MissingWeightsError(OSError):
    """Weights (a hub id or a local folder/file) could not be loaded; the message names what
    was asked for and points at ``checkpoints/README.md``. Every component's loading error
    derives from it, so callers catch this one type."""

    @classmethod
    def for_source(cls, what: str, source: str, cause: BaseException | None = None) -> "MissingWeightsError":
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return cls(f"cannot load {what} from '{source}'{detail}. {CHECKPOINTS_HELP}")


class RunInputError(ValueError):
    """A run cannot start: an input (folder, prompts file, option) or the output folder is wrong.
    The message is one line naming the input and the fix; the command-line tools exit with 2."""


class MissingItemsError(OSError):
    """Several things a run needs are missing (weights, data): one message, a head line, then one
    ``  - `` line per missing item saying where it comes from, then where to read more. The
    command-line tools print it as such a list (:func:`refusal_text`) and exit with 2."""


class NotScoredError(ValueError):
    """A metric cannot score this image (e.g. it is smaller than the metric's window); the message
    is the one-line reason recorded in ``results.csv``."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C after writing what was already refined: ``summary`` (a
    :class:`grefine.run.runner.RunSummary`) says what was kept in ``output``."""

    def __init__(self, summary: Any, output: Path) -> None:
        super().__init__()
        self.summary = summary
        self.output = output


def interruption_text(stop: RunInterrupted) -> str:
    """The one line of a run stopped by Ctrl-C: what was kept, and that ``--resume`` continues."""
    done, output = len(stop.summary.done), printable(str(stop.output))
    kept = f"{done} image(s) refined and kept in {output} (their rows are in results.csv)" if done else f"no image finished yet in {output}"
    return f"interrupted: {kept}; run the same command with --resume to continue."


def refusal_text(err: BaseException) -> str:
    """The text of a refusal for stderr: one line (whitespace collapsed), or for a
    :class:`MissingItemsError` its head line, one line per missing item and its last line."""
    if not isinstance(err, MissingItemsError):
        return printable(" ".join(str(err).split()))
    lines = []
    for line in str(err).splitlines():
        text = " ".join(line.split())
        if text:
            lines.append(f"  {text}" if text.startswith("- ") else text)
    return printable("\n".join(lines))


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors (an unknown option, a value of the wrong type, two
    options that exclude each other) raise :class:`RunInputError` — one line naming the option,
    exit 2 — instead of printing the usage block."""

    def error(self, message: str) -> NoReturn:
        raise RunInputError(f"{message[0].upper()}{message[1:]} (see --help).")


def printable(text: str) -> str:
    """``text`` safe to print and to write as UTF-8: bytes of a file name that were not valid
    UTF-8 (kept by Python as surrogate escapes) are shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class NonFiniteImageError(RuntimeError):
    """A diffusion stage produced NaN or infinite pixels, which would be written as black."""

    @classmethod
    def for_stage(cls, stage: str, dtype: object) -> "NonFiniteImageError":
        return cls(
            f"{stage} produced NaN/inf pixels (models in {dtype}). In fp16 this is usually the VAE overflowing: "
            "set dtype to bf16 or fp32, or for stage 1 set stage1.vae to an fp16-fixed VAE "
            "(e.g. madebyollin/sdxl-vae-fp16-fix)."
        )
