"""The errors a user can fix, at the bottom of the import graph so every layer can raise them.

Each prints as one line, ``fedgen: <what> (<key or file>): <what is allowed or how to fix it>``, with
exit code 2 and no traceback (``fedgen_pl.cli``). Messages are written ``"<key or file>: <text>"``; the
part before the first ``": "`` is the key or file. Anything else is an internal error and keeps its
traceback.
"""

from __future__ import annotations


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
