"""Latency of the per-iteration stream (fedgen_pl/flower/stream.py) between two processes on this machine:
the edge here, one device in a subprocess; each exchange sends a work frame down (two generated batches and
their labels) and gets a feedback frame back (L_kj and the gradient). Prints the median and p90 per exchange.

    .venv/bin/python benchmarks/stream_latency.py --exchanges 2000 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fedgen_pl.flower.stream import EdgeStream, encode, new_secret  # noqa: E402

DEVICE = """
import sys, torch
sys.path.insert(0, {root!r})
from fedgen_pl.flower.stream import DeviceStream, encode
device = DeviceStream({address!r}, 0, bytes.fromhex({secret!r}), {limit})
while True:
    item = device.receive()
    if item is None or item[0] == "stop":
        break
    kind, meta, work = item
    device.send(encode("feedback", {{"feedback": work["fake_g"], "loss": torch.zeros(1)}}, iteration=meta["i"]))
device.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    B = args.batch
    work = {"fake_d": torch.randn(B, 1, 28, 28), "y_d": torch.zeros(B, dtype=torch.long),
            "fake_g": torch.randn(B, 1, 28, 28), "y_g": torch.zeros(B, dtype=torch.long)}
    frame_bytes = len(encode("work", work, i=0))
    edge = EdgeStream("127.0.0.1:0", new_secret(), 1, max_frame_bytes=4 * frame_bytes)
    started = time.time()
    child = subprocess.Popen([sys.executable, "-c", DEVICE.format(
        root=str(Path(__file__).resolve().parent.parent), address=f"127.0.0.1:{edge.port}",
        secret=edge.secret.hex(), limit=4 * frame_bytes)])
    while edge.receive(timeout=60)[1] != "joined":
        pass
    start_up = time.time() - started
    times = []
    for i in range(args.exchanges):
        t = time.perf_counter()
        edge.send(0, encode("work", work, i=i))
        while True:
            item = edge.receive(timeout=30)
            if item[1] == "feedback":
                break
        times.append(time.perf_counter() - t)
    edge.send(0, encode("stop"))
    child.wait(timeout=30)
    edge.stop()
    times.sort()
    print(f"{args.exchanges} exchanges, work frame {frame_bytes / 1024:.0f} KiB down, feedback "
          f"{(B * 784 * 4) / 1024:.0f} KiB up, two processes on this machine: median "
          f"{statistics.median(times) * 1000:.2f} ms, p90 {times[int(0.9 * len(times))] * 1000:.2f} ms, "
          f"max {times[-1] * 1000:.2f} ms; device start-up and join {start_up:.1f} s")


if __name__ == "__main__":
    main()
