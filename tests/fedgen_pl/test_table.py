"""`fedgen table`: the run list and the Markdown layout (on fabricated summaries), and runs trained in parallel."""

import json
import shutil
from pathlib import Path

import pytest

from fedgen_pl.config import load_config
from fedgen_pl.table import PAPER, ensure_runs, render, run_dir_for, runs_for, tables
from tests.conftest import SMALL_GRID


def test_runs_cover_every_method_split_and_seed():
    runs = runs_for("table1", "quick", [0, 1])
    assert len(runs) == 2 * 5 * 2
    keys = {key for key, _ in runs}
    assert ("table1", "noniid", "FR async", 1) in keys
    overrides = dict(runs)[("table1", "noniid", "FR async", 1)]
    assert "experiment=mnist_fmnist_noniid_async" in overrides     # the column is an experiment of its own
    assert load_config(overrides).federation["update"] == "async"
    assert "model.name=md_gan" in dict(runs)[("table1", "iid", "M-D GAN", 0)]
    grid = dict(runs_for("grid", "quick", [0]))
    assert "experiment=gaussian_grid_async" in grid[("grid", "grid", "FR async", 0)]


def test_async_image_columns_take_four_times_the_sync_edge_updates_per_round():
    """An async edge update carries about a quarter of a sync update's device feedback, so the image tables'
    async rounds have 4x the edge updates; the grid's async column keeps gaussian_grid_async's rounds."""
    from fedgen_pl.config import load_config

    for table, sync, asyn in (("table1", "FR sync", "FR async"), ("table2", "LR sync", "LR async")):
        (_, sync_overrides), (_, async_overrides) = (
            runs_for(table, "quick", [0], splits=("noniid",), methods=[column])[0] for column in (sync, asyn))
        iters = [load_config(o).federation.local_iters for o in (sync_overrides, async_overrides)]
        assert iters[1] == 4 * iters[0], (table, iters)
    (_, grid_async), = runs_for("grid", "quick", [0], methods=["FR async"])
    grid_iters = load_config(["experiment=gaussian_grid_async"]).federation.local_iters
    assert load_config(grid_async).federation.local_iters == grid_iters


def test_table2_only_lr_sync_takes_the_saturating_loss():
    """LR sync takes the experiments' saturating loss; the other columns (blank with it) keep the
    non-saturating one."""
    from fedgen_pl.config import load_config

    losses = {key[2]: load_config(o).model.gan_loss for key, o in runs_for("table2", "quick", [0])}
    assert losses == {"RegCGAN": "non_saturating", "FedAvg cGAN": "non_saturating", "LR sync": "saturating",
                      "LR async": "non_saturating"}


def test_render_mean_std_beside_paper(tmp_path):
    summaries = {}
    for key, _ in runs_for("table1", "quick", [0, 1]):
        seed = key[3]
        summaries[key] = {"metrics": {"global/is_classifier": 3.0 + seed, "global/fid_classifier": 10.0 + 2 * seed,
                                      "global/acc": 0.5}}
    text = render(summaries, ["table1"], [0, 1], tmp_path, "quick")
    assert "| iid | IS `is_classifier` | 3.500 ± 0.707 (3.386) |" in text
    assert "| noniid | FID `fid_classifier` | 11.00 ± 1.41 (19.84) | 11.00 ± 1.41 (74.8) |" in text
    assert "50.00 ± 0.00% (82.21%)" in text
    assert str(run_dir_for(tmp_path, ("table1", "iid", "FR sync", 0))) in text
    assert len(PAPER[("table1", "iid")]["IS"]) == 5
    assert "KID" not in text and "EMA" not in text                # rows no run has are left out


def test_the_table_sums_what_its_runs_cost_and_counts_those_that_predate_the_record(tmp_path):
    summaries = {}
    for n, (key, _) in enumerate(runs_for("table1", "quick", [0])):
        summaries[key] = {"metrics": {"global/fid_classifier": 1.0}}
        if key[1] == "noniid":                        # five runs of 360, 720, ..., 1800 core-seconds
            summaries[key]["run_cpu_seconds"] = 360.0 * (n - 4)
    assert [k[1] for k in summaries][5:] == ["noniid"] * 5
    text = render(summaries, ["table1"], [0], tmp_path, "quick")
    assert ("Training cost (`run_cpu_seconds`): 1.50 core-hours over 5 runs, 0.10 to 0.50 a run; 5 of 10 runs "
            "predate the record.") in text
    for summary in summaries.values():
        summary.pop("run_cpu_seconds", None)
    assert "Training cost" not in render(summaries, ["table1"], [0], tmp_path, "quick")


def test_full_schedule_rows_add_inception_kid_and_the_ema_beside_the_paper_rows(tmp_path):
    summaries = {}
    for key, _ in runs_for("table1", "full", [0, 1], splits=("noniid",)):
        seed = key[3]
        summaries[key] = {"metrics": {"global/is_classifier": 3.0, "global/fid_classifier": 10.0, "global/acc": 0.5,
                                      "global/fid_inception": 20.0 + seed, "ema/global/fid_inception": 17.0,
                                      "global/kid_inception": 0.011 + 0.002 * seed, "ema/global/fid_classifier": 9.0,
                                      "ema/global/acc": 0.6 + 0.1 * seed}}
    lines = render(summaries, ["table1"], [0, 1], tmp_path, "full", splits=("noniid",)).splitlines()
    rows = [line.split(" | ")[1] for line in lines if line.startswith("| noniid |")]
    assert rows == ["IS `is_classifier`", "FID `fid_classifier`", "Acc `acc`", "FID (Inception) `fid_inception`",
                    "FID (Inception), EMA `fid_inception`", "KID (Inception) `kid_inception`",
                    "FID, EMA `fid_classifier`", "Acc, EMA `acc`"]
    assert any(line.startswith("| noniid | KID (Inception) `kid_inception` | 0.0120 ± 0.0014 |") for line in lines)
    assert any(line.startswith("| noniid | Acc, EMA `acc` | 65.00 ± 7.07% |") for line in lines)


def test_existing_runs_are_reused(tmp_path):
    key, _ = runs_for("grid", "quick", [0])[0]
    run_dir = run_dir_for(tmp_path, key)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}))
    for other, _ in runs_for("grid", "quick", [0])[1:]:
        d = run_dir_for(tmp_path, other)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 1, "high_quality_share": 0.5}}))
    summaries = ensure_runs(tmp_path, "quick", [0], ["grid"])     # would train if anything were missing
    assert summaries[key]["metrics"]["modes_covered"] == 9


def test_runs_are_trained_seed_by_seed(tmp_path, monkeypatch):
    """A table cut off part way has every cell's first seeds, not all seeds of its first cells."""
    import fedgen_pl.train

    trained = []

    def fake_train(cfg):
        run_dir = Path(cfg.output_dir)
        trained.append((run_dir.parent.name, cfg.seed))
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"metrics": {}}))
        return run_dir
    monkeypatch.setattr(fedgen_pl.train, "train", fake_train)
    summaries = ensure_runs(tmp_path, "quick", [0, 1], ["table1"], splits=("noniid",), methods=["M-D GAN", "FR sync"])
    assert trained == [("M-D_GAN", 0), ("FR_sync", 0), ("M-D_GAN", 1), ("FR_sync", 1)]
    assert set(summaries) == {("table1", "noniid", c, s) for c in ("M-D GAN", "FR sync") for s in (0, 1)}


def test_no_train_prints_finished_runs_and_refuses_missing_ones_before_writing(tmp_path, monkeypatch, capsys):
    import fedgen_pl.train
    from fedgen_pl.cli import main

    def no_training(*args, **kwargs):
        raise AssertionError("--no-train trained a run")
    monkeypatch.setattr(fedgen_pl.train, "train", no_training)
    keys = [key for key, _ in runs_for("grid", "quick", [0])]
    for key in keys[:-1]:                                  # every run but the last has finished
        run_dir = run_dir_for(tmp_path, key)
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["table", "--tables", "grid", "--seeds", "0", "--no-train", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fedgen: configuration error (--no-train): 1 of the {len(keys)} runs have not finished (the first: "
        f"{run_dir_for(tmp_path, keys[-1])}); drop --no-train to train them, or choose finished ones with --splits, "
        f"--methods and --seeds"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before       # nothing written
    last = run_dir_for(tmp_path, keys[-1])
    last.mkdir(parents=True)
    (last / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 3, "high_quality_share": 0.5}}))
    assert main(["table", "--tables", "grid", "--seeds", "0", "--no-train", "--out", str(tmp_path)]) == 0
    assert "| modes_covered |" in (tmp_path / "table.md").read_text()


def test_overrides_reach_every_run_and_win():
    runs = runs_for("table1", "quick", [0], ["federation.fake_labels=community", "federation.update=sync"],
                    splits=("noniid",), methods=["FR sync", "FR async"])
    assert {key[1] for key, _ in runs} == {"noniid"} and {key[2] for key, _ in runs} == {"FR sync", "FR async"}
    for _, overrides in runs:
        assert overrides[-2:] == ["federation.fake_labels=community", "federation.update=sync"]


def test_table_records_overrides_commit_and_hardware(tmp_path):
    from fedgen_pl.table import main

    from omegaconf import OmegaConf

    for key, overrides in runs_for("grid", "quick", [0], ["federation.tau_edge=0"]):
        d = run_dir_for(tmp_path, key)
        d.mkdir(parents=True)
        cfg = load_config(overrides)
        cfg.trainer.precision = "32-true"           # a run records the precision `auto` resolved to
        OmegaConf.save(cfg, d / "config.yaml")
        (d / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}))
    main("quick", [0], ["grid"], str(tmp_path), ["federation.tau_edge=0"])
    record = json.loads((tmp_path / "table.json").read_text())
    assert record["overrides"] == ["federation.tau_edge=0"] and record["schedule"] == "quick"
    assert record["commit"] and record["hardware"] and "cores" in record["hardware"]
    text = (tmp_path / "table.md").read_text()
    assert "`federation.tau_edge=0`" in text and record["commit"] in text
    assert "precision `32-true`, EMA decay `0.99`" in text          # every table names both
    assert f"{len(record['runs'])} of {len(record['runs'])} runs do not record their commit and hardware" in text


def test_a_table_of_kept_runs_names_the_commits_and_machines_that_trained_them(tmp_path):
    from fedgen_pl.table import main

    from omegaconf import OmegaConf

    keys = runs_for("grid", "quick", [0])
    for i, (key, overrides) in enumerate(keys):
        d = run_dir_for(tmp_path, key)
        d.mkdir(parents=True)
        OmegaConf.save(load_config(overrides), d / "config.yaml")
        trained = [{"date": "2026-01-01 00:00 UTC", "commit": "aaa111", "hardware": "CPU X, 2 cores", "resumed_from": None}]
        if i == 1:      # cut off, resumed at a later commit on another machine
            trained.append({"date": "2026-01-02 00:00 UTC", "commit": "bbb222", "hardware": "CPU Y, 8 cores",
                            "resumed_from": "last.ckpt"})
        summary = {"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}
        if i < len(keys) - 1:                                           # the last run predates the record
            summary["trained"] = trained
        (d / "summary.json").write_text(json.dumps(summary))
    main("quick", [0], ["grid"], str(tmp_path))
    record = json.loads((tmp_path / "table.json").read_text())
    assert record["trained"] == {"commits": ["aaa111", "bbb222"], "hardware": ["CPU X, 2 cores", "CPU Y, 8 cores"],
                                 "runs_without_record": 1}
    header = (tmp_path / "table.md").read_text().splitlines()[0]
    assert ("Trained at commit `aaa111`, `bbb222` on CPU X, 2 cores; CPU Y, 8 cores; "
            f"1 of {len(keys)} runs do not record their commit and hardware") in header
    assert f"Written at commit `{record['commit']}`" in header          # the printing checkout, named apart


def test_a_run_with_other_settings_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from fedgen_pl.config import ConfigError, load_config

    key, overrides = runs_for("grid", "quick", [0], methods=["FR sync"])[0]
    run_dir = run_dir_for(tmp_path, key)
    run_dir.mkdir(parents=True)
    OmegaConf.save(load_config([*overrides, "federation.tau_edge=0"]), run_dir / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}))
    with pytest.raises(ConfigError, match="federation.tau_edge"):
        ensure_runs(tmp_path, "quick", [0], ["grid"], methods=["FR sync"])
    # the same settings are reused; neutral keys (trainer, metrics, output_dir) may differ
    OmegaConf.save(load_config([*overrides, "metrics.eval_every=7", "trainer.progress_bar=true"]),
                   run_dir / "config.yaml")
    assert ensure_runs(tmp_path, "quick", [0], ["grid"], methods=["FR sync"])[key]["metrics"]["modes_covered"] == 9


def test_unknown_method_is_a_config_error(tmp_path, capsys):
    from fedgen_pl.cli import main

    assert main(["table", "--tables", "grid", "--methods", "FR turbo", "--out", str(tmp_path)]) == 2
    assert "FR turbo" in capsys.readouterr().err


def test_an_override_after_methods_or_splits_is_refused_not_dropped(tmp_path, capsys):
    """argparse hands `--methods "FR sync" trainer.precision=bf16-mixed` both words as columns: refused with
    a hint, where a silently dropped override would train every run at another precision."""
    from fedgen_pl.cli import main

    assert main(["table", "--tables", "grid", "--methods", "FR sync", "trainer.precision=bf16-mixed",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedgen: configuration error (--methods): unknown column(s) ['trainer.precision=bf16-mixed']")
    assert "put them before the options" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t").exists()
    assert main(["table", "--tables", "table1", "--splits", "noniid", "seed=1", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "unknown split(s) ['seed=1']" in err and "after --splits are read as its values" in err


def test_a_run_made_before_a_key_existed_is_reused(tmp_path):
    """A finished run whose config.yaml lacks a key added later (its default keeps the behaviour) counts."""
    from omegaconf import OmegaConf

    from fedgen_pl.config import load_config

    key, overrides = runs_for("grid", "quick", [0], methods=["FR sync"])[0]
    run_dir = run_dir_for(tmp_path, key)
    run_dir.mkdir(parents=True)
    cfg = OmegaConf.to_container(load_config(overrides))
    del cfg["federation"]["fake_labels"], cfg["model"]["film_output_shift"]
    cfg["federation"]["cloud_lr"] = "auto"
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}))
    assert ensure_runs(tmp_path, "quick", [0], ["grid"], methods=["FR sync"])[key]["metrics"]["modes_covered"] == 9


def test_a_run_of_a_named_experiment_with_the_same_settings_is_reused(tmp_path):
    """mnist_fmnist_noniid_async is mnist_fmnist_noniid + FR async: its run fills the table's FR async cell,
    and one setting apart (the clock's delays) it is refused."""
    from omegaconf import OmegaConf

    from fedgen_pl.config import ConfigError, load_config

    key, overrides = runs_for("table1", "quick", [0], splits=("noniid",), methods=["FR async"])[0]
    run_dir = run_dir_for(tmp_path, key)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"metrics": {"global/acc": 0.5}}))
    OmegaConf.save(load_config(["experiment=mnist_fmnist_noniid_async", "schedule=quick", "seed=0"]),
                   run_dir / "config.yaml")
    assert ensure_runs(tmp_path, "quick", [0], ["table1"], splits=("noniid",),
                       methods=["FR async"])[key]["metrics"]["global/acc"] == 0.5
    OmegaConf.save(load_config(["experiment=mnist_fmnist_noniid_async", "schedule=quick", "seed=0",
                                "clock.delay_high=30"]), run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="clock.delay_high"):
        ensure_runs(tmp_path, "quick", [0], ["table1"], splits=("noniid",), methods=["FR async"])


def test_literature_table_runs_flat_methods_on_ten_devices_and_fr_behind_two_edges():
    runs = runs_for("literature", "full", [0])
    assert {key[1] for key, _ in runs} == {"mnist", "fmnist"}
    by_column = {(key[1], key[2]): load_config(o) for key, o in runs}
    for data, name in (("mnist", "mnist"), ("fmnist", "fashion_mnist")):
        for column in ("Cent. GAN", "Fed. GAN", "M-D GAN"):
            cfg = by_column[(data, column)]
            assert [c.data for c in cfg.federation.communities] == [name] and cfg.federation.devices_per_community == 10
        for column in ("FR sync", "FR async"):
            cfg = by_column[(data, column)]
            assert [c.data for c in cfg.federation.communities] == [name, name]
            assert cfg.federation.devices_per_community == 5
        for cfg in (by_column[(data, c)] for c in ("Cent. GAN", "FR sync")):
            assert cfg.data.partition == "sorted_shards" and cfg.data.shards_per_device == 4
            assert cfg.metrics.inception is True and cfg.metrics.inception_samples == 10000    # the full schedule
    assert by_column[("mnist", "FR async")].federation["update"] == "async"


def test_literature_render_has_inception_rows_bytes_and_prism(tmp_path):
    summaries = {}
    for i, (key, _) in enumerate(runs_for("literature", "full", [0, 1], splits=("mnist",))):
        summaries[key] = {"metrics": {"global/fid_inception": 40.0 + i, "global/kid_inception": 0.01,
                                      "global/fid_classifier": 20.0, "global/acc": 0.9},
                          "bytes_device_edge": 3 * 2 ** 20, "bytes_edge_cloud": 2 ** 20, "rounds": 2}
    text = render(summaries, ["literature"], [0, 1], tmp_path, "full", splits=("mnist",))
    assert "| mnist | FID (Inception) `fid_inception` | 40.50 ± 0.71 | 42.50 ± 0.71 |" in text
    assert "| mnist | MiB per round (all tiers) | 2.0 ± 0.0 |" in text
    assert "MD-GAN 37.8" in text and "PRISM* 6.96" in text
    assert "EMA" not in text.split("PRISM's published")[0].split("\n", 3)[-1]     # no EMA rows without EMA runs


def test_every_table_column_is_yaml_and_resolves():
    """The tables' definitions live in configs/tables/*.yaml: every run of every table is a valid config."""
    for table in tables():
        for _, overrides in runs_for(table, "quick", [0], splits=("iid", "noniid", "mnist", "fmnist")):
            load_config(overrides)


def test_a_new_table_is_one_yaml_file(tmp_path, monkeypatch):
    """A table of one's own: a YAML file in configs/tables/ with its splits and columns (no paper numbers)."""
    import shutil

    import fedgen_pl.table as table_module

    (tmp_path / "tables").mkdir()
    for path in (table_module.CONFIG_DIR / "tables").glob("*.yaml"):
        shutil.copy(path, tmp_path / "tables")
    (tmp_path / "tables" / "mine.yaml").write_text(
        "title: My grid study\nsplits: {grid: gaussian_grid}\ncolumns:\n  wide: [model.hidden_dim=256]\n"
        "  narrow: [model.hidden_dim=32]\n")
    monkeypatch.setattr(table_module, "CONFIG_DIR", tmp_path)
    assert "mine" in table_module.tables()
    runs = dict(runs_for("mine", "quick", [0]))
    assert load_config(runs[("mine", "grid", "narrow", 0)]).model.hidden_dim == 32
    summaries = {key: {"metrics": {"global/fid_classifier": 1.0, "global/is_classifier": 2.0, "global/acc": 0.5}}
                 for key in runs}
    text = render(summaries, ["mine"], [0], tmp_path, "quick", origin={"commit": "c", "date": "d", "hardware": "h"})
    assert "**My grid study**" in text and "| grid | FID `fid_classifier` | 1.00 | 1.00 |" in text


def test_unknown_splits_and_tables_are_refused(tmp_path):
    from fedgen_pl.config import ConfigError
    from fedgen_pl.table import definition, main

    with pytest.raises(ConfigError, match=r"\(--splits\): unknown split\(s\) \['cifar'\]"):
        main("quick", [0], ["table1"], str(tmp_path / "t"), splits=("cifar",))
    with pytest.raises(ConfigError, match="unknown table 'table9'"):
        definition("table9")
    assert not (tmp_path / "t").exists()


def test_vae_render_has_its_rows_leaves_out_absent_ones_and_counts_bytes(tmp_path):
    summaries = {}
    for key, _ in runs_for("vae", "quick", [0, 1], splits=("iid", "anomaly")):
        seed = key[3]
        metrics = {"global/negative_elbo": 100.0 + seed, "global/iw_negative_elbo": 95.0,
                   "devices/negative_elbo": 101.0, "global/fid_classifier": 50.0, "global/acc": 0.4}
        if key[1] == "anomaly":
            metrics["devices/anomaly_auroc"] = 0.6 + 0.1 * seed
        summaries[key] = {"metrics": metrics, "bytes_device_edge": 2 ** 20, "bytes_edge_cloud": 2 ** 20, "rounds": 1}
    text = render(summaries, ["vae"], [0, 1], tmp_path, "quick", splits=("iid", "anomaly"))
    assert "| iid | -ELBO `negative_elbo` | 100.5 ± 0.7 |" in text
    assert "| anomaly | anomaly AUROC `anomaly_auroc` | 0.650 ± 0.071 |" in text
    assert "| iid | anomaly AUROC" not in text and "FID (Inception)" not in text      # no run has them
    assert "| iid | MiB per round (all tiers) | 2.0 ± 0.0 |" in text
    summaries[("vae", "iid", "FedAvg", 0)]["metrics"]["global/fid_inception"] = 80.0      # scored on one seed
    text = render(summaries, ["vae"], [0, 1], tmp_path, "quick", splits=("iid", "anomaly"))
    row = next(line for line in text.splitlines() if line.startswith("| iid | FID (Inception)"))
    assert "80.000 (1 of 2 seeds)" in row and row.count("–") == 4          # the other columns have none


def test_a_later_eval_of_the_final_checkpoint_adds_its_metrics_to_the_table(tmp_path):
    """`fedgen eval <run> metrics.inception=true` after training writes checkpoints/metrics.json; the table shows
    what it added (the Inception FID), keeps what the run recorded, and ignores an evaluation of another round."""
    from fedgen_pl.table import with_later_scores

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    summary = {"rounds": 300, "metrics": {"global/fid_classifier": 50.0}}
    assert with_later_scores(summary, run_dir) == summary                       # no later evaluation
    later = {"round": 300, "iteration": 1500, "global/fid_classifier": 51.0, "global/fid_inception": 80.0}
    (run_dir / "checkpoints" / "metrics.json").write_text(json.dumps(later))
    assert with_later_scores(summary, run_dir)["metrics"] == {"global/fid_classifier": 50.0,
                                                              "global/fid_inception": 80.0}
    (run_dir / "checkpoints" / "metrics.json").write_text(json.dumps({**later, "round": 290}))
    assert with_later_scores(summary, run_dir) == summary                       # another round's scores


def test_runs_trained_two_at_a_time_equal_runs_trained_one_after_another(tmp_path, capsys):
    from fedgen_pl.cli import main

    quick = ["--tables", "grid", "--methods", "FR sync", "--seeds", "0", "1"]
    shorter = ["federation.global_rounds=2", "metrics.eval_every=1"]
    assert main(["table", *quick, "--jobs", "2", "--out", str(tmp_path / "parallel"), *shorter]) == 0
    assert "2 runs, 2 at a time" in capsys.readouterr().out
    assert main(["table", *quick, "--out", str(tmp_path / "serial"), *shorter]) == 0
    for seed in (0, 1):
        parallel = tmp_path / "parallel" / "grid" / "grid" / "FR_sync" / f"seed{seed}"
        serial = tmp_path / "serial" / "grid" / "grid" / "FR_sync" / f"seed{seed}"
        metrics = [json.loads((run / "summary.json").read_text())["metrics"] for run in (parallel, serial)]
        assert metrics[0] == metrics[1] and "global/high_quality_share" in metrics[0]
        assert "round 2/2" in (parallel.parent / f"seed{seed}.log").read_text()     # the run's own output


def test_a_failed_parallel_run_is_raised_whole_after_the_others_end(tmp_path):
    from fedgen_pl.errors import OutputError
    from fedgen_pl.table import train_in_parallel

    settings = [*SMALL_GRID, "federation.global_rounds=1", "trainer.progress_bar=false"]
    (tmp_path / "afile").write_text("mine")
    good = load_config([*settings, f"output_dir={tmp_path / 'good'}"])
    bad = load_config([*settings, f"output_dir={tmp_path / 'afile'}"])      # refused inside its worker
    with pytest.raises(OutputError, match=r"output error \(output_dir\): .* is a file"):
        train_in_parallel([(tmp_path / "afile", bad), (tmp_path / "good", good)], jobs=2)
    assert (tmp_path / "good" / "summary.json").is_file()                  # the other run went on
    assert (tmp_path / "afile").read_text() == "mine"


def test_an_input_error_crosses_processes_whole():
    import pickle

    from fedgen_pl.errors import ConfigError

    error = pickle.loads(pickle.dumps(ConfigError("must be at least 1, got 0", where="--jobs")))
    assert type(error) is ConfigError and str(error) == "configuration error (--jobs): must be at least 1, got 0"


def _keep_records(src, dest):
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "keep_records.sh"
    return subprocess.run(["bash", str(script), str(src), str(dest)], capture_output=True, text=True)


def test_kept_records_print_the_runs_table_and_a_differing_record_is_refused_before_writing(tmp_path):
    import numpy as np

    from fedgen_pl.cli import main
    from fedgen_pl.plots import plt

    runs, records = tmp_path / "runs", tmp_path / "records"
    for i, (key, _) in enumerate(runs_for("grid", "quick", [0])):
        run_dir = run_dir_for(runs, key)
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": i, "high_quality_share": 0.5}}))
        (run_dir / "metrics.csv").write_text(f"round,modes_covered\n1,{i}\n")
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000)      # not a record: stays behind
        (run_dir / "plots").mkdir()
        plt.imsave(run_dir / "plots" / "global_samples.png", np.full((4, 4), float(i)))   # the figure's panel
        (run_dir / "plots" / "partition_histogram.png").write_bytes(b"png")   # not a record
    done = _keep_records(runs, records)
    assert done.returncode == 0, done.stderr
    assert not list(records.rglob("last.ckpt")) and not list(records.rglob("partition_histogram.png"))
    assert main(["table", "--tables", "grid", "--seeds", "0", "--no-train", "--out", str(runs)]) == 0
    assert main(["table", "--tables", "grid", "--seeds", "0", "--no-train", "--out", str(records)]) == 0
    def body(root):                     # the header line names the root; the tables below it must agree
        return (root / "table.md").read_text().split("Run directories")[0].splitlines()[1:]
    table = "\n".join(body(runs))
    assert body(runs) == body(records)
    assert "| modes_covered |" in table
    assert (records / "grid_samples.png").is_file()                       # the samples figure, from records alone

    first = run_dir_for(runs, runs_for("grid", "quick", [0])[0][0])
    (first / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 99, "high_quality_share": 0.5}}))
    (first / "config.yaml").write_text("seed: 0\n")                         # new, but the copy must not start
    refused = _keep_records(runs, records)
    kept = run_dir_for(records, runs_for("grid", "quick", [0])[0][0])
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"fedgen: record ({kept}/summary.json): differs from {first}/summary.json; "
                                      f"remove it or choose another DEST")
    assert not (kept / "config.yaml").exists()
    assert json.loads((kept / "summary.json").read_text())["metrics"]["modes_covered"] == 0
    assert _keep_records(tmp_path / "absent", records).returncode == 2


def test_a_run_cut_off_before_its_first_checkpoint_is_set_aside_and_trained_again(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    import fedgen_pl.train

    trained = []

    def fake_train(cfg):
        run_dir = Path(cfg.output_dir)
        assert not run_dir.exists() and not cfg.resume        # a fresh start, not a resume
        trained.append(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"metrics": {"modes_covered": 9, "high_quality_share": 1.0}}))
        return run_dir
    monkeypatch.setattr(fedgen_pl.train, "train", fake_train)
    key, overrides = runs_for("grid", "quick", [0], methods=["FR sync"])[0]
    run_dir = run_dir_for(tmp_path, key)
    for attempt in (1, 2):                       # killed before round `checkpoint_every_rounds`, twice
        shutil.rmtree(run_dir, ignore_errors=True)
        trained.clear()
        run_dir.mkdir(parents=True)
        OmegaConf.save(load_config(overrides), run_dir / "config.yaml")
        (run_dir / "metrics.csv").write_text(f"attempt {attempt}\n")
        summaries = ensure_runs(tmp_path, "quick", [0], ["grid"], methods=["FR sync"])
        assert trained == [run_dir] and summaries[key]["metrics"]["modes_covered"] == 9
        aside = run_dir.with_name(f"seed0.cut-off-{attempt}")
        assert (aside / "metrics.csv").read_text() == f"attempt {attempt}\n"       # kept, not overwritten
        assert f"{run_dir} stopped before its first checkpoint; its files are now in {aside}" in capsys.readouterr().out


def test_a_cut_off_run_with_other_settings_is_refused_before_anything_moves(tmp_path):
    from omegaconf import OmegaConf

    from fedgen_pl.config import ConfigError

    key, overrides = runs_for("grid", "quick", [0], methods=["FR sync"])[0]
    run_dir = run_dir_for(tmp_path, key)
    run_dir.mkdir(parents=True)
    OmegaConf.save(load_config([*overrides, "federation.tau_edge=0"]), run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="federation.tau_edge"):
        ensure_runs(tmp_path, "quick", [0], ["grid"], methods=["FR sync"])
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["seed0"]


def test_a_run_another_process_is_training_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import os

    import fedgen_pl.train
    from fedgen_pl.config import ConfigError
    from fedgen_pl.train import hold_run_dir

    monkeypatch.setattr(fedgen_pl.train, "train", lambda cfg: pytest.fail("trained a run that is in use"))
    key, _ = runs_for("grid", "quick", [0], methods=["FR sync"])[0]
    run_dir = run_dir_for(tmp_path, key)
    run_dir.mkdir(parents=True)
    with hold_run_dir(run_dir):                  # a second open file: flock sees it as another holder
        with pytest.raises(ConfigError, match=rf"is being trained by another process \(pid {os.getpid()}\)"):
            ensure_runs(tmp_path, "quick", [0], ["grid"], methods=["FR sync"])
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["seed0"]


def test_a_run_that_misses_the_health_bar_is_named_and_kept_in_the_mean(tmp_path):
    """Seed 1 of LR sync collapses (IS 1.1 past round 20): the table names it; its FID stays in the mean."""
    summaries = {}
    for key, _ in runs_for("table2", "quick", [0, 1], splits=("noniid",)):
        run_dir = run_dir_for(tmp_path, key)
        run_dir.mkdir(parents=True)
        name = {"RegCGAN": "reg_cgan", "FedAvg cGAN": "fed_cgan"}.get(key[2], "fedgen_lr")
        update = "async" if key[2] == "LR async" else "sync"
        (run_dir / "config.yaml").write_text(f"model:\n  name: {name}\nfederation:\n  update: {update}\n")
        collapsed = key[2] == "LR sync" and key[3] == 1
        final = 1.1 if collapsed else 3.0 if key[2] == "LR async" else 5.0    # async: no bar at the last round
        (run_dir / "metrics.csv").write_text(f"round,global/is_classifier\n20,1.0\n40,{final}\n100,{final}\n")
        summaries[key] = {"metrics": {"global/is_classifier": final, "global/fid_classifier": 900.0 if collapsed
                                      else 100.0}, "classifier": {"label_names": [str(i) for i in range(10)]}}
        (run_dir / "summary.json").write_text(json.dumps(summaries[key]))
    text = render(summaries, ["table2"], [0, 1], tmp_path, "quick", splits=("noniid",))
    assert ("Health bar (fedgen_pl/health.py): 1 of 8 GAN runs miss it, kept in the means above: "
            "table2 noniid LR sync seed 1 (final IS 1.10).") in text
    assert "| noniid | FID `fid_classifier` | 100.00 ± 0.00 (26.11) | 100.00 ± 0.00 (53.26) | 500.00 ± 565.69 (45.22) |" in text
    (run_dir_for(tmp_path, ("table2", "noniid", "LR sync", 1)) / "metrics.csv").write_text(
        "round,global/is_classifier\n20,1.0\n40,5.0\n100,5.0\n")
    assert "Health bar (fedgen_pl/health.py): all 8 GAN runs meet it." in render(
        summaries, ["table2"], [0, 1], tmp_path, "quick", splits=("noniid",))
    vae = run_dir_for(tmp_path, ("table2", "noniid", "RegCGAN", 0))          # a VAE has no health bar to meet
    (vae / "config.yaml").write_text("model:\n  name: fed_vae\nfederation:\n  update: sync\n")
    (vae / "metrics.csv").write_text("round,global/is_classifier\n20,1.0\n40,1.0\n100,1.0\n")
    assert "Health bar (fedgen_pl/health.py): all 7 GAN runs meet it." in render(
        summaries, ["table2"], [0, 1], tmp_path, "quick", splits=("noniid",))


def test_status_says_where_each_run_stands_and_writes_nothing(tmp_path, capsys):
    """Finished, being trained (its lock held), cut off with a checkpoint, cut off before one, not started."""
    import csv
    import os

    from fedgen_pl.cli import main
    from fedgen_pl.table import last_logged_round
    from fedgen_pl.train import hold_run_dir

    keys = [key for key, _ in runs_for("table1", "full", [0], splits=("noniid",))]
    dirs = [run_dir_for(tmp_path, key) for key in keys]
    for run_dir in dirs[:4]:
        (run_dir / "checkpoints").mkdir(parents=True)
    (dirs[0] / "summary.json").write_text("{}")
    header = "round,step,global/fid_classifier,train/d_loss\n"
    rows = "".join(f"{r},{5 * r},{100 - r / 10},\n{r},{5 * r + 1},,0.5\n" for r in range(1, 401))   # > 8 kB
    for run_dir in dirs[1:3]:
        (run_dir / "metrics.csv").write_text(header + rows + "401,20")        # a last row cut mid-write
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert (dirs[1] / "metrics.csv").stat().st_size > 8192
    with open(dirs[1] / "metrics.csv") as f:           # the end read matches the last full row, read plainly
        assert last_logged_round(dirs[1]) == int(list(csv.DictReader(f))[-2]["round"]) == 400
    held = hold_run_dir(dirs[1])
    try:
        before = sorted(p for p in tmp_path.rglob("*"))
        assert main(["table", "--status", "--tables", "table1", "--splits", "noniid", "--seeds", "0",
                     "--schedule", "full", "--out", str(tmp_path)]) == 0
    finally:
        held.close()
    text = capsys.readouterr().out
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert "1 finished, 1 training, 1 cut off, 1 cut off before its first checkpoint, 1 not started, of 5." in text
    states = {line.split(" | ")[2]: line.split(" | ")[4].rstrip(" |") for line in text.splitlines()
              if line.startswith("| table1 |")}
    assert states[keys[0][2]] == "finished"
    assert states[keys[1][2]].startswith(f"training (pid {os.getpid()}), round 400 of 1000 (metrics.csv written 0 min ago)")
    assert states[keys[2][2]].startswith("cut off, round 400 of 1000") and "resumes from its last checkpoint" in states[keys[2][2]]
    assert states[keys[3][2]] == "cut off before its first checkpoint: starts again"
    assert states[keys[4][2]] == "not started"
