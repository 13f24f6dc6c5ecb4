"""benchmarks/table_cost.py: the arithmetic of a table's core-hours, and what its runs still have to do."""

import importlib.util
import json
from pathlib import Path

import pytest

from fedgen_pl.cli import main as fedgen
from tests.conftest import SMALL_GRID

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("table_cost", ROOT / "benchmarks" / "table_cost.py")
table_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table_cost)


def test_core_hours_counts_rounds_evaluations_and_the_last_evaluation():
    # 100 rounds x 2 s, evaluations at rounds 20, 40, 60, 80 and 100, the last (5 x 5 s), 60 s of Inception
    assert table_cost.core_hours(100, 20, 2.0, 5.0, 60.0) == pytest.approx((200 + 25 + 60) / 3600)
    # 90 rounds: at 20, 40, 60, 80 and at the last round, 90
    assert table_cost.core_hours(90, 20, 2.0, 5.0, 60.0) == pytest.approx((180 + 25 + 60) / 3600)
    assert table_cost.core_hours(0, 20, 2.0, 5.0, 60.0) == 0.0


def test_remaining_rounds_of_a_finished_a_cut_off_and_a_new_run(tmp_path):
    run = tmp_path / "run"
    assert fedgen(["train", *SMALL_GRID, "federation.global_rounds=2", "federation.local_iters=1",
                   "metrics.eval_every=2", "trainer.progress_bar=false", f"output_dir={run}"]) == 0
    assert table_cost.remaining_rounds(run, 2) == 0                   # finished: summary.json
    (run / "summary.json").unlink()                                   # cut off after its round-2 checkpoint
    assert table_cost.remaining_rounds(run, 5) == 3
    assert table_cost.remaining_rounds(tmp_path / "never", 5) == 5


def test_a_table_counts_only_the_runs_left(tmp_path, capsys):
    out = tmp_path / "table"
    finished = out / "grid" / "grid" / "FR_sync" / "seed0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"metrics": {}}))
    total = table_cost.main(["--tables", "grid", "--methods", "FR sync", "--seeds", "0", "1", "--schedule", "quick",
                             "--out", str(out), "--rounds", "1", "federation.global_rounds=4"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| grid |")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[2] == "FR sync" and cells[7:9] == ["1", "4"]        # seed 1 only, its 4 rounds
    assert total > 0 and float(cells[9]) == pytest.approx(total, abs=0.05)


def test_a_finished_column_shows_the_precision_its_runs_recorded(tmp_path, capsys):
    out = tmp_path / "table"
    for seed, precision in ((0, "bf16-mixed"), (1, "bf16-mixed")):
        run = out / "grid" / "grid" / "FR_sync" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"metrics": {}}))
        (run / "config.yaml").write_text(f"trainer:\n  precision: {precision}\n")
    assert table_cost.main(["--tables", "grid", "--methods", "FR sync", "--seeds", "0", "1", "--schedule", "quick",
                            "--out", str(out)]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| grid |")]
    assert [c.strip() for c in row[0].strip("|").split("|")][3:] == ["bf16-mixed", "–", "–", "–", "0", "0", "0"]


def test_an_unknown_column_is_refused_not_left_out(capsys):
    with pytest.raises(SystemExit) as stop:
        table_cost.main(["--tables", "grid", "--methods", "FR sync", "trainer.precision=bf16-mixed"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fedgen: configuration error (--methods): unknown column(s) ['trainer.precision=bf16-mixed']")
