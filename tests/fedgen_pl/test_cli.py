"""A new user's mistakes: each is one line `fedgen: <what> (<key or file>): <fix>`, exit code 2, no
traceback, and nothing written; a run directory is never overwritten."""

import hashlib
import json

import numpy as np
import pytest
import torch

from fedgen_pl.cli import main
from tests.conftest import SMALL_GRID, write_idx_dataset, write_npz_dataset

FAST = [*SMALL_GRID, "federation.global_rounds=2", "federation.local_iters=2", "metrics.eval_every=1",
        "trainer.progress_bar=false"]
TINY = ["data.image_size=8", "data.download=false", "federation.communities=[{data: tiny}]",
        "federation.devices_per_community=2", "data.batch_size=4", "metrics.num_samples=10",
        "metrics.classifier_train_samples=100", "metrics.classifier_epochs=1"]


def _one_line_error(capsys, code_of_call, *fragments):
    code = code_of_call
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("fedgen: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].count(" (") >= 1 and "): " in lines[0], lines[0]      # fedgen: <what> (<where>): <fix>
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _digests(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_training_into_a_finished_run_is_refused_and_leaves_it_byte_identical(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, f"output_dir={run}"]) == 0
    before = _digests(run)
    line = _one_line_error(capsys, main(["train", *FAST, "seed=5", f"output_dir={run}"]),
                           f"output_dir={run}", f"resume={run}")
    assert line.startswith("fedgen: run directory in use")
    assert _digests(run) == before


def test_a_start_that_fails_on_data_leaves_no_run_directory(tmp_path, capsys):
    write_idx_dataset(tmp_path / "data" / "tiny")
    (tmp_path / "data" / "tiny" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    _one_line_error(capsys, main(["train", *TINY, f"data.root={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}"]),
                    "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "run").exists()


def _npz(directory, **arrays):
    directory.mkdir(parents=True, exist_ok=True)
    x = np.zeros((30, 8, 8), np.uint8)
    y = np.arange(30) % 3
    train = {"x": x, "y": y, **arrays}
    np.savez(directory / "train.npz", **{k: v for k, v in train.items() if v is not None})
    np.savez(directory / "test.npz", x=x[:10], y=y[:10])


@pytest.mark.parametrize("breakage, fragments", [
    ("wrong names", ["train.npz", "needs arrays 'x' and 'y'"]),
    ("truncated npz", ["train.npz", "cannot read npz"]),
    ("text file", ["train.npz", "not an npz archive"]),
    ("float images", ["train.npz", "'x' must be uint8"]),
    ("lengths differ", ["train.npz", "'x' has 30 images but 'y' has 29 labels"]),
    ("float labels", ["train.npz", "labels must be integers"]),
    ("negative labels", ["train.npz", "labels must be >= 0"]),
    ("truncated idx", ["train-images-idx3-ubyte", "truncated or padded"]),
])
def test_bad_data_files_are_one_line_errors(tmp_path, capsys, breakage, fragments):
    tiny = tmp_path / "data" / "tiny"
    if breakage == "wrong names":
        _npz(tiny, x=None, y=None, images=np.zeros((30, 8, 8), np.uint8))
    elif breakage == "truncated npz":
        _npz(tiny)
        data = (tiny / "train.npz").read_bytes()
        (tiny / "train.npz").write_bytes(data[: len(data) // 2])
    elif breakage == "text file":
        _npz(tiny)
        (tiny / "train.npz").write_text("x,y\n1,2\n")
    elif breakage == "float images":
        _npz(tiny, x=np.zeros((30, 8, 8), np.float32))
    elif breakage == "lengths differ":
        _npz(tiny, y=np.arange(29) % 3)
    elif breakage == "float labels":
        _npz(tiny, y=np.arange(30) % 3 + 0.5)
    elif breakage == "negative labels":
        _npz(tiny, y=np.arange(30) % 3 - 1)
    else:
        write_idx_dataset(tiny, compress=False)
        data = (tiny / "train-images-idx3-ubyte").read_bytes()
        (tiny / "train-images-idx3-ubyte").write_bytes(data[:-50])
    _one_line_error(capsys, main(["train", *TINY, f"data.root={tmp_path / 'data'}",
                                  f"output_dir={tmp_path / 'run'}"]), *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, fragment", [
    ("federation:\n  local_iters: [1, 2\n", "not valid YAML"),
    ("federation:\n\tlocal_iters: 2\n", "not valid YAML"),
])
def test_yaml_errors_are_one_line(tmp_path, capsys, text, fragment):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    line = _one_line_error(capsys, main(["config", f"experiment={path}"]), fragment, str(path))
    assert "line " in line


def test_gpu_asked_for_without_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _one_line_error(capsys, main(["train", *FAST, "trainer.accelerator=gpu", f"output_dir={tmp_path / 'run'}"]),
                    "(trainer.accelerator)", "trainer.accelerator=auto or cpu")
    assert not (tmp_path / "run").exists()


def test_negative_seed(tmp_path, capsys):
    _one_line_error(capsys, main(["train", *FAST, "seed=-1", f"output_dir={tmp_path / 'run'}"]), "(seed)")


def test_missing_data_root_says_so(tmp_path, capsys):
    _one_line_error(capsys, main(["train", "federation.communities=[{data: digits}]", f"data.root={tmp_path / 'nope'}"]),
                    "(data.root)", f"'{tmp_path / 'nope'}' does not exist")


def test_unknown_dataset_lists_the_places_tried(tmp_path, capsys):
    _one_line_error(capsys, main(["config", "federation.communities=[{data: digits}]", f"data.root={tmp_path}"]),
                    "unknown dataset 'digits'", "mnist", f"no directory {tmp_path / 'digits'}/")


PLUGIN = '''
import numpy as np
from datamodules import SourceData, register_dataset


@register_dataset("numpy_blobs_{tag}")
def blobs(cfg):
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    x = (rng.integers(0, 60, size=(120, {shape})) + 150 * y.reshape(-1, {ones})).astype(np.uint8)
    return SourceData(x, y, x[:40], y[:40], ["dark", "bright"])
'''


@pytest.mark.parametrize("tag, shape, ones", [("nhw", "12, 12", "1, 1"), ("nhwc", "12, 12, 1", "1, 1, 1")])
def test_plugin_datasets_as_numpy_are_converted_like_npz_and_eval_loads_the_plugin(tmp_path, classifier_cache, tag,
                                                                                   shape, ones, monkeypatch):
    plugin = tmp_path / f"blobs_{tag}.py"
    plugin.write_text(PLUGIN.format(tag=tag, shape=shape, ones=ones))
    run = tmp_path / "run"
    args = [f"plugins=[{plugin}]", f"federation.communities=[{{data: numpy_blobs_{tag}}}]", "data.image_size=8",
            "federation.devices_per_community=2", "data.batch_size=4", "federation.global_rounds=1",
            "federation.local_iters=1", "metrics.num_samples=20", "metrics.classifier_epochs=1",
            f"metrics.cache_dir={classifier_cache}", "trainer.progress_bar=false", f"output_dir={run}"]
    assert main(["train", *args]) == 0
    from fedgen_pl.evaluate import load_model

    model, _ = load_model(run, torch.device("cpu"))
    assert model.spec.data_shape == (1, 8, 8)                   # [n, 12, 12] resized to data.image_size
    monkeypatch.chdir(tmp_path.parent)                          # another directory: the plugin is found by path
    assert main(["eval", str(run)]) == 0
    assert main(["sample", str(run), "--n", "4"]) == 0


def test_small_num_samples_and_a_small_test_split(tmp_path, classifier_cache):
    """metrics.num_samples=500 is accepted (kid_subset_size auto); a scope with fewer test samples uses all of
    them once, and KID subsets of that size, and says so in summary.json."""
    from fedgen_pl.config import kid_subset_size, load_config

    assert kid_subset_size(load_config(["metrics.num_samples=500"])) == 500
    write_npz_dataset(tmp_path / "data" / "tiny")         # 20 test images
    run = tmp_path / "run"
    assert main(["train", *TINY[:-4], f"data.root={tmp_path / 'data'}", "metrics.num_samples=50",
                 "federation.global_rounds=1", "federation.local_iters=1", "metrics.classifier_epochs=1",
                 f"metrics.cache_dir={classifier_cache}", f"output_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics_samples_per_scope"] == {"community_0": 20, "global": 20, "community_0/kid_subset": 20,
                                                    "global/kid_subset": 20}


def test_output_without_a_terminal_is_one_plain_line_per_evaluation(tmp_path, capsys):
    assert main(["train", *FAST[:-1], "trainer.progress_bar=true", f"output_dir={tmp_path / 'run'}"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("round ")]
    assert lines == [line for line in lines if "global/modes_covered" in line] and len(lines) == 2
    assert "\r" not in captured.out + captured.err
    assert "litlogger" not in captured.out + captured.err and "LeafSpec" not in captured.err
    # the summary prints the names of metrics.csv
    assert "  global/modes_covered: " in captured.out


def test_a_run_directory_another_process_is_training_is_refused_by_train_and_resume(tmp_path, capsys):
    import os

    from fedgen_pl.train import hold_run_dir, run_in_use

    run = tmp_path / "run"
    assert main(["train", *FAST, "trainer.checkpoint_every_rounds=1", f"output_dir={run}"]) == 0
    assert run_in_use(run) is None                   # a finished run holds nothing
    before = _digests(run)
    with hold_run_dir(run):
        for command in (["train", *FAST, "seed=5", f"output_dir={run}"], ["train", f"resume={run}", "federation.global_rounds=3"]):
            line = _one_line_error(capsys, main(command), f"output_dir={run}", f"(pid {os.getpid()})")
            assert line.startswith("fedgen: run directory in use") and "being trained by another process" in line
        assert _digests(run) == before
    assert run_in_use(run) is None


def test_a_run_stopped_before_its_first_checkpoint_is_not_offered_for_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    line = _one_line_error(capsys, main(["train", *FAST, f"output_dir={run}"]), f"output_dir={run}",
                           "stopped before its first checkpoint: remove it to start it again")
    assert "resume=" not in line


def test_output_cut_short_by_its_reader_is_no_error(tmp_path):
    """`fedgen table --status | head -1`: the reader leaves early; fedgen exits 0 without a traceback. (The
    reader here, `true`, leaves before fedgen writes, so the write meets a closed pipe.)"""
    import subprocess
    import sys

    done = subprocess.run(f"'{sys.executable}' -m fedgen_pl.cli table --status --tables grid --out '{tmp_path}' "
                          f"| true; exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr and not done.stderr.strip(), done.stderr
