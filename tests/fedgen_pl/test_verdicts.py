"""The verdict rule (fedgen_pl/verdicts.py) on hand-computed cases, and the claims a table prints."""

import json

import pytest

from fedgen_pl.table import claims_of, render, run_dir_for, runs_for, tables
from fedgen_pl.verdicts import (AHEAD, BEHIND, DOES_NOT_HOLD, HOLDS, LEVEL, NOT_SHOWN, Claim, claim_line,
                                claim_outcome, claim_record, compare, parse_claims)


def test_ahead_means_a_better_mean_by_more_than_the_wider_spread():
    # A: mean 2, std sqrt(2) = 1.414; B: mean 5.1, std 0.141 -> gap 3.1 > 1.414
    assert compare([1.0, 3.0], [5.0, 5.2], lower_better=True) == AHEAD
    assert compare([1.0, 3.0], [5.0, 5.2], lower_better=False) == BEHIND
    assert compare([5.0, 5.2], [1.0, 3.0], lower_better=True) == BEHIND
    # B: mean 3.1 -> gap 1.1 < 1.414 (A's spread, the wider): level, though B's own spread is 0.141
    assert compare([1.0, 3.0], [3.0, 3.2], lower_better=True) == LEVEL
    # a gap equal to the wider spread is not beyond it: A mean 3, std 2 (exact); B mean 5, std 0
    assert compare([1.0, 3.0, 5.0], [5.0, 5.0, 5.0], lower_better=True) == LEVEL
    assert compare([1.0, 3.0, 5.0], [5.01, 5.01, 5.01], lower_better=True) == AHEAD
    with pytest.raises(ValueError, match="at least 2 values"):
        compare([1.0], [2.0, 3.0], lower_better=True)


def test_a_claim_holds_if_all_ahead_fails_if_any_behind_else_is_not_shown():
    assert claim_outcome([AHEAD, AHEAD]) == HOLDS
    assert claim_outcome([AHEAD, LEVEL]) == NOT_SHOWN
    assert claim_outcome([AHEAD, LEVEL, BEHIND]) == DOES_NOT_HOLD
    assert claim_outcome([LEVEL]) == NOT_SHOWN


def test_every_shipped_claim_and_target_names_cells_of_its_table():
    found = {table: claims_of(table) for table in tables()}
    assert len(found["table1"][0]) == 5 and len(found["table2"][0]) == 6 and len(found["literature"][1]) == 4
    assert {c.metric for c in found["table2"][0] if c.name.startswith("(iv)")} == {"class consistency"}
    with pytest.raises(ValueError, match="'iid/Nope' is not split/column"):
        parse_claims({"x": ["iid/Nope > iid/A"]}, ["iid"], ["A"])
    with pytest.raises(ValueError, match="is not 'split/A > split/B'"):
        parse_claims({"x": ["iid/A < iid/A"]}, ["iid"], ["A"])


def test_a_claim_on_a_metric_the_tables_do_not_have_is_refused(tmp_path, monkeypatch):
    import fedgen_pl.table as table_module
    from fedgen_pl.config import ConfigError

    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "mine.yaml").write_text(
        "splits: {grid: gaussian_grid}\ncolumns:\n  a: [model.hidden_dim=256]\n  b: [model.hidden_dim=32]\n"
        "claims:\n  a wins: {metric: FID (Inceptoin), ahead: [grid/a > grid/b]}\n")
    monkeypatch.setattr(table_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"unknown metric\(s\) \['FID \(Inceptoin\)'\]"):
        claims_of("mine")


def test_secondary_metrics_and_the_other_direction_are_reported():
    claim = Claim("A beats B", "FID (Inception)", ((("s", "A"), ("s", "B")),))
    data = {("s", "A"): {"FID (Inception)": [1.0, 2.0, 3.0], "FID (Inception), EMA": [9.0, 9.5, 10.0], "Acc": [0.9, 0.9, 0.91]},
            ("s", "B"): {"FID (Inception)": [5.0, 6.0, 7.0], "FID (Inception), EMA": [3.0, 3.1, 3.2], "Acc": [0.9, 0.91, 0.9]}}
    record = claim_record(claim, lambda cell, metric: data[cell].get(metric))
    assert record["also"] == {"FID (Inception), EMA": DOES_NOT_HOLD, "Acc": NOT_SHOWN}
    line = claim_line(record)
    assert line.startswith("- A beats B: **holds** on FID (Inception) (s/A 2.00 ± 1.00 against s/B 6.00 ± 1.00: ahead).")
    assert "FID (Inception), EMA: does not hold (the other direction)" in line and "Acc: not shown" in line
    assert "FID:" not in line                       # a metric no cell has is left out


def _table1_runs(root, fid, healthy=lambda key: True):
    """Table 1, 3 seeds, full schedule, each run with the records the health bar reads."""
    summaries = {}
    for key, _ in runs_for("table1", "full", [0, 1, 2]):
        run_dir = run_dir_for(root, key)
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("model:\n  name: fedgen_fr\nfederation:\n  update: sync\n")
        final = 6.0 if healthy(key) else 1.1
        (run_dir / "metrics.csv").write_text(f"round,global/is_classifier\n20,1.0\n500,{final}\n1000,{final}\n")
        summaries[key] = {"metrics": {"global/fid_inception": fid(key), "global/is_classifier": final},
                          "classifier": {"label_names": [str(i) for i in range(10)]}}
        (run_dir / "summary.json").write_text(json.dumps(summaries[key]))
    return summaries


def test_table1_prints_its_claims_and_what_dropping_an_unhealthy_run_changes(tmp_path):
    base = {"Cent. GAN": 20.0, "Fed. GAN": 30.0, "M-D GAN": 25.0, "FR sync": 10.0, "FR async": 40.0}
    seed_noise = {0: -1.0, 1: 0.0, 2: 1.0}          # std 1 in every cell

    def fid(key):
        _, split, column, seed = key
        if (split, column, seed) == ("noniid", "FR sync", 2):
            return 30.0                             # the collapsed seed
        return base[column] + (5.0 if split == "noniid" else 0.0) + seed_noise[seed]

    summaries = _table1_runs(tmp_path, fid, healthy=lambda key: key[1:] != ("noniid", "FR sync", 2))
    text = render(summaries, ["table1"], [0, 1, 2], tmp_path, "full")
    assert "Claims and targets on 3 seed(s)" in text
    (i,) = [line for line in text.splitlines() if line.startswith("- (i)")]
    # FR sync non-i.i.d. 14, 15, 30: mean 19.67, std sqrt(160.67 / 2) = 8.96; M-D GAN 30 ± 1: gap 10.33 > 8.96
    # (ahead), Fed. GAN 35 and FR async 45 further: holds. Without seed 2 (14.5 ± 0.71) it holds too, so
    # the health bar is not mentioned.
    assert "**holds** on FID (Inception)" in i and "noniid/FR sync 19.67 ± 8.96 against noniid/M-D GAN 30.00 ± 1.00: ahead" in i
    assert "health bar" not in i
    (ii,) = [line for line in text.splitlines() if line.startswith("- (ii) non-i.i.d. data hurts Fed. GAN")]
    assert "**holds**" in ii and "iid/Fed. GAN 30.00 ± 1.00 against noniid/Fed. GAN 35.00 ± 1.00: ahead" in ii
    (iii,) = [line for line in text.splitlines() if line.startswith("- (iii) FR async is below FR sync, i.i.d.")]
    assert "**holds**" in iii

    # a collapsed seed that hides FR sync's lead: 60 makes FR sync 29.67 ± 26.27, level with all three
    shifted = {k: dict(v, metrics=dict(v["metrics"])) for k, v in summaries.items()}
    shifted[("table1", "noniid", "FR sync", 2)]["metrics"]["global/fid_inception"] = 60.0
    (i,) = [line for line in render(shifted, ["table1"], [0, 1, 2], tmp_path, "full").splitlines()
            if line.startswith("- (i)")]
    assert "**not shown**" in i and "Without the runs that miss the health bar: holds." in i


def test_claims_whose_cells_are_not_in_the_table_are_left_out_and_quick_tables_say_not_decided(tmp_path):
    summaries = {key: {"metrics": {"global/fid_classifier": 10.0}} for key, _ in
                 runs_for("table1", "quick", [0, 1], splits=("noniid",))}
    text = render(summaries, ["table1"], [0, 1], tmp_path, "quick", splits=("noniid",))
    assert "- (i) FR sync is the best federated method under non-i.i.d. data: **not decided**" in text
    assert "(ii)" not in text and "i.i.d.: " not in text.split("non-i.i.d.:")[0].split("Claims")[-1]


def test_literature_targets_are_met_or_missed_on_the_mean_in_table_md_and_table_json(tmp_path):
    from fedgen_pl.table import main

    for key, _ in runs_for("literature", "full", [0, 1, 2], splits=("mnist",)):
        fid = {"M-D GAN": 30.0 + key[3], "FR sync": 7.0 + key[3]}.get(key[2], 50.0)
        run_dir = run_dir_for(tmp_path, key)
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"metrics": {"global/fid_inception": fid,
                                                                      "ema/global/fid_inception": fid - 2.0},
                                                          "bytes_device_edge": 0, "bytes_edge_cloud": 0, "rounds": 1}))
    main("full", [0, 1, 2], ["literature"], str(tmp_path), splits=("mnist",), train_missing=False)
    text = (tmp_path / "table.md").read_text()
    assert ("- mnist/M-D GAN below MD-GAN (37.8) on FID (Inception): **met**, 31.00 ± 1.00 (3 seeds); "
            "the EMA: met, 29.00 ± 1.00") in text
    assert ("- mnist/FR sync below PRISM* (6.96) on FID (Inception): **missed**, 8.00 ± 1.00 (3 seeds); "
            "the EMA: met, 6.00 ± 1.00") in text
    assert "fmnist/" not in text.split("Claims and targets")[1]
    targets = json.loads((tmp_path / "table.json").read_text())["verdicts"]["literature"]["targets"]
    assert [(t["target"].split(" ")[0], t["outcome"], t["mean"], t["seeds"]) for t in targets] == [
        ("mnist/M-D", "met", 31.0, 3), ("mnist/FR", "missed", 8.0, 3)]


def test_a_claim_the_table_covers_in_part_shows_its_comparisons_undecided(tmp_path):
    """`community` + skip has only M-D GAN and FR sync: claim (i) shows that one comparison, undecided."""
    summaries = {}
    for key, _ in runs_for("table1", "full", [0, 1, 2], splits=("noniid",), methods=["M-D GAN", "FR sync"]):
        fid = (10.0 if key[2] == "FR sync" else 20.0) + key[3]
        summaries[key] = {"metrics": {"global/fid_inception": fid}}
    text = render(summaries, ["table1"], [0, 1, 2], tmp_path, "full", splits=("noniid",), methods=["M-D GAN", "FR sync"])
    (i,) = [line for line in text.splitlines() if line.startswith("- (i)")]
    assert i == ("- (i) FR sync is the best federated method under non-i.i.d. data: **not decided here** (the table "
                 "lacks noniid/FR async, noniid/Fed. GAN); the comparisons it has, on FID (Inception): noniid/FR sync "
                 "11.00 ± 1.00 against noniid/M-D GAN 21.00 ± 1.00: ahead.")
    assert "(iii)" not in text                       # no comparison of it is in this table
