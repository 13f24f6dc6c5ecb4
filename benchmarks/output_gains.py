"""Where a label-related generator stands on its domains' output signs (the blank phase, docs/results/table2.md).

Loads each run's last checkpoint and prints, for the global generator:

- the output layer's per-domain gain (and shift, when the run has one), times ``film_output_gain_scale``:
  inverse MNIST is MNIST negated, so one shared drawing serves both domains only when the two gains
  have opposite signs;
- per domain, over 256 latent vectors (seed 0): the mean pixel, the pixel standard deviation across z
  (near 0: every z draws the same image, a blank generator) and the mean top-left corner pixel (the
  background: about -1 for MNIST, +1 for inverse MNIST, in tanh space).

    .venv/bin/python benchmarks/output_gains.py runs/<run dir> [runs/<run dir> ...]
"""

import sys

import torch

from fedgen_pl.evaluate import load_model


@torch.no_grad()
def describe(run_dir: str, n: int = 256) -> str:
    model, path = load_model(run_dir, torch.device("cpu"))
    generator = model.global_generator
    if generator.conditioning == "concat" or "2" not in generator.gains:
        return f"{run_dir}: no per-domain output gain (domain_conditioning={generator.conditioning})"
    gains = generator.gains["2"].mean(1) * generator.output_gain_scale
    parts = [str(path),
             "output gain per domain " + " / ".join(f"{g:+.3f}" for g in gains.tolist())]
    if "2" in generator.shifts:
        parts.append("shift " + " / ".join(f"{s:+.3f}" for s in generator.shifts["2"].mean(1).tolist()))
    z = torch.randn(n, model.hparams.config["model"]["latent_dim"], generator=torch.Generator().manual_seed(0))
    for domain in range(generator.num_labels):
        x = generator(z, torch.full((n,), domain, dtype=torch.long))
        parts.append(f"domain {domain}: mean {x.mean():+.3f}, std over z {x.std(0).mean():.3f}, "
                     f"corner {x[:, 0, 0, 0].mean():+.3f}")
    return "; ".join(parts)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for run in sys.argv[1:]:
        print(describe(run))
