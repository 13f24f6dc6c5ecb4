"""The errors a user can fix, at the bottom of the import graph so every layer can raise them.

Each prints as one line, ``fedgen: <what> (<key or file>): <what is allowed or how to fix it>``, with
exit code 2 and no traceback (``fedgen_pl.cli``). Messages are written ``"<key or file>: <text>"``; the
part before the first ``": "`` is the key or file. Anything else is an internal error and keeps its
traceback.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path


class InputError(Exception):
    """Bad input: configuration, YAML, data files, plugins, the device asked for."""

    what = "input error"

    def __init__(self, message: str, where: str | None = None):
        message = " ".join(str(message).split())          # one line, whatever the source wrote
        if where is None and ": " in message:
            where, message = message.split(": ", 1)
        self.where, self.message = where, message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what} ({self.where}): {self.message}" if self.where else f"{self.what}: {self.message}"

    def __reduce__(self):                 # pickled whole across processes (fedgen table --jobs)
        return type(self), (self.message, self.where)


class ConfigError(InputError, ValueError):
    what = "configuration error"


class DataError(InputError, ValueError):
    what = "data error"


class DataNotFoundError(DataError, FileNotFoundError):
    """No source had the dataset; the message lists every place tried and how to fix it."""

    what = "data not found"


class CorruptDataError(DataError):
    """A data file exists but cannot be read, or holds what it must not (names the file)."""

    what = "unreadable data"


class RunDirError(InputError):
    """The output directory already holds a run."""

    what = "run directory in use"


class OutputError(InputError, OSError):
    what = "output error"


def check_writable_dir(path: str | Path, where: str, need_bytes: int = 0) -> None:
    """Where a command will write: ``path`` must be a directory or creatable as one, writable, on a disk with
    ``need_bytes`` free. Checked before anything is written; the error names ``where`` (the key or flag)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"'{path}' is a file, not a directory; choose a directory (or remove the file)", where=where)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"'{existing}' is a file, so '{path}' cannot be made under it; choose another directory",
                          where=where)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"'{existing}' is not writable by this user, so '{path}' cannot be written; choose a "
                          f"writable directory or change its permissions", where=where)
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise OutputError(f"{free / 2 ** 20:.0f} MiB free on the disk of '{existing}', a checkpoint needs about "
                          f"{need_bytes / 2 ** 20:.0f} MiB; free some space or choose another disk", where=where)


def release_held_logs() -> None:
    """The input is checked and the command is under way: the ``fedgen`` log lines held back while checking
    (``fedgen_pl.cli``) are printed, and later ones go straight out."""
    for handler in logging.getLogger("fedgen").handlers:
        if hasattr(handler, "let_through"):
            handler.let_through()


class RunStopped(RuntimeError):
    """A run that stopped on purpose mid-way: ``fedgen`` prints one line and exits with ``exit_code``."""

    exit_code = 1


class NonFiniteError(RunStopped):
    """A NaN or inf in a device's loss or gradients, with ``trainer.nonfinite=stop``."""

    exit_code = 3


class DiskFullError(RunStopped):
    """The disk filled while a run wrote its checkpoint; the previous checkpoint is intact."""

    exit_code = 4
