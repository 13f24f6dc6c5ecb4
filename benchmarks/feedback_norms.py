"""How large a device's per-sample feedback is, to choose ``privacy.clip`` (docs/method.md §15).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feedback_norms.py [--model md_gan] [--rounds 20]

Trains ``experiment=prism_mnist`` for ``--rounds`` rounds with noise too small to matter
(``privacy.noise_multiplier=1e-9``, so the sanitiser runs) and prints, at the first, middle and last local
iteration, the 10%, 50% and 90% quantiles of the l2 norm of each per-sample feedback as the sanitiser clips it
(the gradient of the batch sum at each generated sample, before clipping).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fedgen_pl.gan as gan  # noqa: E402
from fedgen_pl import privacy  # noqa: E402
from fedgen_pl.cli import main as fedgen  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="md_gan")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    norms = []

    def measured(device_loss, feedback, *rest):
        norms.append((feedback.float() * feedback.shape[1]).flatten(2).norm(dim=2).flatten())
        return privacy.sanitize_feedback(device_loss, feedback, *rest)

    gan.sanitize_feedback = measured
    out = Path(tempfile.mkdtemp(prefix="feedback-norms-")) / "run"
    fedgen(["train", "experiment=prism_mnist", f"model.name={args.model}", f"federation.global_rounds={args.rounds}",
            "metrics.eval_every=1000", "metrics.num_samples=100", "privacy.noise_multiplier=1e-9",
            "trainer.progress_bar=false", f"output_dir={out}"])
    quantiles = torch.tensor([0.1, 0.5, 0.9])
    for i in (0, len(norms) // 2, len(norms) - 1):
        q = torch.quantile(norms[i], quantiles).tolist()
        print(f"iteration {i + 1}: per-sample feedback norm 10% {q[0]:.2f}, median {q[1]:.2f}, 90% {q[2]:.2f}")


if __name__ == "__main__":
    main()
