"""`fedgen report` on two runs: every section present and filled, seeds averaged."""

import re

import pytest

from conftest import SMALL_GRID
from fedgen_pl.cli import main
from fedgen_pl.report import Run, groups, mean_std

FAST = [*SMALL_GRID, "federation.global_rounds=3", "federation.local_iters=2", "metrics.eval_every=1",
        "trainer.progress_bar=false", "trainer.log_every_n_iters=1"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = [root / f"seed{seed}" for seed in (0, 1)]
    for seed, run_dir in zip((0, 1), dirs):
        assert main(["train", *FAST, f"seed={seed}", f"output_dir={run_dir}"]) == 0
    return dirs


def _section(page, anchor):
    start = page.index(f'id="{anchor}"')
    following = page.find("<h2", start)
    return page[start:following if following > 0 else len(page)]


def test_report_has_every_section_with_content(two_runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    page = out.read_text()
    images = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]{200,})"')
    for anchor in ("curves", "weights", "partitions", "samples", "config"):
        section = _section(page, anchor)
        if anchor != "config":
            assert images.search(section), anchor
    curves = _section(page, "curves")
    assert "global/high_quality_share" in curves and "mean ± std over seeds 0, 1" in curves
    # data points behind the curve: one row per evaluated round (3), with a mean and a std
    hq = curves[curves.index("global/high_quality_share"):]
    table = hq[hq.index("<tbody>"):hq.index("</tbody>")]
    assert table.count("<tr>") == 3
    assert "<td>seed</td><td>0</td><td>1</td>" in _section(page, "config")
    assert not re.search(r'(src|href)="(https?:)?//', page)     # self-contained: nothing to fetch


def test_seed_groups_and_mean_std(two_runs, tmp_path):
    runs = [Run(d) for d in two_runs]
    assert [len(g) for g in groups(runs)] == [2]
    stats = mean_std([[(1, 1.0), (2, 3.0)], [(1, 3.0), (2, 3.0), (3, 9.0)]])
    assert stats == [(1, 2.0, pytest.approx(2 ** 0.5)), (2, 3.0, 0.0)]


def test_report_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "): not a run directory (no metrics.csv)" in capsys.readouterr().err
