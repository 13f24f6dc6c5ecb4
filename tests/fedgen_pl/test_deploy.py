"""Real local deployments (flwr 1.42: a SuperLink and a SuperNode per device on 127.0.0.1) of a Gaussian grid
of 2 communities: in test mode (2 x 2 devices, 2 local iterations, one aggregation) it equals the in-process
run; a SuperNode killed once training has started (1 + 2 devices) is a timeout and the run finishes; SIGTERM
(1 + 1) stops everything deploy-local started; every process started is gone at the end of each."""

import json
import os
import signal
import threading
import time

import pytest

pytest.importorskip("flwr")

from fedgen_pl.cli import main  # noqa: E402
from fedgen_pl.deploy import deploy_local  # noqa: E402

GRID = ["experiment=gaussian_grid", "federation.communities=[{data: gaussian_grid, classes: [0, 1]}, "
        "{data: gaussian_grid, classes: [2]}]", "federation.devices_per_community=2", "federation.global_rounds=1",
        "federation.local_iters=2", "trainer.progress_bar=false", "deploy.exchange_timeout_s=90",
        "deploy.superlink_port=19291", "deploy.supernode_port=19300"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def _session_pids(session_ids: set[int]) -> list[int]:
    """Every live process in the given sessions (what deploy_local started, and their children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) in session_ids and _alive(int(entry)):
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _record_sessions(sessions: set[int]):
    def on_started(processes, node_pids):
        sessions.update(p.pid for _, p, _ in processes.started)
    return on_started


@pytest.mark.slow
def test_test_mode_deployment_equals_the_in_process_run_and_leaves_no_process(tmp_path):
    import torch

    from fedgen_pl.config import load_config
    from fedgen_pl.train import train

    run_dir, sessions = tmp_path / "deployed", set()
    deploy_local([*GRID, "deploy.test_mode=true", "deploy.transport=stream", "deploy.stream_address=127.0.0.1:19390",
                  f"output_dir={run_dir}"], on_started=_record_sessions(sessions))
    time.sleep(0.5)
    assert sessions and _session_pids(sessions) == []
    local = train(load_config([*GRID, f"output_dir={tmp_path / 'local'}"]))

    def generators(path):
        state = torch.load(path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith(("global_generator", "community_generators"))}
    a, b = generators(run_dir), generators(local)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["iterations"] == 2 and summary["faults"]["timeouts"] == 0
    deployment = summary["deployment"]
    assert deployment["backend"] == "flower" and deployment["exchanges"] == 2 and deployment["transport"] == "stream"
    assert deployment["stream"]["connections"] == 4 and deployment["stream"]["refused"] == 0
    assert deployment["bytes_sent"]["edge_to_device"] > 0 and deployment["bytes_sent"]["device_to_edge"] > 0
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "deploy_logs" / "superlink.log").is_file()
    assert main(["eval", str(run_dir)]) == 0                   # the run directory is an ordinary one
    assert main(["sample", str(run_dir), "--n", "8"]) == 0
    assert main(["report", str(run_dir)]) == 0


@pytest.mark.slow
def test_a_killed_supernode_is_a_timeout_and_the_run_finishes(tmp_path):
    run_dir = tmp_path / "run"
    sessions: set[int] = set()

    def kill_one_node_once_training_starts(processes, node_pids):
        _record_sessions(sessions)(processes, node_pids)
        victim = node_pids[(1, 1)]

        def watch():
            deadline = time.time() + 120
            while not (run_dir / "partition.json").is_file() and time.time() < deadline:
                time.sleep(0.2)                    # written once the topology is known and training starts
            os.killpg(victim, signal.SIGKILL)
        threading.Thread(target=watch, daemon=True).start()

    # Many short iterations, so the kill (within 0.2 s of the partition file) lands while training runs however
    # loaded the machine is: from then on the killed device is left out of each of its updates.
    # Three nodes (a node costs about 6 CPU-seconds to start): community 1's second device is killed, its first
    # carries the community on.
    deploy_local([*GRID, "federation.devices_per_community=[1, 2]", "federation.local_iters=200",
                  f"output_dir={run_dir}"], on_started=kill_one_node_once_training_starts)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["iterations"] == 200
    assert 1 <= summary["faults"]["timeouts"] <= 200           # the killed device, left out from its kill on
    time.sleep(0.5)
    assert sessions and _session_pids(sessions) == []


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 19391))
        busy.listen()
        assert main(["deploy-local", *GRID, "deploy.superlink_port=19391", f"output_dir={tmp_path / 'run'}"]) == 2
    assert not (tmp_path / "run").exists()


def _tree(root: int) -> dict[int, str]:
    """Every live process below ``root`` (whatever session it made for itself), with its command line."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent_of[int(entry)] = int(stat.read().split(")")[-1].split()[1])
            except (OSError, ValueError):
                pass
    found, changed = {root}, True
    while changed:
        grown = found | {pid for pid, parent in parent_of.items() if parent in found}
        changed, found = grown != found, grown
    tree = {}
    for pid in found - {root}:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                tree[pid] = cmdline.read().replace(b"\0", b" ").decode()
        except OSError:
            pass
    return tree


@pytest.mark.slow
def test_sigterm_stops_everything_deploy_local_started(tmp_path):
    """`kill` (SIGTERM) of a running deploy-local stops its SuperLink, SuperNodes, SuperExecs and apps, the
    ServerApp that Flower starts detached (a session of its own) included, as Ctrl-C does."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "fedgen_pl.cli", "deploy-local", *GRID, "federation.devices_per_community=1",
               "federation.global_rounds=50",
               "federation.local_iters=50", "deploy.superlink_port=19491", "deploy.supernode_port=19520",
               "deploy.stream_address=127.0.0.1:19540", f"output_dir={tmp_path / 'run'}"]
    deploy = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: dict[int, str] = {}
    deadline = time.time() + 240
    while time.time() < deadline and deploy.poll() is None:    # until the ServerApp runs
        seen.update(_tree(deploy.pid))
        if any("flwr-serverapp" in c for c in seen.values()):
            break
        time.sleep(0.2)
    assert any("flwr-serverapp" in c for c in seen.values()), sorted(seen.values())
    deploy.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    deploy.send_signal(signal.SIGTERM)         # a second one, during the clean-up (`timeout` and `kill` both send)
    deploy.wait(timeout=60)
    assert deploy.returncode != 0
    time.sleep(0.5)
    left = {pid: seen[pid] for pid in seen if _alive(pid)}
    assert len(seen) > 5 and left == {}        # it had started the tiers' processes; none is left
