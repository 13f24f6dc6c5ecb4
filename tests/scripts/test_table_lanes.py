"""scripts/table_lanes.sh: a queue of table cells trained by two lanes, each cell once; a second start skips
what finished; bad arguments get one line and exit 2."""

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "table_lanes.sh"
SHORT = "federation.global_rounds=2 metrics.eval_every=1"


def _lanes(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.mark.slow
def test_two_lanes_train_each_cell_once_and_a_restart_skips_the_finished(tmp_path):
    out = tmp_path / "runs"
    queue = tmp_path / "queue.txt"
    queue.write_text("# the grid's FR sync, two seeds, quick\n\n"
                     + "".join(f"|grid|grid|FR sync|{seed}|{out}|{SHORT}\n" for seed in (0, 1)))
    env = {**os.environ, "SCHEDULE": "quick"}
    done = _lanes(queue, 2, env=env)
    assert done.returncode == 0, done.stderr
    runs = [out / "grid" / "grid" / "FR_sync" / f"seed{seed}" for seed in (0, 1)]
    assert all((run / "summary.json").is_file() for run in runs)
    assert done.stdout.count(" start ") == 2 and done.stdout.count("(exit 0)") == 2     # each cell by one lane
    assert {line.split(": start ")[0].split("] ")[1] for line in done.stdout.splitlines() if ": start " in line} \
        == {"lane 1", "lane 2"}
    logs = sorted((tmp_path / "queue.txt.logs").glob("*.log"))
    assert len(logs) == 2 and all("round 2/2" in log.read_text() for log in logs)

    before = [run.joinpath("summary.json").stat().st_mtime_ns for run in runs]
    again = _lanes(queue, env=env)                      # claims kept: nothing is taken again
    assert again.returncode == 0 and " start " not in again.stdout
    subprocess.run(["rm", "-rf", str(tmp_path / "queue.txt.claims")], check=True)
    again = _lanes(queue, env=env)                      # the documented restart: finished runs are skipped
    assert again.returncode == 0 and again.stdout.count("(exit 0)") == 2
    assert [run.joinpath("summary.json").stat().st_mtime_ns for run in runs] == before
    assert json.loads(runs[0].joinpath("summary.json").read_text())["rounds"] == 2


def test_bad_arguments_get_one_line_and_exit_2(tmp_path):
    missing = _lanes(tmp_path / "nope.txt")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("fedgen: not a file (QUEUE ")
    (tmp_path / "q.txt").write_text("")
    lanes = _lanes(tmp_path / "q.txt", 0)
    assert lanes.returncode == 2 and lanes.stderr.strip() == "fedgen: must be a positive integer (LANES 0): e.g. 2"
    assert not (tmp_path / "q.txt.claims").exists()


@pytest.mark.slow
def test_a_cell_at_a_commit_trains_from_a_worktree_made_for_it(tmp_path):
    root = SCRIPT.parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    queue = tmp_path / "queue.txt"
    queue.write_text(f"{commit}|grid|grid|FR sync|0|{tmp_path / 'runs'}|{SHORT}\n")
    tree = tmp_path / f"fedgen-{commit}"
    try:
        done = _lanes(queue, 1, env={**os.environ, "SCHEDULE": "quick", "WORKTREES": str(tmp_path)})
        assert done.returncode == 0 and "(exit 0)" in done.stdout, done.stdout + done.stderr
        assert (tree / "fedgen_pl").is_dir()                      # the worktree, at the commit
        summary = json.loads((tmp_path / "runs" / "grid" / "grid" / "FR_sync" / "seed0" / "summary.json").read_text())
        assert summary["rounds"] == 2
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert summary["trained"][0]["commit"] == head        # the worktree's code (clean), not this checkout's
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], capture_output=True)
