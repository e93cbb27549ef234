"""Exceptions shared by grefine's components."""
from __future__ import annotations

CHECKPOINTS_HELP = "See checkpoints/README.md for where each weight comes from and how to place it offline."


class MissingWeightsError(OSError):
    """Weights (a hub id or a local folder/file) could not be loaded.

    The message names what was asked for and points at ``checkpoints/README.md``.
    """

    def __init__(self, what: str, source: str, cause: BaseException | None = None) -> None:
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"cannot load {what} from '{source}'{detail}. {CHECKPOINTS_HELP}")
        self.what = what
        self.source = source
