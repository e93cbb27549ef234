"""One run owns an output folder: :class:`OutputLock`.

``<folder>/.grefine.lock`` is created exclusively and records the owner: host, process id and
the process's start time (so a reused process id is not mistaken for the owner). While the
owner lives a second run is refused with a :class:`~grefine.errors.RunInputError`; a lock whose
process is gone on this host (a killed run) is stale and taken over, and so is an unreadable one
older than :data:`UNREADABLE_GRACE_S` (a run that died while writing it). A lock that cannot be
written (a full disk) is removed again and the run refused. A lock made on another host cannot be
checked from here and is reported with the command to remove it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from grefine.errors import RunInputError

LOCK_NAME = ".grefine.lock"
UNREADABLE_GRACE_S = 10.0
"""An unreadable lock younger than this may be one another run is writing right now."""


class OutputLock:
    """One run owns an output folder: ``<folder>/.grefine.lock`` records the owner (host, process
    id and its start time), created exclusively. While the owner lives a second run is refused
    (:class:`~grefine.errors.RunInputError`); a lock whose process is gone (a killed run, on this
    host) is stale and taken over. Released on exit (``with OutputLock(folder): ...``)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(2):  # a stale lock is removed once, then taken
            if self._create():
                self.held = True
                return
            owner = self._owner()
            if not (self._unreadable_and_old() if owner is None else _is_stale(owner)):
                break
            self.path.unlink(missing_ok=True)
        who = "an unreadable lock" if owner is None else f"process {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
        raise RunInputError(
            f"--output {self.path.parent} is in use by another grefine run ({who}): wait for it to finish or choose another "
            f"output folder; if no such run exists, delete {self.path}."
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _create(self) -> bool:
        """Create the lock with its record in one write; a lock that cannot be written whole (a
        full disk) is removed again and the run refused."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_started(os.getpid()), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        data = json.dumps(record).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        except OSError as err:
            raise self._cannot_write(err) from err
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, os.strerror(28))  # a short write: the disk is full
        except OSError as err:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise self._cannot_write(err) from err
        os.close(fd)
        return True

    def _cannot_write(self, err: OSError) -> RunInputError:
        return RunInputError(
            f"--output {self.path.parent}: cannot write the lock {LOCK_NAME} there ({err.strerror or err}); "
            "free some space or choose another output folder. Nothing was written."
        )

    def _unreadable_and_old(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime > UNREADABLE_GRACE_S
        except FileNotFoundError:
            return True

    def _owner(self) -> Optional[dict]:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}  # released meanwhile: stale, try again
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None


def _process_started(pid: int) -> Optional[float]:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_stale(owner: dict) -> bool:
    """The lock's process is gone (or its id now belongs to another process) on this host."""
    if not owner:
        return True
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False  # another machine's process cannot be checked from here
    started = _process_started(owner["pid"])
    return started is None or started != owner.get("pid_started")
