"""Exceptions shared by grefine's components."""
from __future__ import annotations

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
