"""How fast the federated local iteration is, measured against its references in the same run.

    .venv/bin/python benchmarks/step_speed.py                   # (a) (b) (d) at 3x5 devices, batch 64
    .venv/bin/python benchmarks/step_speed.py --scaling 3x5 10x15 100x15 --batch 32   # (c)

(a) the vectorised local iteration (stacked networks + vmap, ``FederatedGAN.step_event``) against a
    per-device Python loop of the same maths (``tests.reference.LoopFederation``);
(b) the same iteration against one centralized GAN step with the same networks and the same total real
    batch (devices x batch), the same losses and two latent batches (z_d, z_g);
(c) time per iteration and peak memory as the number of devices grows;
(d) end-to-end training throughput (real samples per second through ``fedgen train``: batch sampling,
    dispatch, aggregation, logging and checkpoints included, evaluation excluded) against the bare
    federated step of (a), as time per iteration;
(e) ``--precision``: the federated step and end-to-end ``fedgen train`` at ``trainer.precision=32-true``
    against ``bf16-mixed`` (the step under the same autocast Lightning applies), batch 32 as in
    mnist_fmnist_noniid:  .venv/bin/python benchmarks/step_speed.py --precision --batch 32
    With ``--experiment NAME --model M`` the step is that experiment's own (its networks, devices and batch;
    e.g. the literature table's ``prism_mnist``), and only the step is timed.
(f) ``--make-train``: the training phase of ``make train`` (the default experiment, quick schedule: 100
    rounds, 5 evaluations; classifier set-up excluded) at each precision, with the shipped settings, and
    the precision ``trainer.precision=auto`` picks on this machine:
    .venv/bin/python benchmarks/step_speed.py --make-train
(g) ``--privacy``: a local iteration of fedgen_fr, md_gan (GS-WGAN feedback sanitiser) and fed_gan
    (DP-FedAvg at the round's end) with ``privacy.noise_multiplier=1`` against without, whole rounds:
    .venv/bin/python benchmarks/step_speed.py --privacy
(h) ``--r1 GAMMA``: the local iteration with the R1 penalty (``model.r1_gamma=GAMMA``) against without, under
    the autocast ``trainer.precision=auto`` picks here, interleaved; by default on ``mnist_inverse_noniid``
    with its own model (the experiment whose collapses the penalty is for; ``--experiment``, ``--model``):
    .venv/bin/python benchmarks/step_speed.py --r1 1
Every ratio divides two timings taken in this run, on this machine; the script prints the hardware.
Data: MNIST + FashionMNIST (the offline sources `make` installs), DCGAN networks of mnist_fmnist_noniid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedgen_pl.config import load_config
from fedgen_pl.models import model_class
from fedgen_pl.train import resolve_precision
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests/ holds the loop
from tests.reference import LoopFederation  # noqa: E402


BASE_OVERRIDES: list[str] = []      # set by gpu_suite.py: where the data is on the GPU machine


def config(layout: str, batch: int, device: str, extra: list[str] = ()):
    communities, devices = (int(v) for v in layout.split("x"))
    names = ["mnist" if k % 3 == 0 else "fashion_mnist" for k in range(communities)]
    listing = "[" + ", ".join(f"{{data: {n}}}" for n in names) + "]"
    return load_config(["experiment=mnist_fmnist_noniid", f"federation.communities={listing}", *BASE_OVERRIDES,
                        f"federation.devices_per_community={devices}", f"data.batch_size={batch}",
                        "data.partition=iid", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                        "seed=0", "federation.global_rounds=1000000", *extra])


def build(cfg, device: str):
    datamodule = FederatedDataModule(cfg)
    datamodule.setup("fit")
    system = model_class(cfg.model.name)(OmegaConf.to_container(cfg, resolve=True), datamodule.spec.to_dict())
    system = system.to(device)
    system.attach_data(datamodule)
    return system


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int, device: str) -> float:
    """Median seconds per call over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def federated_step(system):
    """One clock event (sync: a local iteration of every community, dispatch of the next included); at a
    round's end also the cloud aggregation, as the GlobalAggregation callback does it."""
    optimizers = system.configure_optimizers()      # G and D; the label-related model adds its own

    def step():
        system.step_event(*optimizers)
        if system.round_complete:
            system.end_round()

    return step


def whole_rounds(system, rounds: int) -> float:
    """Seconds per local iteration over ``rounds`` whole rounds (the cloud's round ends included)."""
    step, start, iterations = federated_step(system), time.perf_counter(), system.iteration
    done = system.round + rounds
    while system.round < done:
        step()
    sync(str(system.device.type))
    return (time.perf_counter() - start) / (system.iteration - iterations)


def loop_step(system):
    loop = LoopFederation(system)
    batch = system.inflight()
    return lambda: loop.local_iteration(batch)


def centralized_step(system):
    """One GAN step over the pooled batch: D on real + G(z_d), then G through D(G(z_g)); same networks."""
    G = system.community_generators.member(0).requires_grad_(True)
    D = system.device_discriminators.member(0).requires_grad_(True)
    m = system.cfg.model
    opt_g = torch.optim.Adam(G.parameters(), lr=m.g_lr, betas=(m.beta1, m.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=m.d_lr, betas=(m.beta1, m.beta2))
    rng, B = system.generator_rng(), system.cfg.data.batch_size

    def step():
        real_x, real_y = system.data.sample_real(B, rng)
        real_x, real_y = real_x.flatten(0, 1), real_y.flatten(0, 1)
        n = len(real_y)
        y_d, y_g = system.data.sample_fake_labels(B, rng).flatten(), system.data.sample_fake_labels(B, rng).flatten()
        z_d = torch.randn(n, m.latent_dim, generator=rng, device=system.device)
        z_g = torch.randn(n, m.latent_dim, generator=rng, device=system.device)
        with torch.no_grad():
            fake_d = G(z_d, y_d)
        logits = D(torch.cat([real_x, fake_d]), torch.cat([real_y, y_d]))
        d_loss = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        for p in D.parameters():
            p.requires_grad_(False)
        g_loss = F.softplus(-D(G(z_g, y_g), y_g)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)

    return step


def peak_memory(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process peak)"


def autocast_step(step, precision: str, device: str):
    """``step`` under the autocast that Lightning's ``trainer.precision`` puts around a training step."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def run():
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            step()

    return run


def end_to_end(layout: str, batch: int, device: str, rounds: int, extra: list[str] = ()) -> tuple[float, int]:
    """Seconds per local iteration of `fedgen train` (no evaluation), and the iterations run."""
    from fedgen_pl.train import train

    out = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    cfg = config(layout, batch, device, [f"federation.global_rounds={rounds}", "metrics.eval_every=1000000",
                                         "trainer.progress_bar=false", f"output_dir={out}",
                                         "metrics.classifier_train_samples=1000", "metrics.classifier_epochs=1",
                                         f"metrics.cache_dir={out / 'cache'}", "metrics.num_samples=100",
                                         "metrics.kid_subset_size=50", *extra])
    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    training = summary["wall_time_s"] - summary["metrics_setup_seconds"] - summary["eval_seconds"]
    return training / summary["iterations"], summary["iterations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layout", default="3x5", help="communities x devices per community for (a), (b), (d)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--scaling", nargs="*", default=[], help="layouts for (c), e.g. 3x5 10x15 100x15")
    parser.add_argument("--e2e-rounds", type=int, default=20, help="rounds of `fedgen train` for (d); 0 skips it")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--precision", action="store_true", help="(e): 32-true against bf16-mixed, step and end to end")
    parser.add_argument("--experiment", help="(e) only: time this experiment's own step instead of --layout's")
    parser.add_argument("--model", default=None, help="(e) with --experiment: model.name (default fedgen_fr); (h): "
                        "default the experiment's own")
    parser.add_argument("--r1", type=float, default=None, metavar="GAMMA",
                        help="(h): the step with model.r1_gamma=GAMMA against without")
    parser.add_argument("--make-train", action="store_true", help="(f): the training phase of `make train` per precision")
    parser.add_argument("--privacy", action="store_true",
                        help="(g): a local iteration with privacy.noise_multiplier=1 against without, per model")
    args = parser.parse_args()
    device = args.device
    hardware = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, " \
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    print(f"# step_speed: {hardware}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")

    if args.make_train:
        from fedgen_pl.train import train

        phases = {}
        for precision in ("32-true", "bf16-mixed"):
            out = Path(tempfile.mkdtemp(prefix="bench-make-train-"))
            run_dir = train(load_config([f"trainer.precision={precision}", "trainer.progress_bar=false",
                                         f"output_dir={out / 'run'}"]))
            summary = json.loads((run_dir / "summary.json").read_text())
            phases[precision] = summary["wall_time_s"] - summary["metrics_setup_seconds"]
            print(f"(f) make train at {precision}: training phase {phases[precision]:.1f} s ({summary['rounds']} "
                  f"rounds, evaluation {summary['eval_seconds']:.1f} s of it), global/fid_classifier "
                  f"{summary['metrics']['global/fid_classifier']:.1f}")
        print(f"(f) bf16-mixed speed-up of the training phase: {phases['32-true'] / phases['bf16-mixed']:.2f}x")
        from fedgen_pl.cpu import cpu_bf16_pays
        from fedgen_pl.train import auto_precision

        shipped = auto_precision(device == "cpu", cpu_bf16_pays(), gan=True, images=True, deployed=False)
        print(f"(f) `make train` (trainer.precision=auto) trains at {shipped} on this machine: training phase "
              f"{phases[shipped]:.1f} s")
        return
    if args.privacy:
        rounds = max(2, args.repeat // 5)
        for model in ("fedgen_fr", "md_gan", "fed_gan"):
            systems = {name: build(config(args.layout, args.batch, device, [f"model.name={model}", *extra]), device)
                       for name, extra in (("off", []), ("on", ["privacy.noise_multiplier=1"]))}
            times = {name: [] for name in systems}
            for name, system in systems.items():       # warm-up: one round each
                whole_rounds(system, 1)
            for _ in range(3):                          # interleaved, so drift in the machine's load hits both
                for name, system in systems.items():
                    times[name].append(whole_rounds(system, rounds))
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            print(f"(g) {model} ({systems['on'].privacy.mechanism} sanitiser): {off * 1000:.1f} ms per local "
                  f"iteration without privacy, {on * 1000:.1f} ms with; ratio {on / off:.3f}x (whole rounds, round "
                  f"ends included; median of 3 x {rounds} rounds)")
        return
    if args.r1 is not None:
        experiment = args.experiment or "mnist_inverse_noniid"
        common = [f"experiment={experiment}", *([f"model.name={args.model}"] if args.model else []), *BASE_OVERRIDES,
                  f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "seed=0", "federation.global_rounds=1000000"]
        cfgs = {name: load_config([*common, f"model.r1_gamma={gamma}"]) for name, gamma in (("off", 0), ("on", args.r1))}
        systems = {name: build(cfg, device) for name, cfg in cfgs.items()}
        precision = resolve_precision(cfgs["off"], systems["off"].spec)
        steps = {name: autocast_step(federated_step(system), precision, device) for name, system in systems.items()}
        times = {name: [] for name in steps}
        for name, step in steps.items():
            timed(step, 1, args.warmup, device)
        for _ in range(3):                          # interleaved, so drift in the machine's load hits both
            for name, step in steps.items():
                times[name].append(timed(step, args.repeat, 0, device))
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        print(f"(h) {experiment}, {cfgs['off'].model.name}, {precision}, {cfgs['off'].data.batch_size} per device: "
              f"{off * 1000:.1f} ms per local iteration without the R1 penalty, {on * 1000:.1f} ms with "
              f"model.r1_gamma={args.r1}; ratio {on / off:.3f}x (median of 3 x {args.repeat} iterations)")
        return
    if args.precision:
        if args.experiment:
            cfg = load_config([f"experiment={args.experiment}", f"model.name={args.model or 'fedgen_fr'}", *BASE_OVERRIDES,
                               f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "seed=0"])
            print(f"(e) {args.experiment}, {args.model}: {cfg.data.batch_size} per device")
        else:
            cfg = config(args.layout, args.batch, device, ["data.partition=shards"])
        times = {}
        for precision in ("32-true", "bf16-mixed"):
            step = timed(autocast_step(federated_step(build(cfg, device)), precision, device), args.repeat,
                         args.warmup, device)
            line = f"(e) {precision}: federated step {step * 1000:.1f} ms"
            e2e = None
            if args.e2e_rounds and not args.experiment:
                e2e, iterations = end_to_end(args.layout, args.batch, device, args.e2e_rounds,
                                             [f"trainer.precision={precision}", "data.partition=shards"])
                line += f"; end-to-end `fedgen train` ({iterations} iterations) {e2e * 1000:.1f} ms per iteration"
            times[precision] = (step, e2e)
            print(line)
        (s32, e32), (s16, e16) = times["32-true"], times["bf16-mixed"]
        print(f"(e) bf16-mixed speed-up: step {s32 / s16:.2f}x" + (f", end-to-end {e32 / e16:.2f}x" if e32 else ""))
        return
    if not args.scaling:
        cfg = config(args.layout, args.batch, device)
        n = sum([cfg.federation.devices_per_community] * len(cfg.federation.communities))
        print(f"layout {args.layout} ({n} devices), batch {args.batch} per device, {n * args.batch} real samples "
              f"per iteration; median of {args.repeat} after {args.warmup} warm-up")
        system = build(cfg, device)
        execution = system.device_discriminators.execution(system.inflight_real_x)
        fed = timed(federated_step(system), args.repeat, args.warmup, device)
        central = timed(centralized_step(build(cfg, device)), args.repeat, args.warmup, device)
        print(f"federated local iteration (trainer.member_execution=auto -> {execution}): {fed * 1000:.1f} ms")
        print(f"centralized GAN step, same networks and total batch: {central * 1000:.1f} ms")
        print(f"(b) federated / centralized = {fed / central:.2f}x")
        if not args.skip_loop:
            vmapped = timed(federated_step(build(config(args.layout, args.batch, device, ["trainer.member_execution=vmap"]),
                                                 device)), args.repeat, args.warmup, device)
            loop = timed(loop_step(build(cfg, device)), max(3, args.repeat // 4), 1, device)
            print(f"federated local iteration, vmap over devices: {vmapped * 1000:.1f} ms")
            print(f"per-device Python loop of the same maths (reference.LoopFederation): {loop * 1000:.1f} ms")
            print(f"(a) loop / vmap = {loop / vmapped:.2f}x")
        if args.e2e_rounds:
            e2e, iterations = end_to_end(args.layout, args.batch, device, args.e2e_rounds)
            print(f"end-to-end `fedgen train` ({iterations} iterations): {e2e * 1000:.1f} ms per iteration, "
                  f"{n * args.batch / e2e:.0f} real samples/s")
            print(f"(d) end-to-end / bare federated step = {e2e / fed:.2f}x")
    for layout in args.scaling:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        cfg = config(layout, args.batch, device)
        system = build(cfg, device)
        seconds = timed(federated_step(system), max(3, args.repeat // 4), 2, device)
        print(f"(c) {layout} ({system.num_devices} devices, batch {args.batch}): {seconds * 1000:.1f} ms per "
              f"iteration, peak {peak_memory(device)}")
        del system


if __name__ == "__main__":
    main()
