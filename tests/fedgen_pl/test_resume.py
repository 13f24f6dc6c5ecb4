"""Exact resume after SIGKILL, checkpoint fallback, resume=latest, and what may change on resume."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from fedgen_pl.cli import main
from fedgen_pl.config import ConfigError
from fedgen_pl.errors import InputError
from fedgen_pl.resume import load_checkpoint, resume_config
from tests.conftest import SMALL_GRID

FAST = [*SMALL_GRID, "federation.global_rounds=4", "federation.local_iters=2", "metrics.eval_every=1",
        "trainer.checkpoint_every_rounds=1", "trainer.progress_bar=false", "trainer.log_every_n_iters=1"]
ASYNC = ["federation.update=async", "clock.delay=uniform", "clock.delay_low=1", "clock.delay_high=9"]

# Trains like `fedgen train`, and SIGKILLs itself after the first event of round 3 (mid-round: the newest
# checkpoint is round 2's, and round 3's first event is lost with the process).
KILLER = """
import os, signal, sys
import pytorch_lightning as pl
from fedgen_pl.config import load_config
from fedgen_pl.train import train

class KillMidRound(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, *args):
        if pl_module.round == 2 and pl_module.clock.updates.sum() > 0:
            os.kill(os.getpid(), signal.SIGKILL)

train(load_config(sys.argv[1:]), extra_callbacks=[KillMidRound()])
"""


def _csv_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


PRIVATE = {"private feedback": ["privacy.noise_multiplier=2"],
           "private updates": ["model.name=fed_gan", "privacy.noise_multiplier=2"]}


@pytest.mark.parametrize("update", ["sync", "async", "sync with EMA", "private feedback", "private updates"])
def test_sigkill_mid_round_then_resume_equals_uninterrupted_run(tmp_path, update):
    overrides = [*FAST, *(ASYNC if update == "async" else []), f"model.ema_decay={0.9 if 'EMA' in update else 0}",
                 *PRIVATE.get(update, [])]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", *overrides, f"output_dir={straight}"]) == 0

    done = subprocess.run([sys.executable, "-c", KILLER, *overrides, f"output_dir={killed}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert _checkpoint(killed)["federation_state"]["round"] == 2
    assert main(["train", f"resume={killed}"]) == 0

    a, b = _checkpoint(straight), _checkpoint(killed)
    assert a["federation_state"]["iteration"] == b["federation_state"]["iteration"]
    assert a["federation_state"]["clock"] == b["federation_state"]["clock"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert ("ema.n_averaged" in a["state_dict"]) == ("EMA" in update)
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for key, state in opt_a["state"].items():
            for field, value in state.items():
                assert torch.equal(value, opt_b["state"][key][field]), (key, field)
    # The CSV continues: the killed run's rows up to its checkpoint, then the resumed ones, as if never killed.
    assert _csv_rows(killed) == _csv_rows(straight)
    # Each run names the processes that trained it: one start, or a start and a resume from the checkpoint.
    from fedgen_pl.provenance import commit
    straight_by = json.loads((straight / "summary.json").read_text())["trained"]
    killed_by = json.loads((killed / "summary.json").read_text())["trained"]
    assert [s["resumed_from"] for s in straight_by] == [None]
    assert [s["resumed_from"] for s in killed_by] == [None, str(killed / "checkpoints" / "last.ckpt")]
    assert {s["commit"] for s in straight_by + killed_by} == {commit()}
    assert all("cores" in s["hardware"] and s["date"] for s in straight_by + killed_by)
    # The resumed run's cost counts the killed process up to its checkpoint; the straight run's is its own.
    straight_summary, killed_summary = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert straight_summary["run_wall_time_s"] == pytest.approx(straight_summary["wall_time_s"], abs=0.5)
    assert killed_summary["run_wall_time_s"] > killed_summary["wall_time_s"]
    assert killed_summary["run_cpu_seconds"] > killed_summary["cpu_seconds"]


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """The disk fills while round 3's checkpoint is written: the partial file is removed, round 2's checkpoint
    is kept, `fedgen train` says so in one line (exit code 4), and resuming later finishes the run exactly."""
    import errno

    import pytorch_lightning as pl

    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", *FAST, f"output_dir={straight}"]) == 0
    save = pl.Trainer.save_checkpoint

    def full_at_round_three(trainer, path, *args, **kwargs):
        if trainer.lightning_module.round == 3 and str(path).endswith("last.ckpt.tmp"):
            with open(path, "wb") as partial:
                partial.write(b"\0" * 1000)           # what the write got onto the disk before it filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(trainer, path, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", full_at_round_three)
    capsys.readouterr()
    assert main(["train", *FAST, f"output_dir={run}"]) == 4
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fedgen:")]
    assert err == [f"fedgen: no space left on the disk of '{run / 'checkpoints'}' while writing last.ckpt: the run "
                   f"stopped; {run / 'checkpoints' / 'last.ckpt'} (round 2) is intact; free some space, then "
                   f"`fedgen train resume={run}`"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "crash.ckpt") == [
        "last.ckpt", "previous.ckpt"]                                     # no partial file left
    assert _checkpoint(run)["federation_state"]["round"] == 2
    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save)             # space freed
    assert main(["train", f"resume={run}"]) == 0
    a, b = _checkpoint(straight), _checkpoint(run)
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path, caplog):
    run = tmp_path / "run"
    assert main(["train", *FAST, "federation.global_rounds=2", f"output_dir={run}"]) == 0
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    path, checkpoint = load_checkpoint(run)
    assert path.name == "previous.ckpt" and checkpoint["federation_state"]["round"] == 1
    assert "last.ckpt: unreadable" in caplog.text
    assert main(["train", f"resume={run}", "federation.global_rounds=3"]) == 0
    assert _checkpoint(run)["federation_state"]["round"] == 3

    for name in ("last.ckpt", "previous.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="no readable checkpoint"):
        load_checkpoint(run)


def test_resume_refuses_a_changed_configuration(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "federation.global_rounds=1", f"output_dir={run}"]) == 0
    assert main(["train", f"resume={run}", "federation.global_rounds=2", "federation.local_iters=3"]) == 2
    err = capsys.readouterr().err
    assert "federation.local_iters" in err and "is 2 in the checkpoint" in err and "but 3" in err
    assert main(["train", f"resume={run}"]) == 2
    assert "already finished 1 of federation.global_rounds=1" in capsys.readouterr().err
    assert main(["train", f"resume={tmp_path / 'nowhere'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_latest_picks_the_newest_run_of_the_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    older = tmp_path / "runs" / "gaussian_grid-20260101-000000"
    assert main(["train", *FAST, "federation.global_rounds=1", f"output_dir={older}"]) == 0
    newer = tmp_path / "runs" / "gaussian_grid-20260102-000000"
    shutil.copytree(older, newer)
    for path in (newer / "checkpoints").iterdir():
        os.utime(path, (path.stat().st_atime + 100, path.stat().st_mtime + 100))
    cfg = resume_config(["resume=latest", "experiment=gaussian_grid", "federation.global_rounds=2"])
    assert cfg.output_dir == str(os.path.relpath(newer, tmp_path))
    with pytest.raises(ConfigError, match="no run of experiment 'mnist_fmnist_iid'"):
        resume_config(["resume=latest", "experiment=mnist_fmnist_iid"])


def test_resume_continues_the_wandb_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "federation.global_rounds=1", "logger.wandb=true", f"output_dir={run}"]) == 0
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    assert main(["train", f"resume={run}", "federation.global_rounds=2"]) == 0
    assert (run / "wandb_run_id.txt").read_text().strip() == run_id
    # A new W&B run would get a new id (and a directory named after it): every run directory is the same run.
    # Names are offline-run-<YYYYmmdd_HHMMSS>-<id>, with "-1" appended when two start in the same second.
    offline = sorted((run / "wandb").glob("offline-run-*"))
    ids = {re.match(r"offline-run-\d{8}_\d{6}-([^-]+)", d.name).group(1) for d in offline}
    assert offline and ids == {run_id}


def test_checkpoints_and_classifier_cache_load_with_weights_only(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "federation.global_rounds=1", f"output_dir={run}"]) == 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["federation_state"]["partition"][0][0].dtype == torch.long


def test_a_checkpoint_from_an_older_version_loads_with_todays_defaults(tmp_path):
    """Keys added later (here federation.fake_labels and trainer.compile) take their defaults on eval and resume."""
    import torch

    run = tmp_path / "run"
    assert main(["train", *FAST, "federation.global_rounds=1", f"output_dir={run}"]) == 0
    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    del checkpoint["hyper_parameters"]["config"]["federation"]["fake_labels"]
    del checkpoint["hyper_parameters"]["config"]["trainer"]["compile"]
    # ... and the EMA (model.ema_decay, default on since): a checkpoint from before it has no ema.* weights
    del checkpoint["hyper_parameters"]["config"]["model"]["ema_decay"]
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("ema.")}
    torch.save(checkpoint, path)
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads((run / "checkpoints" / "metrics.json").read_text())
    assert not any(k.startswith("ema/") for k in evaluated)          # no average taken yet: none reported
    assert main(["train", f"resume={run}", "federation.global_rounds=2"]) == 0
    resumed = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert int(resumed["ema.n_averaged"]) == 1                       # the EMA started at round 2
    assert any(k.startswith("ema/") for k in json.loads((run / "summary.json").read_text())["metrics"])


def test_a_checkpoint_from_before_the_recipes_loads():
    """Checkpoints written before the recipes kept the round statistics at the top of the state and, for
    reg_cgan and fed_cgan, an unused domain classifier: both load into today's model."""
    from tests.conftest import build_system

    system, _ = build_system()
    old = {k.replace("federation.", "", 1) if k.startswith("federation.") else k: v.clone()
           for k, v in system.state_dict().items()}
    old["domain_classifier.body.0.weight"] = torch.zeros(3)
    checkpoint = {"state_dict": old, "federation_state": {
        "round": 2, "iteration": 7, "rng": ("cpu", torch.Generator().get_state()), "clock": system.clock.state_dict(),
        "bytes": dict(system.bytes), "counters": dict(system.counters)}}
    system.federation.generator_version += 5
    system.on_load_checkpoint(checkpoint)
    system.load_state_dict(checkpoint["state_dict"])            # strict: every key known, none missing
    assert system.round == 2 and system.iteration == 7
    assert int(system.federation.generator_version.sum()) == 0   # the old top-level buffer, restored
