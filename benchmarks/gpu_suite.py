"""Every GPU figure from one prepared command that fits a short GPU window.

    python benchmarks/gpu_suite.py --out DIR            # on the GPU machine (benchmarks/gpu_suite.sh)
    python benchmarks/gpu_suite.py --out DIR --smoke    # every part at toy sizes on CPU, about a minute

Parts, in order of value, each run as a subprocess with a hard time budget (killed when it runs out,
keeping what it measured so far); the whole suite ends within ``--budget`` seconds (default 450, under
the 8 minutes a GPU window leaves):

- ``speed`` (3x5 devices, batch 64), for every ``trainer.compile`` mode (none, default, and
  reduce-overhead = CUDA graphs on a GPU): (a) the vectorised local iteration against a per-device
  loop, (b) against a centralized GAN step over the same total batch, (d) end-to-end ``fedgen train``
  against the bare step. The fastest mode is reported as the GPU default.
- ``scaling`` (c): 15, 150, 1500 and 3000 devices, batch 32: time per iteration and
  ``torch.cuda.max_memory_allocated`` (an out-of-memory is recorded, and stops the larger sizes).
- ``tables``: full-schedule runs as concurrent processes sharing the GPU, one group per window
  (``--tables``): ``table1`` (both splits, five methods, seed 0, ``fake_labels=device``; the default),
  ``table1-community`` (the non-i.i.d. split under ``fake_labels=community``), ``table2`` (four methods,
  both splits), ``literature`` (PRISM's protocol, five methods on MNIST and FashionMNIST; 10,000-sample
  archives). Each checkpoints every 25 rounds; a run found in ``--resume-from``
  continues. Finished runs export a 2000-sample archive of their final generator (scored for
  ``fid_inception`` later on CPU: ``benchmarks/score_archive.py``).

``--out`` receives at most 8 files (what the GPU tool brings back): ``results.json``, ``summary.md``,
``tables.tar.gz`` (configs, metrics, summaries, archives, logs) and ``checkpoints_N.tar.gz`` (the
unfinished runs, to carry into the next window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu_bundle"
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(BUNDLE / "site")]

BUDGETS = {"speed": 150, "scaling": 60, "tables": 240}          # seconds; see RESULTS.md for the estimates
SMOKE_BUDGETS = {"speed": 180, "scaling": 180, "tables": 180}  # side by side, on a loaded CPU
MAX_BACK = 15 * 2**20                                          # per file brought back (the limit is 16 MiB)


# -- the parts (each runs in its own process) -----------------------------------------------------------


def _save(out: Path, part: str, record: dict) -> None:
    path = out / f"part_{part}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _bundle_overrides() -> list[str]:
    """Where the data and the cached classifiers are when the suite runs from the GPU bundle."""
    if not BUNDLE.is_dir():
        return []
    return [f"data.root={BUNDLE / 'data'}", f"metrics.cache_dir={BUNDLE / 'cache'}"]


def part_speed(out: Path, smoke: bool) -> None:
    import torch

    import step_speed
    from step_speed import build, centralized_step, config, end_to_end, federated_step, loop_step, timed

    step_speed.BASE_OVERRIDES[:] = _bundle_overrides()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layout, batch = ("1x2", 4) if smoke else ("3x5", 64)
    repeat, warmup = (2, 1) if smoke else (20, 5)
    modes = ["none"] if smoke else (["none", "default", "reduce-overhead"] if device == "cuda" else ["none", "default"])
    record = {"layout": layout, "batch": batch, "device": device, "modes": {}}
    central = timed(centralized_step(build(config(layout, batch, device), device)), repeat, warmup, device)
    loop = timed(loop_step(build(config(layout, batch, device), device)), max(2, repeat // 4), 1, device)
    record.update(centralized_ms=central * 1e3, loop_ms=loop * 1e3)
    _save(out, "speed", record)
    for mode in modes:
        extra = [f"trainer.compile={mode}", "trainer.member_execution=vmap" if device == "cuda" else
                 "trainer.member_execution=auto"]
        started = time.time()
        fed = timed(federated_step(build(config(layout, batch, device, extra), device)), repeat, warmup + 2, device)
        entry = {"federated_ms": fed * 1e3, "compile_and_warmup_s": time.time() - started,
                 "a_loop_over_vectorised": loop / fed, "b_federated_over_centralized": fed / central}
        record["modes"][mode] = entry
        _save(out, "speed", record)
        e2e, iterations = end_to_end(layout, batch, device, 2 if smoke else 20, extra)
        entry.update(end_to_end_ms=e2e * 1e3, d_end_to_end_over_step=e2e / fed, e2e_iterations=iterations)
        _save(out, "speed", record)
    best = min(record["modes"], key=lambda m: record["modes"][m]["federated_ms"])
    record["fastest_compile_mode"] = best
    _save(out, "speed", record)


def part_scaling(out: Path, smoke: bool) -> None:
    import torch

    import step_speed
    from step_speed import build, config, federated_step, timed

    step_speed.BASE_OVERRIDES[:] = _bundle_overrides()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layouts, batch = (["1x2", "1x3"], 4) if smoke else (["3x5", "30x5", "300x5", "600x5"], 32)
    record = {"batch": batch, "device": device, "sizes": []}
    for layout in layouts:
        communities, per = (int(v) for v in layout.split("x"))
        entry = {"layout": layout, "devices": communities * per}
        record["sizes"].append(entry)
        try:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            started = time.time()
            system = build(config(layout, batch, device, ["trainer.member_execution=vmap"] if device == "cuda"
                                  else []), device)
            entry["build_s"] = time.time() - started
            entry["ms_per_iteration"] = timed(federated_step(system), 3, 2, device) * 1e3
            if device == "cuda":
                entry["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            del system
        except torch.cuda.OutOfMemoryError as err:
            entry["error"] = f"out of memory: {str(err).splitlines()[0][:200]}"
            _save(out, "scaling", record)
            break
        _save(out, "scaling", record)


# Groups of full-schedule runs, one window each: (table, overrides, splits). A window cannot bring back the
# checkpoints of more than a few runs (8 files of 16 MiB; a Table 1 checkpoint is about 20 MB), so a group
# should finish inside its window.
TABLE_GROUPS = {
    "table1": ("table1", [], ("iid", "noniid")),                                         # 10 runs
    "table1-community": ("table1", ["federation.fake_labels=community"], ("noniid",)),   # 5 runs
    "table2": ("table2", [], ("iid", "noniid")),                                         # 8 runs
    "literature": ("literature", ["trainer.precision=bf16-mixed"], ("mnist", "fmnist")),   # 10 runs, at the CPU
                                    # runs' precision (docs/results/literature.md); 10,000-sample archives (PRISM's size)
}


def table_runs(smoke: bool, groups: list[str] = ("table1",)) -> list[tuple[str, list[str]]]:
    """(name, fedgen train overrides) of every run of the tables part."""
    from fedgen_pl.table import runs_for, run_dir_for

    schedule = "quick" if smoke else "full"
    plan = []
    if smoke:
        wanted = [("table1", ["federation.fake_labels=community"], ("noniid",), ["FR sync"])]   # one run: the machinery
    else:
        wanted = [(*TABLE_GROUPS[group], None) for group in groups]
    for table, overrides, splits, methods in wanted:
        protocol = "community" if "federation.fake_labels=community" in overrides else "device"
        for key, run_overrides in runs_for(table, schedule, [0], overrides, splits, methods):
            name = str(run_dir_for(Path(protocol), key)).replace("/", "_")
            plan.append((name, run_overrides))
    return plan


def part_tables(out: Path, smoke: bool, deadline: float, resume_from: Path | None, groups: list[str]) -> None:
    import torch

    device = "gpu" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="fedgen-suite-runs-"))
    if resume_from is not None and resume_from.is_dir():
        for tar in sorted(resume_from.glob("checkpoints_*.tar.gz")):
            with tarfile.open(tar) as archive:
                archive.extractall(work, filter="data")
    common = [f"trainer.accelerator={device}", "trainer.checkpoint_every_rounds=25", "trainer.progress_bar=false",
              "metrics.inception=false", "metrics.eval_every=100", "trainer.log_every_n_iters=50"]
    common += _bundle_overrides()
    if smoke:
        common = [c for c in common if not c.startswith(("trainer.checkpoint", "metrics.eval"))] + [
            "federation.global_rounds=2", "federation.local_iters=1", "data.batch_size=4", "metrics.num_samples=20", "metrics.classifier_train_samples=300",
            "metrics.classifier_epochs=1", f"metrics.cache_dir={work / 'cache'}", "trainer.checkpoint_every_rounds=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BUNDLE / "site"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    record = {"device": device, "runs": {}}
    processes = {}
    for name, overrides in table_runs(smoke, groups):
        run_dir = work / "runs" / name
        if (run_dir / "summary.json").is_file():
            record["runs"][name] = {"status": "finished earlier"}
            continue
        args = ([f"resume={run_dir}", *common] if (run_dir / "checkpoints" / "last.ckpt").is_file()
                else [*overrides, *common, f"output_dir={run_dir}"])
        (work / "logs").mkdir(parents=True, exist_ok=True)
        log = open(work / "logs" / f"{name}.log", "w")
        processes[name] = subprocess.Popen([sys.executable, "-m", "fedgen_pl.cli", "train", *args], cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        record["runs"][name] = {"status": "started", "resumed": args[0].startswith("resume=")}
    _save(out, "tables", record)
    export_reserve = 10 if smoke else 45
    while processes and time.time() < deadline - export_reserve:
        for name, process in list(processes.items()):
            if process.poll() is not None:
                record["runs"][name]["status"] = "finished" if process.returncode == 0 else f"exit {process.returncode}"
                del processes[name]
        time.sleep(1)
    for name, process in processes.items():           # out of time: stop; the last checkpoint is kept
        os.killpg(process.pid, signal.SIGTERM)
        record["runs"][name]["status"] = "stopped at the budget"
    for process in processes.values():
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    for name, info in record["runs"].items():
        run_dir = work / "runs" / name
        summary = run_dir / "summary.json"
        if summary.is_file():
            info["metrics"] = json.loads(summary.read_text()).get("metrics", {})
            info["wall_time_s"] = json.loads(summary.read_text()).get("wall_time_s")
            export_archive(run_dir, 20 if smoke else 10000 if name.startswith("device_literature") else 2000, env)
        else:
            checkpoint = run_dir / "checkpoints" / "last.ckpt"
            info["round"] = _checkpoint_round(checkpoint) if checkpoint.is_file() else 0
    _save(out, "tables", record)
    pack(work, out)
    shutil.rmtree(work, ignore_errors=True)


def _checkpoint_round(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["federation_state"]["round"])


def export_archive(run_dir: Path, n: int, env: dict) -> None:
    """``archive.npz`` (compressed): n samples of the final global generator, labels cycling, uint8."""
    import numpy as np

    stem = run_dir / f"samples_{n}"
    subprocess.run([sys.executable, "-m", "fedgen_pl.cli", "sample", str(run_dir), "--n", str(n), "--out", str(stem)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    with np.load(stem.with_suffix(".npz")) as data:
        np.savez_compressed(run_dir / "archive.npz", **{k: data[k] for k in data.files})
    stem.with_suffix(".npz").unlink()


def pack(work: Path, out: Path) -> None:
    """tables.tar.gz: everything small of every run; checkpoints_N.tar.gz: unfinished runs' checkpoints."""
    with tarfile.open(out / "tables.tar.gz", "w:gz") as archive:
        for path in sorted((work / "runs").rglob("*")) + sorted((work / "logs").rglob("*")):
            if path.is_file() and path.suffix != ".ckpt" and path.stat().st_size < 4 * 2**20:
                archive.add(path, arcname=str(path.relative_to(work)))
    unfinished = [d for d in sorted((work / "runs").glob("*")) if not (d / "summary.json").is_file()
                  and (d / "checkpoints" / "last.ckpt").is_file()]
    part, size, archive = 0, 0, None
    for run_dir in unfinished:
        for path in [run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml", run_dir / "metrics.csv",
                     run_dir / "partition.json"]:
            if not path.is_file():
                continue
            if archive is None or size + path.stat().st_size > MAX_BACK * 2:      # gzip shrinks checkpoints
                if archive is not None:
                    archive.close()
                part += 1
                if part > 5:
                    return
                archive, size = tarfile.open(out / f"checkpoints_{part}.tar.gz", "w:gz"), 0
            archive.add(path, arcname=str(path.relative_to(work)))
            size += path.stat().st_size
    if archive is not None:
        archive.close()


# -- the parent: budgets, results, summary -------------------------------------------------------------


def run_parts(out: Path, smoke: bool, budget: float, parts: list[str], resume_from: Path | None,
              groups: list[str]) -> dict:
    budgets = SMOKE_BUDGETS if smoke else BUDGETS
    started = time.time()
    deadline = started + budget
    results = {"hardware": _hardware(), "smoke": smoke, "budget_s": budget, "parts": {}}
    # On the GPU the parts run one after another, each timed alone; the smoke only checks that every part runs,
    # so there they run side by side.
    for wave in [parts] if smoke else [[part] for part in parts]:
        running = {}
        for part in wave:
            left = deadline - time.time() - 5
            limit = min(budgets[part], left) if part != "tables" else left
            if limit < 5:
                results["parts"][part] = {"status": "skipped: no time left"}
                continue
            command = [sys.executable, __file__, "--part", part, "--out", str(out), "--deadline",
                       str(time.time() + limit)]
            command += ["--smoke"] if smoke else []
            command += ["--resume-from", str(resume_from)] if resume_from else []
            command += ["--tables", *groups]
            running[part] = (subprocess.Popen(command, cwd=ROOT, start_new_session=True), time.time(), limit)
            results["parts"][part] = {"status": "running"}          # (keeps the parts in their order)
        while running:
            for part, (process, part_started, limit) in list(running.items()):
                code = process.poll()
                if code is None and time.time() < part_started + limit + (20 if part == "tables" else 0):
                    continue
                if code is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    status = "stopped at its budget"
                else:
                    status = "ok" if code == 0 else f"exit {code}"
                path = out / f"part_{part}.json"
                results["parts"][part] = {"status": status, "seconds": round(time.time() - part_started, 1),
                                          "budget_s": round(limit, 1),
                                          "result": json.loads(path.read_text()) if path.is_file() else None}
                path.unlink(missing_ok=True)
                del running[part]
            time.sleep(0.2)
    results["total_s"] = round(time.time() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(summary(results))
    return results


def _hardware() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{gpu}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; Python "
            f"{platform.python_version()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}")


def summary(results: dict) -> str:
    lines = [f"# GPU suite{' (smoke)' if results['smoke'] else ''}", "", f"Hardware: {results['hardware']}.",
             f"Total {results['total_s']} s of a {results['budget_s']} s budget.", ""]
    speed = (results["parts"].get("speed") or {}).get("result")
    if speed:
        lines += [f"## Step speed ({speed['layout']} devices, batch {speed['batch']}, {speed['device']})", "",
                  f"centralized GAN step {speed['centralized_ms']:.2f} ms; per-device loop {speed['loop_ms']:.2f} ms", "",
                  "| trainer.compile | federated step (ms) | (a) loop / vectorised | (b) federated / centralized | "
                  "(d) end-to-end / step |", "|---|---|---|---|---|"]
        for mode, m in speed["modes"].items():
            d = f"{m['d_end_to_end_over_step']:.2f}x" if "d_end_to_end_over_step" in m else "–"
            lines.append(f"| {mode} | {m['federated_ms']:.2f} | {m['a_loop_over_vectorised']:.2f}x | "
                         f"{m['b_federated_over_centralized']:.2f}x | {d} |")
        lines += ["", f"Fastest: `trainer.compile={speed.get('fastest_compile_mode', '?')}`.", ""]
    scaling = (results["parts"].get("scaling") or {}).get("result")
    if scaling:
        lines += [f"## Scaling (batch {scaling['batch']})", "", "| devices | ms per iteration | max memory allocated (GiB) |",
                  "|---|---|---|"]
        for s in scaling["sizes"]:
            time_ms = f"{s['ms_per_iteration']:.1f}" if "ms_per_iteration" in s else s.get("error", "–")
            memory = f"{s['max_memory_allocated_gib']:.2f}" if "max_memory_allocated_gib" in s else "–"
            lines.append(f"| {s['devices']} | {time_ms} | {memory} |")
        lines.append("")
    tables = (results["parts"].get("tables") or {}).get("result")
    if tables:
        lines += ["## Full-schedule tables", "", "| run | status | metrics |", "|---|---|---|"]
        for name, info in tables["runs"].items():
            metrics = ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in (info.get("metrics") or {}).items()
                                if k.startswith("global/"))
            lines.append(f"| {name} | {info['status']}{' at round ' + str(info['round']) if 'round' in info else ''} "
                         f"| {metrics} |")
    for name, part in results["parts"].items():
        lines.append(f"\n{name}: {part['status']}" + (f" in {part['seconds']} s (budget {part['budget_s']} s)"
                                                      if "seconds" in part else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results directory (at most 8 files are written there)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU, about a minute")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole suite (default 450; smoke 210)")
    parser.add_argument("--parts", nargs="+", default=["speed", "scaling", "tables"], choices=list(BUDGETS))
    parser.add_argument("--tables", nargs="+", default=["table1"], choices=list(TABLE_GROUPS),
                        help="groups of full-schedule runs for this window (default table1: 10 runs)")
    parser.add_argument("--resume-from", default=None, help="a directory holding checkpoints_N.tar.gz of a window before")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = Path(args.resume_from) if args.resume_from else None
    if args.part == "speed":
        part_speed(out, args.smoke)
    elif args.part == "scaling":
        part_scaling(out, args.smoke)
    elif args.part == "tables":
        part_tables(out, args.smoke, args.deadline or time.time() + 60, resume_from, args.tables)
    else:
        budget = args.budget or (210 if args.smoke else 450)
        results = run_parts(out, args.smoke, budget, args.parts, resume_from, args.tables)
        print((out / "summary.md").read_text())
        return 0 if all(p["status"] == "ok" for p in results["parts"].values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
