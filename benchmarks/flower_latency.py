"""Where a deployed exchange's time goes (flwr 1.42, localhost): the floor of Flower's runtime, measured
with a ClientApp that imports nothing but Flower and answers at once, beside the import time of
fedgen's ClientApp, in one run; and, with ``--deployed``, a real ``fedgen deploy-local`` of the 2x2 grid over
the stream (``deploy.transport=stream``): the median exchange of its sync local iterations.

    python benchmarks/flower_latency.py [--nodes 4] [--exchanges 5] [--deployed --rounds 10]

Prints the mean and median round trip (push to the last reply, polled every 50 ms) of an exchange with
every node, and the wall time of ``import fedgen_pl.flower.device, datamodules, fedgen_pl.networks`` in a
fresh interpreter (what every fedgen ClientApp process pays before its device step).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

APP = '''
import time
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client_app = ClientApp()
server_app = ServerApp()


@client_app.query("ping")
def ping(message: Message, context: Context) -> Message:
    return Message(RecordDict({"pong": ConfigRecord({"ok": 1})}), reply_to=message)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    expected = int(context.run_config["nodes"])
    while len(list(grid.get_node_ids())) < expected:
        time.sleep(0.2)
    nodes = list(grid.get_node_ids())
    for i in range(int(context.run_config["exchanges"])):
        started = time.time()
        pending = set(grid.push_messages([Message(RecordDict({}), dst_node_id=n, message_type="query.ping")
                                          for n in nodes]))
        while pending:
            for reply in grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
            time.sleep(0.05)
        print(f"EXCHANGE {time.time() - started:.3f}", flush=True)
'''

PYPROJECT = '''
[project]
name = "pingapp"
version = "0.1.0"
description = "Flower's round-trip floor"

[tool.flwr.app]
publisher = "fedgen-pl"

[tool.flwr.app.components]
serverapp = "pingapp:server_app"
clientapp = "pingapp:client_app"

[tool.flwr.app.config]
nodes = 4
exchanges = 5
'''


def flower_floor(nodes: int, exchanges: int, link_port: int = 19691, node_port: int = 19700) -> list[float]:
    from fedgen_pl.deploy import Processes, _wait_for_port, flower_env

    work = Path(tempfile.mkdtemp(prefix="fedgen-flower-floor-"))
    app = work / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "pingapp.py").write_text(APP)
    (work / "cli").mkdir()
    (work / "cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    (work / "logs").mkdir()
    processes = Processes(work / "logs")
    try:
        processes.start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                      "--host", "127.0.0.1", "--port", str(link_port)], flower_env(work / "link"))
        _wait_for_port(link_port, 30)
        for i in range(nodes):
            processes.start(f"node{i}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                                         "--port", str(node_port + i), "--node-config", f"device={i}"],
                            flower_env(work / f"node{i}"))
        done = subprocess.run(["flwr", "run", str(app), "local", "--stream", "--run-config",
                               f"nodes={nodes} exchanges={exchanges}"], env=flower_env(work / "cli"),
                              capture_output=True, text=True, timeout=600)
    finally:
        processes.stop()
    return [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("EXCHANGE")]


def import_time() -> float:
    started = time.time()
    subprocess.run([sys.executable, "-c", "import fedgen_pl.flower.device, datamodules, fedgen_pl.networks"],
                   cwd=ROOT, check=True)
    return time.time() - started


def deployed_exchanges(rounds: int) -> dict:
    """A real local deployment of the 2x2 grid over the stream, ``rounds`` x 5 sync local iterations: the
    deployment block of its summary (exchange seconds: push to the last reply, the devices' steps included)."""
    import json

    from fedgen_pl.deploy import deploy_local

    out = Path(tempfile.mkdtemp(prefix="fedgen-deployed-")) / "run"
    started = time.time()
    deploy_local(["experiment=gaussian_grid", "federation.communities=[{data: gaussian_grid, classes: [0, 1]}, "
                  "{data: gaussian_grid, classes: [2]}]", "federation.devices_per_community=2",
                  f"federation.global_rounds={rounds}", "federation.local_iters=5", "trainer.progress_bar=false",
                  "deploy.transport=stream", "deploy.superlink_port=19791", "deploy.supernode_port=19800",
                  "deploy.stream_address=127.0.0.1:19890", f"output_dir={out}"])
    summary = json.loads((out / "summary.json").read_text())
    return {**summary["deployment"], "command_s": round(time.time() - started, 1), "train_s": summary["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--exchanges", type=int, default=5)
    parser.add_argument("--deployed", action="store_true", help="only the real deployment over the stream")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.deployed:
        d = deployed_exchanges(args.rounds)
        print(f"deploy-local over the stream, 2x2 grid, {d['exchanges']} sync exchanges: median "
              f"{d['exchange_s_median'] * 1000:.0f} ms, mean {d['exchange_s_mean'] * 1000:.0f} ms, max "
              f"{d['exchange_s_max'] * 1000:.0f} ms per exchange; training {d['train_s']} s, the whole command "
              f"{d['command_s']} s")
        return
    times = flower_floor(args.nodes, args.exchanges)
    print(f"Flower floor, {args.nodes} nodes, a ClientApp that imports only flwr: exchanges {times}; "
          f"mean {statistics.mean(times):.2f} s, median {statistics.median(times):.2f} s")
    imports = [import_time() for _ in range(3)]
    print(f"fedgen ClientApp imports in a fresh interpreter: {', '.join(f'{t:.2f}' for t in imports)} s")


if __name__ == "__main__":
    main()
