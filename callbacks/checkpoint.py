"""Checkpoints of the whole system at round boundaries, written atomically (temp file + rename).

``last.ckpt`` is the newest; the one it replaced is kept as ``previous.ckpt``, so a damaged newest file
still leaves a checkpoint to resume from (``fedgen_pl/resume.py``). A crash writes ``crash.ckpt``
beside them and leaves both untouched.

Each checkpoint also carries the wall and CPU seconds the run had cost when it was written, so that a run
resumed any number of times still reports what it would have cost uninterrupted (``summary.json``'s
``run_wall_time_s`` and ``run_cpu_seconds``): the seconds up to the checkpoint it resumed from, plus the
resuming process's own. Work lost with a killed process (after its last checkpoint) is not counted."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytorch_lightning as pl

from fedgen_pl.errors import DiskFullError


class RoundCheckpoint(pl.Callback):
    def __init__(self, dirpath: Path, every_n_rounds: int, started: tuple[float, float] | None = None):
        """``started``: ``(time.time(), time.process_time())`` when this process began the run (default: now)."""
        self.dirpath = Path(dirpath)
        self.every_n_rounds = every_n_rounds
        self._saved_round = -1
        self.started = started or (time.time(), time.process_time())
        self.carried: tuple[float, float] | None = (0.0, 0.0)   # before this process; None: not recorded

    def run_seconds(self) -> tuple[float, float] | None:
        """The run's wall and CPU seconds so far, earlier processes included; None when resumed from a
        checkpoint written before checkpoints carried them."""
        if self.carried is None:
            return None
        return (self.carried[0] + time.time() - self.started[0],
                self.carried[1] + time.process_time() - self.started[1])

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    @property
    def previous_path(self) -> Path:
        return self.dirpath / "previous.ckpt"

    def save(self, trainer: pl.Trainer, path: Path, keep_previous: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            trainer.save_checkpoint(tmp, weights_only=False)
        except BaseException as err:
            tmp.unlink(missing_ok=True)                 # a partial file: nothing to keep, and it holds disk space
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                kept = f"{self.last_path} (round {self._saved_round}) is intact" if self._saved_round >= 0 \
                    else "no checkpoint was written yet"
                raise DiskFullError(f"no space left on the disk of '{self.dirpath}' while writing {path.name}: the run "
                                    f"stopped; {kept}; free some space, then `fedgen train "
                                    f"resume={self.dirpath.parent}`") from err
            raise
        if keep_previous and path.exists():
            os.replace(path, self.previous_path)
        os.replace(tmp, path)

    def on_round_end(self, trainer, pl_module) -> None:
        done = pl_module.round
        if done == self._saved_round:
            return
        if done % self.every_n_rounds == 0 or pl_module.training_finished:
            for logger in trainer.loggers:     # the logs reach disk with (before) the checkpoint
                logger.save()
            self.save(trainer, self.last_path, keep_previous=True)
            self._saved_round = done

    def state_dict(self) -> dict:
        return {"saved_round": self._saved_round, "run_seconds": self.run_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved_round = state_dict["saved_round"]
        seconds = state_dict.get("run_seconds")
        self.carried = None if seconds is None else (float(seconds[0]), float(seconds[1]))

    def on_exception(self, trainer, pl_module, exception) -> None:
        # The state may be mid-update; keep last.ckpt intact and leave the crash state beside it.
        try:
            self.save(trainer, self.dirpath / "crash.ckpt")
        except Exception:  # noqa: BLE001 - never mask the original error
            pass
