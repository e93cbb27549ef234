"""Library messages during a run go to a log file: :func:`library_messages`.

Loading and running diffusers, transformers, bitsandbytes and pyiqa models prints warnings that
tell a user nothing they can act on (diffusers' "modules … should be kept in float32: []",
deprecations, optional kernels that are not installed) and break up the run's progress bar. Inside
``with library_messages(path) as log:`` Python warnings and every log record that a stream handler
(a library's, one created inside the block, or logging's last resort) would print on the terminal
go to ``path`` instead, appended; the file is written only when there was something to say, and ``log.path`` is
then set so that the run's summary can name it. Download progress bars and grefine's own lines
are left alone: a real download still shows.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional


@dataclass
class LibraryLog:
    """Where the messages went: ``path`` when some were written, else None; ``lines`` counted."""

    path: Optional[Path] = None
    lines: int = 0


@contextlib.contextmanager
def library_messages(log_path: Path) -> Iterator[LibraryLog]:
    """Route warnings and the log records that stream handlers print (those of libraries imported
    inside the block too, and logging's last resort) to ``log_path`` for the ``with`` block;
    handlers that write files of their own are left alone."""
    buffer = io.StringIO()
    emit = logging.StreamHandler.emit

    def into_buffer(handler: logging.StreamHandler, record: logging.LogRecord) -> None:
        if isinstance(handler, logging.FileHandler):
            emit(handler, record)
            return
        try:
            buffer.write(handler.format(record) + "\n")
        except Exception:  # as logging does: a bad record must not stop the run
            handler.handleError(record)

    log = LibraryLog()
    logging.StreamHandler.emit = into_buffer
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: buffer.write(
                warnings.formatwarning(message, category, filename, lineno, line)
            )
            yield log
    finally:
        logging.StreamHandler.emit = emit
        _append(buffer.getvalue(), Path(log_path), log)


def _append(text: str, path: Path, log: LibraryLog) -> None:
    """Append ``text`` under a dated heading; a log that cannot be written must not fail the run."""
    if not text.strip():
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: messages of the libraries during the run\n{text}")
    except OSError:
        return
    log.path, log.lines = path, text.count("\n")
