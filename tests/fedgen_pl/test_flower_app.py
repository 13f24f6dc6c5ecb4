"""The Flower app's logic, in this process: a grid that hands each message to the ClientApp at once
(every node with its own context) stands in for the SuperLink. The deployment itself is tested in
test_deploy.py."""

import csv
import math
import time

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedgen_pl.config import load_config  # noqa: E402
from fedgen_pl.errors import ConfigError  # noqa: E402
from fedgen_pl.flower.edge import REFUSED, REPLACED_BY_REAL_TIME, FlowerDevices, check_deployable  # noqa: E402
from fedgen_pl.train import train  # noqa: E402
from tests.conftest import SMALL_GRID  # noqa: E402
from tests.flower_grid import InProcessGrid  # noqa: E402

TWO_BY_TWO = [*SMALL_GRID, "federation.communities=[{data: gaussian_grid, classes: [0, 1]}, "
              "{data: gaussian_grid, classes: [2]}]", "federation.devices_per_community=2",
              "federation.global_rounds=2", "federation.local_iters=3", "metrics.eval_every=1",
              "trainer.progress_bar=false", "trainer.checkpoint_every_rounds=1"]


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def _nodes(pairs):
    return {100 + i: {"community": c, "device": d} for i, (c, d) in enumerate(pairs)}


FOUR = _nodes([(1, 1), (0, 0), (1, 0), (0, 1)])      # nodes need not come in the experiment's order


def _generators(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("global_generator", "community_generators"))}


@pytest.mark.parametrize("extra", [[], ["model.r1_gamma=5"]], ids=["plain", "r1"])
def test_test_mode_equals_the_in_process_run(tmp_path, extra):
    """The deployed devices' iteration is the engine's, with its device-side options (here the R1 penalty)."""
    extra = [*extra, "trainer.log_every_n_iters=1"]
    cfg = load_config([*TWO_BY_TWO, *extra, "deploy.test_mode=true", f"output_dir={tmp_path / 'flower'}"])
    devices = FlowerDevices(InProcessGrid(FOUR), cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    deployed = train(cfg, device_transport=devices)
    in_process = train(load_config([*TWO_BY_TWO, *extra, f"output_dir={tmp_path / 'local'}"]))
    _assert_generators_equal(deployed, in_process)
    moved = sum(float((_generators(deployed)[k] - _generators_at_start(cfg)[k]).abs().max())
                for k in _generators(deployed) if k.startswith("global"))
    assert moved > 1e-3                      # the generators did train: equality is not of two untouched models
    summary = devices.summary()
    assert summary["exchanges"] == 6 and summary["bytes_sent"]["edge_to_device"] > 0
    # the devices' reported losses (and with it on, the R1 penalty apart from D's GAN loss) are the engine's
    logged = [[row for row in csv.DictReader(open(run / "metrics.csv")) if row.get("train/d_loss")]
              for run in (deployed, in_process)]
    penalty = any(o.startswith("model.r1_gamma") for o in extra)
    columns = ["train/d_loss", "train/device_loss"] + (["train/r1_penalty"] if penalty else [])
    assert logged[0] and all(len(rows) == len(logged[0]) for rows in logged)
    for a, b in zip(*logged):
        for column in columns:
            assert math.isclose(float(a[column]), float(b[column]), rel_tol=1e-4, abs_tol=1e-6), column
    assert bool(logged[0][0].get("train/r1_penalty")) == penalty


@pytest.mark.parametrize("family", ["md_gan", "fedgen_lr"])
def test_test_mode_equals_the_in_process_run_for_other_families(tmp_path, classifier_cache, family):
    """M-D GAN (one generator for every device) and the label-related model (domain codes as D's labels;
    L_inv, L_spe and the domain classifier C on the server)."""
    from tests.conftest import label_related_overrides

    if family == "md_gan":
        common = [*TWO_BY_TWO, "model.name=md_gan"]
    else:
        common = [*label_related_overrides(tmp_path, classifier_cache), "federation.global_rounds=2",
                  "federation.local_iters=2", "metrics.eval_every=2", "trainer.checkpoint_every_rounds=1"]
    cfg = load_config([*common, "deploy.test_mode=true", f"output_dir={tmp_path / 'flower'}"])
    devices = FlowerDevices(InProcessGrid(FOUR), cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    deployed = train(cfg, device_transport=devices)
    # A device steps its D with torch's Adam, the in-process engine with the stacked Adam: equal to float
    # rounding, which Adam's normalisation lifts where a gradient is near 0 (the FiLM shifts of the
    # label-related generator: 1.05e-5 after 4 iterations on this machine), hence 1e-4 there.
    atol = 1e-5 if family == "md_gan" else 1e-4
    _assert_generators_equal(deployed, train(load_config([*common, f"output_dir={tmp_path / 'local'}"])), atol)
    if family == "fedgen_lr":
        a = torch.load(deployed / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        b = torch.load(tmp_path / "local" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        keys = [k for k in a if k.startswith("domain_classifier")]
        assert keys
        for key in keys:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _assert_generators_equal(deployed, in_process, atol=1e-5):
    a, b = _generators(deployed), _generators(in_process)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _generators_at_start(cfg):
    from datamodules import FederatedDataModule
    from fedgen_pl.models import model_class
    from omegaconf import OmegaConf

    import pytorch_lightning as pl

    pl.seed_everything(int(cfg.seed), verbose=False)           # as train() does
    dm = FederatedDataModule(cfg)
    dm.setup("fit")
    module = model_class(cfg.model.name)(OmegaConf.to_container(cfg, resolve=True), dm.spec.to_dict())
    return {f"global_generator.{k}": v for k, v in module.global_generator.state_dict().items()}


def test_async_test_mode_equals_the_in_process_async_run_with_equal_delays(tmp_path):
    """Replies that all come at once are the virtual clock's equal delays: the same arrivals, the same run."""
    common = [*TWO_BY_TWO, "federation.update=async", "clock.delay=constant"]
    cfg = load_config([*common, "deploy.test_mode=true", f"output_dir={tmp_path / 'flower'}"])
    devices = FlowerDevices(InProcessGrid(FOUR), cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    a = _generators(train(cfg, device_transport=devices))
    b = _generators(train(load_config([*common, f"output_dir={tmp_path / 'local'}"])))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_async_edges_update_on_arrivals_and_count_staleness(tmp_path):
    import csv

    cfg = load_config([*TWO_BY_TWO, "federation.update=async", "trainer.log_every_n_iters=1",
                       f"output_dir={tmp_path / 'run'}"])
    grid = InProcessGrid(FOUR, slow={100: 3})     # community 1, device 1 answers three polls late
    devices = FlowerDevices(grid, cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    run_dir = train(cfg, device_transport=devices)
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("train/staleness_mean")]
    assert max(float(r["train/staleness_mean"]) for r in rows) > 0       # stale feedback was weighted (Eq. 5)
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["faults"]["timeouts"] == 0
    assert summary["deployment"]["update"] == "async" and summary["deployment"]["replies"] > 12


def test_a_device_that_never_replies_is_a_timeout_and_the_run_finishes(tmp_path):
    cfg = load_config([*TWO_BY_TWO, "deploy.exchange_timeout_s=0.05", f"output_dir={tmp_path / 'run'}"])
    grid = InProcessGrid(FOUR)
    devices = FlowerDevices(grid, cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    grid.silent.add(102)                         # community 1, device 0 stops answering after the query
    run_dir = train(cfg, device_transport=devices)
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["faults"]["timeouts"] == 6      # 2 rounds x 3 iterations
    assert summary["deployment"]["backend"] == "flower"


def test_a_run_whose_devices_all_stop_answering_stops_with_an_error(tmp_path):
    cfg = load_config([*TWO_BY_TWO, "deploy.exchange_timeout_s=0.02", f"output_dir={tmp_path / 'run'}"])
    grid = InProcessGrid(FOUR)
    devices = FlowerDevices(grid, cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    grid.silent.update(grid.contexts)
    with pytest.raises(RuntimeError, match="no device answered in 3 exchanges in a row"):
        train(cfg, device_transport=devices)


def test_a_device_that_loses_its_state_starts_afresh_and_is_counted(tmp_path):
    cfg = load_config([*TWO_BY_TWO, f"output_dir={tmp_path / 'run'}", "federation.global_rounds=1"])
    grid = InProcessGrid(FOUR)
    devices = FlowerDevices(grid, cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)

    class Forget:                                 # after the first exchange, node 101 restarts (state lost)
        def __init__(self):
            self.calls = 0

        def feedback(self, module, work, fake_g, arrived, rows):
            self.calls += 1
            if self.calls == 1:
                grid.contexts[101].state = RecordDict()      # lost before its second piece of work
            return devices.feedback(module, work, fake_g, arrived, rows)

        def clock_for(self, module):
            return devices.clock_for(module)

        def summary(self):
            return devices.summary()

    import json

    run_dir = train(cfg, device_transport=Forget())
    assert json.loads((run_dir / "summary.json").read_text())["faults"]["device_restarts"] == 1


@pytest.mark.parametrize("pairs, message", [
    ([(0, 0), (0, 1), (1, 0)], "missing \\[\\(1, 1\\)\\]"),
    ([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)], "unknown \\[\\(2, 0\\)\\]"),
    ([(0, 0), (0, 0), (1, 0), (1, 1)], "two nodes claim community 0 device 0"),
])
def test_a_topology_that_is_not_the_experiments_is_refused(pairs, message):
    cfg = load_config(TWO_BY_TWO)
    devices = FlowerDevices(InProcessGrid(_nodes(pairs)), cfg, poll_s=0)
    with pytest.raises(ConfigError, match=message):
        devices.learn_topology(timeout_s=0.2)


def test_each_node_reads_its_data_from_its_data_root(tmp_path, image_root, classifier_cache):
    """A node's ``data-root`` node config is where it finds the datasets: a copy works, an empty one fails
    that device (an error reply, counted as a timeout), whatever the run's own data.root."""
    import json
    import shutil

    overrides = ["experiment=mnist_fmnist_noniid", f"data.root={image_root}", "data.download=false",
                 "data.image_size=8", "federation.communities=[{data: tiny}, {data: mine}]",
                 "federation.devices_per_community=2", "data.classes_per_device=2", "data.batch_size=4",
                 "federation.global_rounds=1", "federation.local_iters=2", "model.g_channels=4", "model.d_channels=4",
                 "model.latent_dim=4", "trainer.progress_bar=false", "metrics.num_samples=40",
                 "metrics.kid_subset_size=20", "metrics.classifier_epochs=3", f"metrics.cache_dir={classifier_cache}",
                 "metrics.inception=false"]
    copy, empty = tmp_path / "node_data", tmp_path / "empty"
    shutil.copytree(image_root, copy)
    empty.mkdir()
    nodes = {100 + i: {"community": c, "device": d, "data-root": str(copy)}
             for i, (c, d) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])}
    nodes[103]["data-root"] = str(empty)          # community 1, device 1 has no data where it looks
    cfg = load_config([*overrides, f"output_dir={tmp_path / 'run'}"])
    devices = FlowerDevices(InProcessGrid(nodes), cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    summary = json.loads((train(cfg, device_transport=devices) / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["faults"]["timeouts"] == 2     # its 2 local iterations


def test_a_node_with_its_own_data_trains_on_it_and_its_fakes_follow_its_labels(tmp_path):
    """``data-dir``: the device reads only its own train.npz, and the edge draws its fakes' labels from the
    counts it reported, not from the ServerApp's partition (which would give device (0, 0) labels 0 and 1)."""
    import json

    import numpy as np

    from datamodules.sources import grid_centres
    from fedgen_pl.flower.wire import from_record

    centres = grid_centres().numpy()
    nodes = {}
    for i, (c, d, label) in enumerate([(0, 0, 1), (0, 1, 0), (1, 0, 2), (1, 1, 2)]):
        directory = tmp_path / f"node{i}"
        directory.mkdir()
        rng = np.random.default_rng(i)
        x = (centres[label] + 0.05 * rng.standard_normal((50, 2))).astype(np.float32)
        np.savez(directory / "train.npz", x=x, y=np.full(50, label))
        nodes[100 + i] = {"community": c, "device": d, "data-dir": str(directory)}
    cfg = load_config([*TWO_BY_TWO, "federation.global_rounds=1", f"output_dir={tmp_path / 'run'}"])
    grid = InProcessGrid(nodes)
    devices = FlowerDevices(grid, cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    summary = json.loads((train(cfg, device_transport=devices) / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["faults"]["timeouts"] == 0
    assert summary["deployment"]["node_data_label_counts"]["0"] == [0, 50]
    labels = [from_record(m.content["work"])["y_d"] for node, m in grid.log
              if node == 100 and m.metadata.message_type == "train.step"]
    assert labels and all(bool((y == 1).all()) for y in labels)

    with pytest.raises(ConfigError, match="deploy.test_mode"):
        test_cfg = load_config([*TWO_BY_TWO, "deploy.test_mode=true"])
        FlowerDevices(InProcessGrid(nodes), test_cfg, poll_s=0).learn_topology(timeout_s=5)


def _keys(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and key != "schedules":
            out += _keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def test_every_config_key_is_honoured_or_refused_by_the_flower_path():
    """The ServerApp runs the in-process engine, so a key is honoured there unless the ClientApp would drop
    it: such keys are refused (a non-deployable value exits naming the key) or, for the virtual clock's
    simulated arrival times, replaced by real ones. A new key of the device side must be placed here."""
    from omegaconf import OmegaConf

    keys = set(_keys(OmegaConf.to_container(load_config([]))))
    assert set(REFUSED) <= keys and set(REPLACED_BY_REAL_TIME) <= keys
    clock_keys = {k for k in keys if k.startswith("clock.")}
    assert clock_keys == set(REFUSED) & clock_keys | set(REPLACED_BY_REAL_TIME)   # every clock key is placed
    device_side = {"federation.fake_labels", "model.unheld_label_fakes", "model.arch", "model.gan_loss",
                   "model.conditional", "model.conditional_discriminator", "model.d_channels", "model.d_features",
                   "model.hidden_dim", "model.d_lr", "model.beta1", "model.beta2", "model.instance_noise",
                   "model.r1_gamma"}
    assert device_side <= keys
    for key, deployable in REFUSED.items():
        other = {"federation.fake_labels": "community", "model.unheld_label_fakes": "skip", "clock.lr_scale": True,
                 "model.non_saturating_warmup": 3}[key]
        assert other != deployable
        cfg = load_config([*TWO_BY_TWO, f"{key}={str(other).lower()}", "model.gan_loss=saturating"])
        with pytest.raises(ConfigError) as error:
            check_deployable(cfg)
        assert key in str(error.value)
    check_deployable(load_config(TWO_BY_TWO))        # the defaults deploy


def test_the_stream_path_serves_the_same_steps_as_the_message_path():
    """One `train.run` message starts a device for the whole run; over the stream it answers work frames
    with the same feedback, bit for bit, as the message path's one message per step (which equals the
    in-process engine: the tests above)."""
    import json
    import threading

    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from omegaconf import OmegaConf

    from datamodules import FederatedDataModule
    from fedgen_pl.flower.client import client_app
    from fedgen_pl.flower.stream import EdgeStream, encode, new_secret
    from fedgen_pl.flower.wire import from_record, to_record

    cfg = load_config(TWO_BY_TWO)
    dm = FederatedDataModule(cfg)
    dm.setup("fit")
    run = {"config": json.dumps(OmegaConf.to_container(cfg, resolve=True)),
           "spec": json.dumps(dm.spec.to_dict())}
    node = {"community": 1, "device": 0}
    g = torch.Generator().manual_seed(0)
    works = [{"fake_d": torch.randn(8, 2, generator=g), "y_d": torch.full((8,), 2),
              "fake_g": torch.randn(8, 2, generator=g), "y_g": torch.full((8,), 2)} for _ in range(3)]

    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    by_message = []
    for i, work in enumerate(works):
        reply = client_app(Message(RecordDict({"work": to_record(work), "run": ConfigRecord({**run, "iteration": i})}),
                                   dst_node_id=7, message_type="train.step"), context)
        by_message.append(from_record(reply.content["feedback"])["feedback"])

    edge = EdgeStream("127.0.0.1:0", new_secret(), num_devices=4, max_frame_bytes=1 << 20)
    start = Message(RecordDict({"run": ConfigRecord({**run, "iteration": 0}), "stream": ConfigRecord(
        {"address": f"127.0.0.1:{edge.port}", "secret": edge.secret.hex(), "max_frame_bytes": 1 << 20})}),
        dst_node_id=8, message_type="train.run")
    replies = []
    task = threading.Thread(target=lambda: replies.append(client_app(start, Context(
        run_id=1, node_id=8, node_config=node, state=RecordDict(), run_config={}))))
    task.start()
    try:
        device, kind, _, _ = edge.receive(timeout=30)
        assert kind == "joined" and device == 2            # community 1, device 0: the third of four
        for i, work in enumerate(works):
            edge.send(device, encode("work", work, iteration=i))
            item = edge.receive(timeout=30)
            assert item[1] == "feedback" and item[2]["iteration"] == i
            assert torch.equal(item[3]["feedback"], by_message[i]), i
        edge.send(device, encode("stop"))
        task.join(timeout=30)
    finally:
        edge.stop()
    assert replies and replies[0].content["stats"]["served"] == 3


@pytest.mark.parametrize("update", ["sync", "async", "sync over TLS"])
def test_the_stream_transport_in_test_mode_equals_the_in_process_run(tmp_path, update):
    """deploy.transport=stream: Flower starts each device once, the iterations travel on the stream; the
    run equals the in-process one (sync, async with equal delays, and over TLS)."""
    from fedgen_pl.flower.edge import StreamDevices
    from tests.tls_files import write_tls_files

    extra = ["federation.update=async", "clock.delay=constant"] if update == "async" else []
    tls = []
    if "TLS" in update:
        write_tls_files(tmp_path)
        tls = [f"deploy.stream_certificates={tmp_path}"]
    cfg = load_config([*TWO_BY_TWO, *extra, *tls, "deploy.test_mode=true", "deploy.transport=stream",
                       "deploy.stream_address=127.0.0.1:19587", f"output_dir={tmp_path / 'stream'}"])
    devices = StreamDevices(InProcessGrid(FOUR), cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    try:
        deployed = train(cfg, device_transport=devices)
    finally:
        devices.close()
    in_process = train(load_config([*TWO_BY_TWO, *extra, f"output_dir={tmp_path / 'local'}"]))
    _assert_generators_equal(deployed, in_process)
    summary = devices.summary()
    assert summary["transport"] == "stream" and summary["stream"]["connections"] == 4
    assert summary["stream"]["refused"] == 0 and summary["bytes_sent"]["device_to_edge"] > 0


def _stream_run(tmp_path, name, *extra):
    from fedgen_pl.flower.edge import StreamDevices

    cfg = load_config([*TWO_BY_TWO, "deploy.exchange_timeout_s=20", *extra, "deploy.stream_address=127.0.0.1:19588",
                       f"output_dir={tmp_path / name}"])
    devices = StreamDevices(InProcessGrid(FOUR), cfg, poll_s=0)
    devices.learn_topology(timeout_s=5)
    try:
        return train(cfg, device_transport=devices), devices
    finally:
        devices.close()


def test_over_the_stream_a_device_that_dies_mid_run_is_a_timeout_and_the_run_goes_on(tmp_path, monkeypatch):
    """A device whose task dies after two steps (its stream ends): its work in flight is a counted timeout,
    the other three carry the run to its end."""
    import json

    from fedgen_pl.flower.device import DeviceWorker

    step = DeviceWorker.step

    def dying(self, work, iteration):
        if self.g == 3 and iteration >= 2:
            raise RuntimeError("device 3 dies")
        return step(self, work, iteration)

    monkeypatch.setattr(DeviceWorker, "step", dying)
    run_dir, devices = _stream_run(tmp_path, "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["faults"]["timeouts"] >= 1
    assert summary["deployment"]["stream"]["connections"] >= 4          # (it is started again after each death)


def test_over_the_stream_every_device_gone_stops_the_run_with_an_error(tmp_path, monkeypatch):
    from fedgen_pl.flower.device import DeviceWorker

    def dead(self, work, iteration):
        raise RuntimeError("every device dies")

    monkeypatch.setattr(DeviceWorker, "step", dead)
    with pytest.raises(RuntimeError, match="no device answered"):
        _stream_run(tmp_path, "run")


def _wait_for_device_3_back(devices, workers, died) -> None:
    """Hold a device's step (at most 30 s) until device 3 is back on the edge's stream with a new worker, so
    that its rejoin falls inside the run however slow the machine is."""
    deadline = time.time() + 30
    while died.is_set() and time.time() < deadline and not (len(workers) == 2 and devices.stream is not None
                                                            and 3 in devices.stream.connected):
        time.sleep(0.01)


def _device_3_restart_run(tmp_path, monkeypatch, grid, on_death, *extra):
    """A run over the stream in which device 3's first worker dies at iteration 2 (``on_death`` runs first);
    the others wait for it to be back. Returns (run_dir, devices, device 3's workers, its steps by worker)."""
    import threading

    from fedgen_pl.flower.device import DeviceWorker
    from fedgen_pl.flower.edge import StreamDevices

    step, init, workers, steps, died = DeviceWorker.step, DeviceWorker.__init__, [], [], threading.Event()
    cfg = load_config([*TWO_BY_TWO, "deploy.exchange_timeout_s=20", *extra, "deploy.stream_address=127.0.0.1:19589",
                       f"output_dir={tmp_path / 'run'}"])
    devices = StreamDevices(grid, cfg, poll_s=0)

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.g == 3:
            workers.append(self)

    def dies_once(self, work, iteration):
        if self.g == 3:
            steps.append(self)
            if self is workers[0] and iteration >= 2:
                on_death()
                died.set()
                raise RuntimeError("device 3 dies")
        else:
            _wait_for_device_3_back(devices, workers, died)
        return step(self, work, iteration)

    monkeypatch.setattr(DeviceWorker, "__init__", recorded)
    monkeypatch.setattr(DeviceWorker, "step", dies_once)
    devices.learn_topology(timeout_s=5)
    try:
        run_dir = train(cfg, device_transport=devices)
    finally:
        devices.close()
    return run_dir, devices, workers, steps


def test_over_the_stream_a_device_that_comes_back_rejoins_fresh_and_is_counted(tmp_path, monkeypatch):
    """Device 3's task dies once; the edge starts it again (a new train.run message to its node): a new worker,
    with a fresh discriminator, rejoins, is counted as restarted and serves to the end of the run."""
    import json

    run_dir, devices, workers, steps = _device_3_restart_run(tmp_path, monkeypatch, InProcessGrid(FOUR), lambda: None)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["faults"]["device_restarts"] == 1
    assert summary["faults"]["timeouts"] >= 1 and summary["deployment"]["stream"]["reconnections"] == 1
    assert len(workers) == 2 and workers[1] is not workers[0]           # a fresh worker: a fresh discriminator
    assert steps.count(workers[1]) > 0                                 # and it works again


def test_over_the_stream_a_supernode_back_under_a_new_node_id_is_found_and_serves(tmp_path, monkeypatch):
    """Device 3's SuperNode dies (its task with it; the old node never answers again) and comes back under a new
    node id with the same --node-config: the edge finds it among the nodes that joined, starts the device's task
    there, and the device rejoins fresh, counted, and serves to the end."""
    import json

    from flwr.app import Context, RecordDict

    monkeypatch.setattr("fedgen_pl.flower.edge.REFIND_S", 0.05)
    grid = InProcessGrid(FOUR)
    old_node = next(n for n, c in FOUR.items() if (c["community"], c["device"]) == (1, 1))

    def node_moves():
        # a node claiming a place that does not exist (community 2 of 2, device -1) is network input: ignored
        grid.contexts[98] = Context(run_id=1, node_id=98, node_config={"community": 2, "device": -1},
                                    state=RecordDict(), run_config={})
        grid.silent.add(old_node)                               # the old node is gone for good ...
        grid.contexts[99] = Context(run_id=1, node_id=99, node_config=dict(FOUR[old_node]), state=RecordDict(),
                                    run_config={})              # ... and its SuperNode is back as node 99

    run_dir, devices, workers, steps = _device_3_restart_run(tmp_path, monkeypatch, grid, node_moves,
                                                             "federation.global_rounds=3")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["faults"]["device_restarts"] == 1
    assert devices.flower.node_of[3] == 99 and len(workers) == 2 and workers[1] is not workers[0]
    assert any(node == 99 and m.metadata.message_type == "train.run" for node, m in grid.log)
    assert not any(node == 98 and m.metadata.message_type == "train.run" for node, m in grid.log)
    assert steps.count(workers[1]) > 0


@pytest.mark.parametrize("transport", ["stream", "messages"])
def test_feedback_that_is_not_the_answer_to_its_work_is_dropped_and_counted(tmp_path, monkeypatch, transport):
    """Device 3 answers with feedback of the wrong shape (network input): it is dropped and counted, never
    broadcast into the edge's update, and the other devices carry the run."""
    import json

    from fedgen_pl.flower.device import DeviceWorker
    from fedgen_pl.flower.edge import FlowerDevices

    step = DeviceWorker.step

    def wrong_shape(self, work, iteration):
        feedback, stats = step(self, work, iteration)
        return (feedback[:1] if self.g == 3 else feedback), stats

    monkeypatch.setattr(DeviceWorker, "step", wrong_shape)
    short = ["federation.global_rounds=1", "federation.local_iters=1"]
    if transport == "stream":                  # a dropped answer waits out the exchange timeout: keep it short
        run_dir, devices = _stream_run(tmp_path, "run", *short, "deploy.exchange_timeout_s=5")
        dropped = json.loads((run_dir / "summary.json").read_text())["deployment"]["stream"]["malformed"]
    else:
        cfg = load_config([*TWO_BY_TWO, *short, "deploy.transport=messages", f"output_dir={tmp_path / 'run'}"])
        devices = FlowerDevices(InProcessGrid(FOUR), cfg, poll_s=0)
        devices.learn_topology(timeout_s=5)
        run_dir = train(cfg, device_transport=devices)
        dropped = json.loads((run_dir / "summary.json").read_text())["deployment"]["malformed_replies"]
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 1
    assert dropped >= 1


def test_a_deployed_device_sanitises_what_it_sends_with_the_engines_function_and_secret_noise(monkeypatch):
    """With privacy on, the ClientApp sends what ``privacy.sanitize_feedback`` returns (the engine's own
    function), keeps its D loss to itself (nan), and draws its noise from the OS: the same work on two
    nodes of the same run gets different noise (the edge knows the run's seed, so seeded noise would not hide
    anything)."""
    import json
    import math

    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from omegaconf import OmegaConf

    from datamodules import FederatedDataModule
    from fedgen_pl import privacy
    from fedgen_pl.flower import client as client_app_module
    from fedgen_pl.flower import device as device_app
    from fedgen_pl.flower.wire import from_record, to_record

    calls = []

    def spy(*args):
        calls.append(args[2:5])
        return privacy.sanitize_feedback(*args)

    monkeypatch.setattr(device_app, "sanitize_feedback", spy)
    cfg = load_config([*TWO_BY_TWO, "privacy.noise_multiplier=3", "privacy.clip=0.5", "privacy.loss_bound=2"])
    dm = FederatedDataModule(cfg)
    dm.setup("fit")
    run = {"config": json.dumps(OmegaConf.to_container(cfg, resolve=True)), "spec": json.dumps(dm.spec.to_dict()),
           "iteration": 0}
    g = torch.Generator().manual_seed(0)
    work = {"fake_d": torch.randn(8, 2, generator=g), "y_d": torch.full((8,), 2),
            "fake_g": torch.randn(8, 2, generator=g), "y_g": torch.full((8,), 2)}
    sent = []
    for node_id in (7, 8):
        context = Context(run_id=1, node_id=node_id, node_config={"community": 1, "device": 0}, state=RecordDict(),
                          run_config={})
        reply = client_app_module.client_app(Message(RecordDict({"work": to_record(work), "run": ConfigRecord(run)}),
                                              dst_node_id=node_id, message_type="train.step"), context)
        sent.append(from_record(reply.content["feedback"])["feedback"])
        assert math.isnan(reply.content["stats"]["d_loss"]) and math.isnan(reply.content["stats"]["r1_penalty"])
    assert calls == [(0.5, 2.0, 3.0)] * 2
    assert not torch.equal(sent[0], sent[1])
