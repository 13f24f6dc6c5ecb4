"""Does ``trainer.compile=default`` (inductor) pay on CPU for the DCGAN step?

    .venv/bin/python benchmarks/cpu_compile.py [--layout 3x5] [--batch 32] [--repeat 10]

Times the federated local iteration of ``mnist_fmnist_noniid`` (sync, ``member_execution=auto``) without
and with ``torch.compile``, in one run, and the one-time cost of compiling (the first iterations' excess
over the compiled median). A quick run is 500 iterations: the printed projection is
compile time + 500 x compiled step against 500 x plain step (evaluation and the rest are the same in both).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_speed import build, config, federated_step, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="3x5")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"# cpu_compile: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    results = {}
    for mode in ("none", "default"):
        step = federated_step(build(config(args.layout, args.batch, "cpu", [f"trainer.compile={mode}"]), "cpu"))
        started = time.perf_counter()
        step()                                   # the first call compiles (when asked)
        first = time.perf_counter() - started
        results[mode] = (timed(step, args.repeat, 2, "cpu"), first)
        print(f"compile={mode}: first iteration {first:.1f} s, then {results[mode][0] * 1e3:.0f} ms per iteration")
    plain, (compiled, first) = results["none"][0], results["default"]
    compile_s = first - compiled
    quick_plain, quick_compiled = 500 * plain, compile_s + 500 * compiled
    print(f"step: compiled / plain = {compiled / plain:.2f}x; one-time compile {compile_s:.0f} s")
    print(f"a quick run's 500 iterations: plain {quick_plain:.0f} s, compiled {quick_compiled:.0f} s "
          f"({100 * (1 - quick_compiled / quick_plain):+.0f}% saved; the bar to keep it is +20%)")


if __name__ == "__main__":
    main()
