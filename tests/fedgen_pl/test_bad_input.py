"""Bad input, second pass (one case per class at least): where a command writes, empty or degenerate data,
damaged checkpoints, the one-line form for every command and flag. Each case: exit code 2, one line
`fedgen: <what> (<key or file>): <fix>` and nothing else on stderr, and no file or directory created or
changed under the test's folder."""

import shutil

import numpy as np
import pytest

from fedgen_pl.cli import main
from tests.conftest import SMALL_GRID

GRID = [*SMALL_GRID, "federation.global_rounds=2", "federation.local_iters=1", "trainer.progress_bar=false",
        "trainer.checkpoint_every_rounds=1"]
IMAGES = ["data.image_size=8", "data.download=false", "federation.devices_per_community=2", "data.batch_size=4"]


def _npz(directory, train_y, test_y, names=None, n_train=None, shape=(8, 8)):
    directory.mkdir(parents=True, exist_ok=True)
    n_train = len(train_y) if n_train is None else n_train
    np.savez(directory / "train.npz", x=np.zeros((n_train, *shape), np.uint8), y=np.asarray(train_y, np.int64))
    np.savez(directory / "test.npz", x=np.zeros((len(test_y), *shape), np.uint8), y=np.asarray(test_y, np.int64))
    if names:
        (directory / "classes.txt").write_text("\n".join(names) + "\n")


def _finished_run(root):
    run = root / "run"
    assert main(["train", *GRID, f"output_dir={run}"]) == 0
    return run


def _setup(case, root, monkeypatch):
    """The world of one case; returns the command line."""
    if case == "output_dir is a file":
        (root / "afile").write_text("mine")
        return ["train", *GRID, f"output_dir={root / 'afile'}"]
    if case == "output_dir under a file":
        (root / "afile").write_text("mine")
        return ["train", *GRID, f"output_dir={root / 'afile' / 'run'}"]
    if case == "output_dir not writable":       # as a non-root user in a read-only folder (root may write anywhere)
        (root / "readonly").mkdir()
        real_access = __import__("os").access
        monkeypatch.setattr("fedgen_pl.errors.os.access",
                            lambda p, mode: False if str(p) == str(root / "readonly") else real_access(p, mode))
        return ["train", *GRID, f"output_dir={root / 'readonly' / 'run'}"]
    if case == "disk full":
        monkeypatch.setattr("fedgen_pl.errors.shutil.disk_usage",
                            lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000))
        return ["train", *GRID, f"output_dir={root / 'run'}"]
    if case == "no images":
        _npz(root / "data" / "empty", [], [0, 1], n_train=0)
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: empty}]",
                f"output_dir={root / 'run'}"]
    if case == "a class without images":
        _npz(root / "data" / "gaps", [0, 1] * 10, [0, 1, 2], names=["a", "b", "c"])
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: gaps, classes: [2]}]",
                f"output_dir={root / 'run'}"]
    if case == "more devices than samples":
        _npz(root / "data" / "few", [0, 1] * 3, [0, 1])
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: few}]",
                "data.partition=iid", "federation.devices_per_community=9", f"output_dir={root / 'run'}"]
    if case == "a class shared by more devices than its images":
        _npz(root / "data" / "few", [0] * 3 + [1] * 30, [0, 1])
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: few}]",
                "data.partition=shards", "data.classes_per_device=2", "federation.devices_per_community=5",
                f"output_dir={root / 'run'}"]
    if case in ("eval of a damaged checkpoint", "sample of a damaged checkpoint"):
        run = _finished_run(root)
        (run / "checkpoints" / "previous.ckpt").unlink()
        last = run / "checkpoints" / "last.ckpt"
        last.write_bytes(last.read_bytes()[:2000])
        return ["eval", str(run)] if case.startswith("eval") else ["sample", str(run), "--n", "4"]
    if case == "sample --n 0":
        return ["sample", str(_finished_run(root)), "--n", "0"]
    if case == "sample --out under a file":
        (root / "afile").write_text("mine")
        return ["sample", str(_finished_run(root)), "--out", str(root / "afile" / "samples")]
    if case == "report --out under a file":
        (root / "afile").write_text("mine")
        return ["report", str(_finished_run(root)), "--out", str(root / "afile" / "r.html")]
    if case == "table --out is a file":
        (root / "afile").write_text("mine")
        return ["table", "--tables", "grid", "--out", str(root / "afile")]
    if case == "a table claim naming a column it does not have":
        import fedgen_pl.table as table_module
        (root / "tables").mkdir()
        (root / "tables" / "mine.yaml").write_text(
            "splits: {grid: gaussian_grid}\ncolumns:\n  wide: [model.hidden_dim=256]\n"
            "claims:\n  wide wins: [grid/wide > grid/narrow]\n")
        import fedgen_pl.cli as cli_module
        monkeypatch.setattr(table_module, "CONFIG_DIR", root)
        monkeypatch.setattr(cli_module, "table_names", lambda: ["mine"])
        return ["table", "--tables", "mine", "--out", str(root / "t")]
    if case == "table --status without --out":
        return ["table", "--status", "--tables", "grid"]
    if case == "table --jobs 0":
        return ["table", "--tables", "grid", "--jobs", "0", "--out", str(root / "t")]
    if case == "unknown flag":
        return ["sample", str(root), "--bogus"]
    if case == "unknown command":
        return ["trian"]
    if case == "bad choice of a flag":
        return ["table", "--schedule", "slow"]
    if case == "a flow mapping without spaces":
        return ["train", "federation.communities=[{data:mnist,classes:[1]}]", f"output_dir={root / 'run'}"]
    if case == "a flow mapping key without a space":
        return ["train", "federation.communities=[{data:mnist}]", f"output_dir={root / 'run'}"]
    if case == "an experiment file that is not a mapping":
        (root / "mine.yaml").write_text("just a string\n")
        return ["train", f"experiment={root / 'mine.yaml'}", f"output_dir={root / 'run'}"]
    if case == "npz members that are not arrays":
        import zipfile

        _npz(root / "data" / "odd", [0, 1] * 5, [0, 1])
        with zipfile.ZipFile(root / "data" / "odd" / "train.npz", "w") as archive:
            archive.writestr("x.npy", b"garbage")
            archive.writestr("y.npy", b"garbage")
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: odd}]",
                f"output_dir={root / 'run'}"]
    if case == "vectors where images are expected":
        _npz(root / "data" / "flat", [0, 1] * 5, [0, 1], shape=(5,))
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: flat}]",
                f"output_dir={root / 'run'}"]
    if case == "config --keys with overrides":
        return ["config", "--keys", "seed=3"]
    if case == "report of a file":
        (root / "afile").write_text("mine")
        return ["report", str(root / "afile")]
    if case == "eval with an unknown metrics key":
        return ["eval", str(_finished_run(root)), "metrics.foo=1"]
    if case == "a community smaller than one batch":
        _npz(root / "data" / "three", [0, 1, 2], [0, 1, 2])
        return ["train", *IMAGES, f"data.root={root / 'data'}", "federation.communities=[{data: three}]",
                "data.batch_size=16", "federation.devices_per_community=1", f"output_dir={root / 'run'}"]
    if case == "too few classifier samples":
        return ["train", *GRID, "metrics.classifier_train_samples=5", f"output_dir={root / 'run'}"]
    if case == "FedAvg through the edges of a model without device models":
        return ["train", *GRID, "federation.fedavg_via_edges=true", f"output_dir={root / 'run'}"]
    if case == "a VAE's averaging for a GAN":
        return ["train", *GRID, "model.name=fed_gan", "model.vae_average=decoder", f"output_dir={root / 'run'}"]
    if case == "instance noise for a VAE":
        return ["train", *GRID, "model.name=fed_vae", "model.instance_noise=0.1", f"output_dir={root / 'run'}"]
    if case == "an R1 penalty for a VAE":
        return ["train", *GRID, "model.name=fed_vae", "model.r1_gamma=1", f"output_dir={root / 'run'}"]
    if case == "an R1 penalty under torch.compile":
        return ["train", *GRID, "model.r1_gamma=1", "trainer.compile=default", f"output_dir={root / 'run'}"]
    if case == "a non-saturating warm-up under the non-saturating loss":
        return ["train", *GRID, "model.non_saturating_warmup=5", f"output_dir={root / 'run'}"]
    if case == "misspelt section of a key":
        return ["train", "dat.batch_size=3", f"output_dir={root / 'run'}"]
    raise AssertionError(case)


CASES = [
    ("output_dir is a file", "output error (output_dir)", "is a file, not a directory"),
    ("output_dir under a file", "output error (output_dir)", "cannot be made under it"),
    ("output_dir not writable", "output error (output_dir)", "is not writable"),
    ("disk full", "output error (output_dir)", "MiB free"),
    ("no images", "data error", "the train split holds no images"),
    ("a class without images", "(federation.communities[0].classes)", "class(es) [2] of 'gaps' have no training"),
    ("more devices than samples", "9 devices but only 6 samples", "federation.devices_per_community"),
    ("a class shared by more devices than its images", "class 0 has 3 samples", "community's 5 devices"),
    ("eval of a damaged checkpoint", "(eval ", "no readable checkpoint"),
    ("sample of a damaged checkpoint", "(sample ", "no readable checkpoint"),
    ("sample --n 0", "(--n)", "at least one sample"),
    ("sample --out under a file", "output error (--out)", "is a file"),
    ("report --out under a file", "output error (--out)", "is a file"),
    ("table --out is a file", "output error (--out)", "is a file"),
    ("table --jobs 0", "configuration error (--jobs)", "must be at least 1, got 0"),
    ("table --status without --out", "(--status)", "needs the table's --out"),
    ("a table claim naming a column it does not have", "mine.yaml)", "'grid/narrow' is not split/column"),
    ("unknown flag", "usage error (fedgen sample)", "--bogus; see fedgen sample --help"),
    ("unknown command", "usage error (fedgen)", "invalid choice: 'trian'"),
    ("bad choice of a flag", "usage error (fedgen table)", "invalid choice: 'slow'"),
    ("misspelt section of a key", "(dat.batch_size)", "Did you mean"),
    ("a flow mapping without spaces", "(override 'federation.communities=", "put a space after every colon"),
    ("a flow mapping key without a space", "(data:mnist)", "put a space after every colon"),
    ("an experiment file that is not a mapping", "mine.yaml)", "must hold a mapping of keys"),
    ("npz members that are not arrays", "train.npz)", "numpy.savez"),
    ("vectors where images are expected", "(dataset 'flat'", "[n, H, W]"),
    ("config --keys with overrides", "(fedgen config)", "take no overrides"),
    ("report of a file", "afile)", "not a run directory"),
    ("eval with an unknown metrics key", "(metrics.foo)", "not in 'MetricsConfig'"),
    ("too few classifier samples", "(metrics.classifier_train_samples)", "must be null (all) or >= 100"),
    ("FedAvg through the edges of a model without device models", "(federation.fedavg_via_edges)",
     "model.name=fedgen_fr averages no device models"),
    ("a VAE's averaging for a GAN", "(model.vae_average)", "model.name=fed_gan is not a VAE"),
    ("instance noise for a VAE", "(model.instance_noise)", "model.name=fed_vae has no discriminator"),
    ("an R1 penalty for a VAE", "(model.r1_gamma)", "model.name=fed_vae has no discriminator"),
    ("an R1 penalty under torch.compile", "(trainer.compile)", "torch.compile does not support"),
    ("a non-saturating warm-up under the non-saturating loss", "(model.non_saturating_warmup)",
     "change nothing under model.gan_loss=non_saturating"),
    ("a community smaller than one batch", "(federation.communities[0])", "fewer than one batch (data.batch_size=16)"),
]


def _snapshot(root):
    return {str(p.relative_to(root)): (p.is_dir() or p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case, where, fix", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, case, where, fix):
    monkeypatch.chdir(tmp_path)               # a default runs/ folder would land here
    argv = _setup(case, tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:               # argparse's errors leave through SystemExit
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err     # nothing but the one line
    line = err.strip()
    assert line.startswith("fedgen: ") and " (" in line and "): " in line, line
    assert where in line and fix in line, line
    assert _snapshot(tmp_path) == before


def test_eval_and_sample_fall_back_to_the_previous_checkpoint_as_resume_does(tmp_path, capsys):
    run = _finished_run(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    err = capsys.readouterr().err
    assert "unreadable" in err and "using " in err and "previous.ckpt (round 1)" in err
    assert main(["sample", str(run), "--n", "4"]) == 0


def test_a_device_smaller_than_a_batch_is_logged_and_recorded(tmp_path, capsys, classifier_cache):
    import json

    _npz(tmp_path / "data" / "three", [0, 1, 2] * 6, [0, 1, 2])
    run = tmp_path / "run"
    assert main(["train", *IMAGES[:2], f"data.root={tmp_path / 'data'}", "federation.communities=[{data: three}]",
                 "data.partition=iid", "federation.devices_per_community=2", "data.batch_size=16",
                 "federation.global_rounds=1", "federation.local_iters=1", "metrics.num_samples=10",
                 "metrics.classifier_epochs=1", f"metrics.cache_dir={classifier_cache}", "trainer.progress_bar=false",
                 f"output_dir={run}"]) == 0
    assert "2 device(s) hold fewer samples than data.batch_size=16 (device 0: 9, device 1: 9)" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["devices_below_batch"] == {"0": 9, "1": 9}


def test_eval_warns_when_the_run_folder_config_disagrees_with_the_checkpoint(tmp_path, capsys):
    run = _finished_run(tmp_path)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("local_iters: 1", "local_iters: 7"))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    err = capsys.readouterr().err
    assert "config.yaml differs from the checkpoint's configuration at federation.local_iters" in err


def test_a_class_without_training_images_is_left_out_logged_and_recorded(tmp_path, capsys, classifier_cache):
    import json

    _npz(tmp_path / "data" / "gaps", [0, 1] * 20, [0, 1, 2], names=["a", "b", "c"])     # no training image of c
    run = tmp_path / "run"
    assert main(["train", *IMAGES, f"data.root={tmp_path / 'data'}", "federation.communities=[{data: gaps}]",
                 "federation.global_rounds=1", "federation.local_iters=1", "metrics.num_samples=10",
                 "metrics.classifier_epochs=1", f"metrics.cache_dir={classifier_cache}", "trainer.progress_bar=false",
                 f"output_dir={run}"]) == 0
    assert "community 0: 'gaps' has no training images of class(es) [2]; it trains on the other 2" in \
        capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["classes_without_images"] == {"community_0": [2]}
