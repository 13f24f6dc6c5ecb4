"""benchmarks/health.py: the health table of kept runs, and the level verdict between two precisions."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("health_script", ROOT / "benchmarks" / "health.py")
health_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(health_script)

COLUMNS = ["round", "global/is_classifier", "global/fid_classifier", "global/acc", "ema/global/fid_classifier",
           "ema/global/acc"]


def fake_run(path: Path, precision: str, seed: int, final_fid: float, final_is: float = 12.0,
             accuracy: str = "acc", d_lr: float = 0.001, final_acc: float = 0.8) -> Path:
    """A run directory as `fedgen train` leaves it, with two evaluations (rounds 20 and 100); the label-related
    models log ``class_consistency`` where the others log ``acc``."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"seed: {seed}\nfederation:\n  update: sync\ntrainer:\n  precision: {precision}\n"
                                      f"model:\n  gan_loss: saturating\n  d_lr: {d_lr}\n")
    (path / "summary.json").write_text(json.dumps(
        {"experiment": "toy", "classifier": {"label_names": [str(i) for i in range(20)]}}))
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "train/d_loss", *(c.replace("acc", accuracy) for c in COLUMNS)])
        writer.writerow([5, 0.001, "", "", "", "", "", ""])                # training rows: no evaluation
        for step, d_loss in zip((210, 220, 230, 240), (0.005, 0.7, 0.0099, 0.01)):   # past iteration 200
            writer.writerow([step, d_loss, "", "", "", "", "", ""])
        writer.writerow([100, "", 20, 1.1, 900.0, 0.1, 800.0, 0.1])
        writer.writerow([500, "", 100, final_is, final_fid, final_acc, final_fid - 5, 0.85])
    return path


def test_rows_groups_and_the_level_verdict(tmp_path, capsys, monkeypatch):
    runs = [fake_run(tmp_path / "fp32" / f"s{s}", "32-true", s, fid) for s, fid in enumerate([100.0, 110.0, 120.0])]
    runs += [fake_run(tmp_path / "bf16" / f"s{s}", "bf16-mixed", s, fid, final_is=7.5)
             for s, fid in enumerate([125.0, 117.0])]
    monkeypatch.setattr(sys, "argv", ["health.py", *map(str, runs)])
    health_script.main()
    out = capsys.readouterr().out
    assert "| `toy` | `32-true` | 1 | 1.10 / 12.00 | 900.0 / 110.0 | 0.100 / 0.800 | 800.0 / 105.0 | 0.100 / 0.850 | 0.50 (saturating) | met |" in out
    assert "| `toy` | `bf16-mixed` | 0 | 1.10 / 7.50 |" in out and "**not met**" in out      # 7.5 < 0.4 x 20 labels
    assert "| `toy` | `32-true` | 0, 1, 2 | 110.0 ± 10.0 | 105.0 ± 10.0 | 0.800 ± 0.000 | 3 of 3 |" in out
    assert "| `toy` | `bf16-mixed` | 0, 1 | 121.0 ± 5.7 | 116.0 ± 5.7 | 0.800 ± 0.000 | 0 of 2 |" in out
    # bf16 mean 121 is 11 from the fp32 mean 110 whose std is 10
    assert "`toy` final FID: `bf16-mixed` 121.0 against `32-true` 110.0 (2 and 3 seeds): gap 11.0, reference std 10.0: **not level**" in out


def test_label_related_runs_show_class_consistency_in_the_accuracy_column(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "lr", "bf16-mixed", 0, 150.0, final_is=5.0, accuracy="class_consistency")
    (run / "summary.json").write_text(json.dumps(
        {"experiment": "inverse", "classifier": {"label_names": [str(i) for i in range(10)]}}))
    monkeypatch.setattr(sys, "argv", ["health.py", str(run)])
    health_script.main()
    out = capsys.readouterr().out
    assert "| `inverse` | `bf16-mixed` | 0 | 1.10 / 5.00 | 900.0 / 150.0 | 0.100 / 0.800 | 800.0 / 145.0 | 0.100 / 0.850 | 0.50 (saturating) | met |" in out


def test_by_a_config_key_splits_the_groups_and_names_the_reference(tmp_path, capsys, monkeypatch):
    runs = [fake_run(tmp_path / f"a{s}", "bf16-mixed", s, fid, final_acc=acc)
            for s, fid, acc in ((0, 100.0, 0.80), (1, 120.0, 0.84))]
    runs += [fake_run(tmp_path / f"b{s}", "bf16-mixed", s, 125.0, d_lr=0.0003, final_acc=0.9) for s in (0, 1)]
    monkeypatch.setattr(sys, "argv", ["health.py", *map(str, runs), "--by", "model.d_lr",
                                      "--reference", "bf16-mixed model.d_lr=0.001"])
    health_script.main()
    out = capsys.readouterr().out
    assert "| experiment | precision, model.d_lr | seed |" in out
    assert "| `toy` | `bf16-mixed model.d_lr=0.001` | 0, 1 | 110.0 ± 14.1 | 105.0 ± 14.1 | 0.820 ± 0.028 | 2 of 2 |" in out
    assert "| `toy` | `bf16-mixed model.d_lr=0.0003` | 0, 1 | 125.0 ± 0.0 | 120.0 ± 0.0 | 0.900 ± 0.000 | 2 of 2 |" in out
    # 125 is 15 from 110, whose std is 14.1
    assert ("`toy` final FID: `bf16-mixed model.d_lr=0.0003` 125.0 against `bf16-mixed model.d_lr=0.001` 110.0 "
            "(2 and 2 seeds): gap 15.0, reference std 14.1: **not level**") in out


def test_a_run_too_short_to_show_saturation_gets_a_dash(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "short", "bf16-mixed", 0, 150.0)
    rows = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(r for r in rows if not r.split(",")[0] in ("210", "220", "230", "240")))
    monkeypatch.setattr(sys, "argv", ["health.py", str(run)])
    health_script.main()
    assert "| – (saturating) | met |" in capsys.readouterr().out


def test_a_run_recorded_before_the_by_key_existed_groups_under_its_default(tmp_path, capsys, monkeypatch):
    old = fake_run(tmp_path / "old", "bf16-mixed", 0, 150.0)                  # its config has no instance_noise
    new = fake_run(tmp_path / "new", "bf16-mixed", 1, 140.0)
    (new / "config.yaml").write_text((new / "config.yaml").read_text() + "  instance_noise: 0.0\n")
    monkeypatch.setattr(sys, "argv", ["health.py", str(old), str(new), "--by", "model.instance_noise"])
    health_script.main()
    assert "| `toy` | `bf16-mixed model.instance_noise=0.0` | 0, 1 |" in capsys.readouterr().out


def test_an_async_run_has_no_bar_at_its_last_round(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "async", "bf16-mixed", 0, 150.0, final_is=3.0)         # below 0.4 x 20, above 1.2
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("update: sync", "update: async"))
    monkeypatch.setattr(sys, "argv", ["health.py", str(run)])
    health_script.main()
    assert "| `toy` | `bf16-mixed` | 0 | 150.0 | 145.0 | 0.800 | 1 of 1 |" in capsys.readouterr().out


def test_a_path_that_is_not_a_finished_run_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "s0", "bf16-mixed", 0, 150.0)
    log = tmp_path / "s0.log"
    log.write_text("a log a glob caught\n")
    monkeypatch.setattr(sys, "argv", ["health.py", str(run), str(log)])
    try:
        health_script.main()
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("no exit")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"fedgen: not a finished run directory ({log}): it lacks config.yaml, summary.json, metrics.csv; pass the "
        "directories that `fedgen train` finished"]
