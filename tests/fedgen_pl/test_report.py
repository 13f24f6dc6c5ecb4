"""`fedgen report` on two runs: every section present and filled, seeds averaged."""

import re

import pytest

from fedgen_pl.cli import main
from fedgen_pl.report import Run, groups, mean_std
from tests.conftest import SMALL_GRID

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


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory, two_runs):
    """The two seeds, seed 0 again with other trainer/evaluation settings, and a run on another label space."""
    root = tmp_path_factory.mktemp("mixed")
    third = root / "seed0-quiet"
    assert main(["train", *FAST, "seed=0", "trainer.log_every_n_iters=2", "metrics.eval_every=2",
                 f"output_dir={third}"]) == 0
    other = root / "two-modes"
    assert main(["train", *FAST, "federation.communities=[{data: gaussian_grid, classes: [0]}, "
                 "{data: gaussian_grid, classes: [8]}]", f"output_dir={other}"]) == 0
    return [*two_runs, third, other]


def test_groups_ignore_keys_that_cannot_change_results(mixed_runs):
    runs = [Run(d) for d in mixed_runs]
    assert sorted(len(g) for g in groups(runs)) == [1, 3]       # trainer.* and metrics.eval_every ignored


def test_report_final_table_zero_panels_partitions_and_bands(mixed_runs, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, mixed_runs), "--out", str(out)]) == 0
    page = out.read_text()
    final = _section(page, "final")
    assert "global/high_quality_share" in final and "mean ± std over seeds 0, 1, 0" in final
    assert final.count("<tr>") == 3                                # header + two groups
    curves = _section(page, "curves")
    # faults are zero in every run: listed, not drawn
    assert "Zero in every run, not drawn" in curves and "faults/nonfinite_skipped" in curves.split("Zero in")[1]
    assert 'alt="faults/nonfinite_skipped"' not in curves
    # seed 0 twice: one partition figure for both, then seed 1's and the other run's
    partitions = _section(page, "partitions")
    assert partitions.count("<img") == 3 and "<h3>seed0, seed0-quiet</h3>" in partitions
    # data tables hold every point: the weights of all 3 rounds of every community
    weights = _section(page, "weights")
    table = weights[weights.index("<tbody>"):weights.index("</tbody>")]
    assert table.count("<tr>") == 3 * 3


def test_band_is_clipped_to_the_metric_range():
    from fedgen_pl.report import metric_range

    assert metric_range("global/high_quality_share") == (0.0, 1.0)
    assert metric_range("cloud/weight_0") == (0.0, 1.0)
    assert metric_range("global/fid_classifier") == (0.0, None)
    assert metric_range("train/d_loss") == (None, None)


def test_classifier_metrics_of_different_label_spaces_are_drawn_apart(tmp_path):
    """Two runs scored by different classifiers (MNIST+FashionMNIST vs MNIST/inverse): one figure each."""
    import csv

    from fedgen_pl.report import build_report

    dirs = []
    for name, communities, fid in (("feature", "[{data: mnist}, {data: fashion_mnist}]", 100.0),
                                   ("label", "[{data: mnist}, {data: inverse_mnist}]", 300.0)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"seed: 0\nfederation:\n  communities: {communities}\n"
                                       f"data:\n  label_space: union\n")
        with open(d / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "round", "virtual_time", "global/fid_classifier"])
            writer.writerows([[10, 1, 10, fid], [20, 2, 20, fid / 2]])
        dirs.append(d)
    page = build_report(dirs, tmp_path / "r.html").read_text()
    curves = _section(page, "curves")
    assert curves.count('alt="global/fid_classifier (classifier over') == 2
