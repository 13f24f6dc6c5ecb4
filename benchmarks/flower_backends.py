"""Time per local iteration of one Gaussian-grid configuration on three engines, measured in one run:

- in-process: ``fedgen train`` (every device in this process, batched);
- Flower messages in this process: the ServerApp's FlowerDevices and the ClientApp called directly (what
  Flower's message layer costs without processes or a network);
- Flower's simulation engine (Ray; ``pip install 'flwr[simulation]==1.42.0'``, not a project dependency):
  the same apps on virtual SuperNodes, each message run by a Ray actor;
- local deployment over Flower's messages: ``fedgen deploy-local deploy.transport=messages`` (a SuperLink,
  one SuperNode per device, one ClientApp process per message);
- local deployment over the stream: ``fedgen deploy-local deploy.transport=stream`` (the same, with one
  long-lived ClientApp task per device and each iteration on its gRPC stream; fedgen_pl/flower/stream.py).

    python benchmarks/flower_backends.py [--iters 3] [--out DIR]

Prints one line per engine and the ratios to in-process. In this process the figure is the marginal wall
time of a local iteration: (wall time with ``--iters + 20`` iterations - with ``--iters``) / 20, so set-up
does not count. For the deployment it is the mean of the ServerApp's exchange times (push to last reply:
the devices' work, their ClientApp processes and Flower's transport; the edge's update adds milliseconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = ["experiment=gaussian_grid", "federation.communities=[{data: gaussian_grid, classes: [0, 1]}, "
        "{data: gaussian_grid, classes: [2]}]", "federation.devices_per_community=2", "federation.global_rounds=1",
        "trainer.progress_bar=false", "metrics.eval_every=1"]


EXTRA = 20


def _wall(run: Path) -> float:
    summary = json.loads((run / "summary.json").read_text())
    return summary["wall_time_s"] - summary.get("eval_seconds", 0.0)


def in_process(out: Path, iters: int) -> float:
    from fedgen_pl.config import load_config
    from fedgen_pl.train import train

    walls = [_wall(train(load_config([*GRID, f"federation.local_iters={n}", f"output_dir={out / f'in_process_{n}'}"])))
             for n in (iters, iters + EXTRA)]
    return (walls[1] - walls[0]) / EXTRA


def in_memory_flower(out: Path, iters: int) -> float:
    from fedgen_pl.config import load_config
    from fedgen_pl.flower.edge import FlowerDevices
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: tests/ holds the grid
    from tests.flower_grid import InProcessGrid
    from fedgen_pl.train import train

    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    nodes = {10 + i: {"community": c, "device": d} for i, (c, d) in enumerate(pairs)}
    walls = []
    for n in (iters, iters + EXTRA):
        cfg = load_config([*GRID, f"federation.local_iters={n}", f"output_dir={out / f'in_memory_{n}'}"])
        devices = FlowerDevices(InProcessGrid(nodes), cfg, poll_s=0)
        devices.learn_topology(timeout_s=10)
        walls.append(_wall(train(cfg, device_transport=devices)))
    return (walls[1] - walls[0]) / EXTRA


def deployment(out: Path, iters: int, transport: str) -> float:
    from fedgen_pl.deploy import deploy_local

    run = deploy_local([*GRID, f"federation.local_iters={iters}", f"output_dir={out / f'deployed_{transport}'}",
                        "deploy.superlink_port=19491", "deploy.supernode_port=19500", f"deploy.transport={transport}",
                        "deploy.stream_address=127.0.0.1:19540"])
    return json.loads((run / "summary.json").read_text())["deployment"]["exchange_s_mean"]


PAIRS = [(0, 0), (0, 1), (1, 0), (1, 1)]      # simulated node i is (community, device) PAIRS[i]


def simulation(out: Path, iters: int) -> float | None:
    """Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend; ``pip install
    'flwr[simulation]==1.42.0'``): the same ServerApp logic and ClientApp handlers, every SuperNode a
    virtual node and every message run by one of Ray's actors (one CPU each). Flower messages (the
    stream needs a long-lived task per device, which would hold an actor for the whole run). None when Ray
    is not installed."""
    try:
        from flwr.simulation import run_simulation
    except ImportError:
        return None
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from fedgen_pl.config import load_config
    from fedgen_pl.flower import client as device_app
    from fedgen_pl.flower.edge import FlowerDevices
    from fedgen_pl.train import train

    run_dir = out / "simulation"
    server, client = ServerApp(), ClientApp()

    @server.main()
    def edge(grid, context) -> None:
        cfg = load_config([*GRID, f"federation.local_iters={iters}", "deploy.transport=messages",
                           f"output_dir={run_dir}"])
        devices = FlowerDevices(grid, cfg)
        devices.learn_topology(timeout_s=300)
        train(cfg, device_transport=devices)

    def as_device(context):          # the simulation numbers its nodes; fedgen's nodes say where they belong
        community, index = PAIRS[int(context.node_config["partition-id"])]
        context.node_config.update({"community": community, "device": index})
        return context

    client.query("topology")(lambda message, context: device_app.topology(message, as_device(context)))
    client.train("step")(lambda message, context: device_app.device_step(message, as_device(context)))
    run_simulation(server, client, num_supernodes=len(PAIRS),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return json.loads((run_dir / "summary.json").read_text())["deployment"]["exchange_s_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fedgen-flower-bench-"))
    results = {}
    for name, fn in (("in-process", in_process), ("Flower messages, in this process", in_memory_flower),
                     ("Flower simulation engine, Ray (flwr 1.42, messages)", simulation),
                     ("local deployment, Flower messages (flwr 1.42)", lambda o, i: deployment(o, i, "messages")),
                     ("local deployment, stream (flwr 1.42)", lambda o, i: deployment(o, i, "stream"))):
        started = time.time()
        results[name] = fn(out, args.iters)
        if results[name] is None:
            print(f"{name}: not installed (pip install 'flwr[simulation]==1.42.0')", flush=True)
            continue
        print(f"{name}: {results[name]:.3f} s per local iteration ({time.time() - started:.0f} s in all)", flush=True)
    base = results["in-process"]
    print("ratios to in-process: " + ", ".join(f"{k} {v / base:.1f}x" for k, v in results.items() if v is not None))
    (out / "flower_backends.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
