"""DATA/.lock: one writer per data folder at a time (a `data` run or a review page), held until the process ends.

    with DataLock(Path("data/bears"), "python -m training data"):
        ...   # a second writer gets a StageError naming this one
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from training.errors import StageError

LOCK_NAME = ".lock"


class DataLock:
    """An exclusive lock on a data folder for one writer; the OS drops it when the process ends, even killed."""

    def __init__(self, data_dir: Path, holder: str):
        self.path = data_dir / LOCK_NAME
        self._file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            other = self._file.read().strip() or "another process"
            self._file.close()
            raise StageError(f"{data_dir} is in use by {other}. Use that, or stop it (Ctrl-C) and run this "
                             "again: two writers on one data folder would undo each other's changes") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{holder} (pid {os.getpid()})\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> "DataLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
