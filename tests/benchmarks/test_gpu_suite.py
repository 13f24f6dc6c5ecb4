"""The GPU suite's smoke mode: every part runs at toy sizes on CPU, so the suite cannot rot between GPU
windows, and what it leaves in --out fits what the GPU tool brings back (8 files of 16 MiB)."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_smoke(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    results = json.loads((out / "results.json").read_text())
    assert {name: part["status"] for name, part in results["parts"].items()} == {
        "speed": "ok", "scaling": "ok", "tables": "ok"}
    speed = results["parts"]["speed"]["result"]
    mode = speed["modes"]["none"]
    for key in ("a_loop_over_vectorised", "b_federated_over_centralized", "d_end_to_end_over_step"):
        assert mode[key] > 0, key
    assert [s["devices"] for s in results["parts"]["scaling"]["result"]["sizes"]] == [2, 3]
    runs = results["parts"]["tables"]["result"]["runs"]
    assert runs and all(info["status"] == "finished" for info in runs.values())
    with tarfile.open(out / "tables.tar.gz") as archive:
        names = archive.getnames()
    for name in runs:
        assert f"runs/{name}/archive.npz" in names and f"runs/{name}/summary.json" in names
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    assert "## Step speed" in (out / "summary.md").read_text()
