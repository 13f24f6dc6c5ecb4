"""trainer.precision=bf16-mixed: what runs in bf16 inside the manual-optimisation step, what stays fp32."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedgen_pl.cli import main
from fedgen_pl.train import train
from fedgen_pl.config import load_config
from tests.conftest import tiny_image_run


class ConvolutionDtypes(TorchDispatchMode):
    """Records the dtypes of every aten convolution (after autocast has cast its inputs)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.seen.append((args[0].dtype, args[1].dtype if func.overloadpacket is torch.ops.aten.convolution
                              else args[2].dtype))
        return func(*args, **(kwargs or {}))


class InspectSteps(pl.Callback):
    """Runs every training step and every cloud round (aggregation, round hooks, the next dispatch) under
    ``ConvolutionDtypes``, not the evaluation; keeps the parameters' and optimisers' dtypes at the end."""

    def __init__(self):
        self.mode = ConvolutionDtypes()

    def _inspected(self, fn):
        def call(*args, **kwargs):
            with self.mode:
                return fn(*args, **kwargs)
        return call

    def on_fit_start(self, trainer, pl_module):
        pl_module.training_step = self._inspected(pl_module.training_step)
        pl_module.end_round = self._inspected(pl_module.end_round)

    def on_train_end(self, trainer, pl_module):
        self.parameters = {name: p.dtype for name, p in pl_module.named_parameters()}
        self.adam_state = [value.dtype for opt in trainer.optimizers for state in opt.state.values()
                           for value in state.values() if torch.is_tensor(value) and value.is_floating_point()]


ASYNC = ["federation.update=async", "clock.delay=tiers", "clock.delay_low=1", "clock.delay_high=3"]


@pytest.mark.parametrize("model, extra", [("fedgen_fr", []), ("md_gan", []), ("fed_vae", []),
                                          ("fedgen_fr", ASYNC)],     # async: work sent to some devices only
                         ids=["fedgen_fr", "md_gan", "fed_vae", "fedgen_fr-async"])
def test_bf16_mixed_runs_convolutions_in_bf16_and_keeps_fp32_masters(tmp_path, image_root, classifier_cache, model,
                                                                     extra):
    inspect = InspectSteps()
    cfg = load_config(tiny_image_run(image_root, classifier_cache, tmp_path / "run", "trainer.precision=bf16-mixed",
                                      f"model.name={model}", *extra))
    train(cfg, extra_callbacks=[inspect])
    forward = [dtypes for dtypes in inspect.mode.seen]
    assert forward, "no convolution ran in the training step"
    assert all(x == torch.bfloat16 and w == torch.bfloat16 for x, w in forward), set(forward)
    assert set(inspect.parameters.values()) == {torch.float32}
    assert inspect.adam_state and set(inspect.adam_state) == {torch.float32}


def test_fp32_runs_convolutions_in_fp32(tmp_path, image_root, classifier_cache):
    inspect = InspectSteps()
    cfg = load_config(tiny_image_run(image_root, classifier_cache, tmp_path / "run", "trainer.precision=32-true"))
    train(cfg, extra_callbacks=[inspect])
    assert inspect.mode.seen and {x for x, _ in inspect.mode.seen} == {torch.float32}


def test_bad_precision_exits_2_naming_the_key(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "trainer.precision=bf16", f"output_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedgen: ") and "(trainer.precision)" in err[0]
    assert "bf16-mixed" in err[0] and not run_dir.exists()


@pytest.mark.parametrize("on_cpu, cpu_bf16, gan, images, deployed, expected", [
    (True, True, True, True, False, "bf16-mixed"),       # the measured case
    (False, True, True, True, False, "32-true"),         # a GPU: not measured
    (True, False, True, True, False, "32-true"),         # bf16 emulated: slower than fp32
    (True, True, False, True, False, "32-true"),         # the VAEs: not measured
    (True, True, True, False, False, "32-true"),         # vector data (MLPs): not measured
    (True, True, True, True, True, "32-true"),           # Flower: the devices train in fp32
])
def test_auto_precision_is_bf16_only_where_it_was_measured(on_cpu, cpu_bf16, gan, images, deployed, expected):
    from fedgen_pl.train import auto_precision

    assert auto_precision(on_cpu, cpu_bf16, gan, images, deployed) == expected


@pytest.mark.parametrize("amx, avx512_bf16, vendor, pays", [
    (True, True, "GenuineIntel", True),          # Intel Xeon with AMX: make train 1.26x faster in bf16
    (False, True, "AuthenticAMD", True),         # AMD EPYC, AVX512-BF16: 1.23x
    (False, True, "GenuineIntel", False),        # Intel Xeon, AVX512-BF16 without AMX: 0.89x, slower
    (False, True, "", False),                    # vendor unknown: not measured
    (False, False, "AuthenticAMD", False),       # bf16 emulated
])
def test_bf16_pays_only_on_the_cpus_where_it_was_measured_faster(amx, avx512_bf16, vendor, pays):
    from fedgen_pl.cpu import bf16_pays

    assert bf16_pays(amx, avx512_bf16, vendor) is pays


def test_cpu_vendor_reads_this_machine():
    from fedgen_pl.cpu import cpu_vendor

    vendor = cpu_vendor()
    assert isinstance(vendor, str)
    if Path("/proc/cpuinfo").is_file() and "vendor_id" in Path("/proc/cpuinfo").read_text():
        assert vendor and vendor in Path("/proc/cpuinfo").read_text()


@pytest.mark.parametrize("avx512_bf16, amx, named", [(True, True, " (AVX512-BF16, AMX), "),
                                                     (True, False, " (AVX512-BF16), "), (False, False, ", ")])
def test_records_name_the_cpus_bf16_units(monkeypatch, avx512_bf16, amx, named):
    """Two Xeons that both call themselves "Intel(R) Xeon(R) Processor" ran bf16 1.6x apart: the hardware a
    record names says which bf16 units the CPU has, and the choice of bf16 follows the same probes."""
    import torch

    import fedgen_pl.cpu
    from fedgen_pl.cpu import bf16_units
    from fedgen_pl.provenance import hardware

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr("fedgen_pl.cpu.cpuinfo_field", lambda name: {"model name": "CPU X"}.get(name, "GenuineIntel"))
    assert bf16_units() == [u for u, on in (("AVX512-BF16", avx512_bf16), ("AMX", amx)) if on]
    assert hardware().startswith("CPU X" + named)
    monkeypatch.undo()                              # the real cpu_bf16_pays (conftest patches it out)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr("fedgen_pl.cpu.cpu_vendor", lambda: "GenuineIntel")
    assert fedgen_pl.cpu.cpu_bf16_pays() is amx                   # an Intel CPU: bf16 pays with AMX only


@pytest.mark.parametrize("model, cpu_bf16, expected", [("fedgen_fr", True, "bf16-mixed"), ("fed_vae", True, "32-true"),
                                                       ("fedgen_lr", True, "bf16-mixed"), ("fedgen_fr", False, "32-true")])
def test_auto_precision_is_resolved_before_training_and_recorded(tmp_path, image_root, classifier_cache, monkeypatch,
                                                                 model, cpu_bf16, expected):
    from omegaconf import OmegaConf
    from tests.conftest import label_related_overrides

    monkeypatch.setattr("fedgen_pl.cpu.cpu_bf16_pays", lambda: cpu_bf16)
    inspect = InspectSteps()
    run = ([*label_related_overrides(tmp_path, classifier_cache), "federation.global_rounds=2", "federation.local_iters=1",
            f"output_dir={tmp_path / 'run'}"] if model == "fedgen_lr"
           else tiny_image_run(image_root, classifier_cache, tmp_path / "run", f"model.name={model}"))
    cfg = load_config([*run, "trainer.accelerator=cpu"])
    assert cfg.trainer.precision == "auto"                       # the default
    train(cfg, extra_callbacks=[inspect])
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").trainer.precision == expected
    wanted = torch.bfloat16 if expected == "bf16-mixed" else torch.float32
    assert inspect.mode.seen and {x for x, _ in inspect.mode.seen} == {wanted}


def test_auto_precision_keeps_fp32_for_vector_data(tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    from tests.conftest import small_cfg

    monkeypatch.setattr("fedgen_pl.cpu.cpu_bf16_pays", lambda: True)
    train(small_cfg("federation.global_rounds=1", "federation.local_iters=1", "trainer.accelerator=cpu",
                    "trainer.progress_bar=false", f"output_dir={tmp_path / 'run'}"))
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").trainer.precision == "32-true"
