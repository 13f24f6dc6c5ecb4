"""The run's cost carried through checkpoints: what a resumed run reports as its wall and CPU seconds."""

import pytest

import callbacks.checkpoint as checkpoint_module
from callbacks.checkpoint import RoundCheckpoint


class FakeClocks:
    def __init__(self, monkeypatch):
        self.wall, self.cpu = 0.0, 0.0
        monkeypatch.setattr(checkpoint_module.time, "time", lambda: self.wall)
        monkeypatch.setattr(checkpoint_module.time, "process_time", lambda: self.cpu)


def test_a_resumed_run_adds_its_seconds_to_those_of_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    clocks = FakeClocks(monkeypatch)
    first = RoundCheckpoint(tmp_path, every_n_rounds=1, started=(100.0, 10.0))
    clocks.wall, clocks.cpu = 130.0, 25.0                    # the checkpoint is written 30 s / 15 core-s in
    saved = first.state_dict()
    assert saved["run_seconds"] == pytest.approx((30.0, 15.0))
    clocks.wall, clocks.cpu = 170.0, 40.0                    # work after it dies with the process: not counted

    second = RoundCheckpoint(tmp_path, every_n_rounds=1, started=(500.0, 50.0))
    second.load_state_dict(saved)
    clocks.wall, clocks.cpu = 510.0, 54.0
    assert second.run_seconds() == pytest.approx((40.0, 19.0))
    assert second.state_dict()["run_seconds"] == pytest.approx((40.0, 19.0))


def test_a_checkpoint_written_before_run_seconds_were_kept_leaves_them_unknown(tmp_path, monkeypatch):
    FakeClocks(monkeypatch)
    resumed = RoundCheckpoint(tmp_path, every_n_rounds=1, started=(0.0, 0.0))
    resumed.load_state_dict({"saved_round": 40})
    assert resumed.run_seconds() is None
    assert resumed.state_dict() == {"saved_round": 40, "run_seconds": None}   # and stays unknown when saved again
