"""FID, KID, IS and label accuracy of generated images, per community and global (docs/method.md §10).

Every metric is a torchmetrics metric over a named feature network:

- ``fid_classifier``, ``kid_classifier``: penultimate features of the scenario's classifier;
- ``is_classifier``: the Inception-Score formula over the classifier's logits (close to the number of
  labels for real, balanced data);
- ``acc``: the share of generated samples the classifier assigns to their conditioned label;
- ``fid_inception``: the TF-FID InceptionV3 (when ``metrics.inception`` is on).

Scopes: ``community_k`` compares samples for community k's labels with k's test data; ``global``
compares with the mixture of the communities' test data in their training proportions. Real sets are
drawn once per run with a fixed generator (``num_samples`` each, the same for every model compared)
and their statistics kept (``reset_real_features=False``); generated samples use the real set's labels
and a fixed latent seed, so evaluations differ only by the generator.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from fedgen_pl.images import normalise_images
from fedgen_pl.metrics.classifier import Classifier

log = logging.getLogger("fedgen")

# (labels, generator, domains) -> images in [-1, 1]; domains = the community index of every sample
SampleFn = Callable[[Tensor, torch.Generator, Tensor], Tensor]


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features, float64, for FID and KID on images."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.feature_dim

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(_as_float(images)).double()


class Precomputed(nn.Module):
    """Identity 'feature network': the evaluator runs the classifier once per batch and hands its
    features (or logits) to FID, KID and IS, instead of each metric running it again."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.double()


_as_float = normalise_images        # the project's one image conversion (fedgen_pl/images.py)


def real_sets(datamodule, num_samples: int, seed: int = 0) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """uint8 real images, global labels and community (domain) indices per scope, ``num_samples`` each."""
    generator = torch.Generator().manual_seed(seed)
    spec = datamodule.spec

    def draw(x: Tensor, y: Tensor, n: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
        # never with replacement: a scope whose test split is smaller than n uses the whole split once
        index = torch.randperm(len(x), generator=generator)[:n]
        return x[index], y[index], torch.full((len(index),), k, dtype=torch.long)

    sets = {f"community_{k}": draw(x, y, num_samples, k) for k, (x, y) in enumerate(datamodule.community_test)}
    counts = torch.zeros(spec.num_communities)
    counts.index_add_(0, torch.tensor(spec.community_of_device), torch.tensor(spec.device_sample_counts, dtype=torch.float))
    share = counts / counts.sum()
    per_community = (share * num_samples).floor().long()
    per_community[: num_samples - int(per_community.sum())] += 1     # exactly num_samples in all
    parts = [draw(x, y, int(n), k) for k, ((x, y), n) in enumerate(zip(datamodule.community_test, per_community))
             if n > 0]
    sets["global"] = tuple(torch.cat([p[i] for p in parts]) for i in range(3))
    return sets


@torch.no_grad()
def class_consistency(classifier: nn.Module, paired: Tensor) -> float:
    """Share of latent vectors whose samples in every domain (``paired``: ``[D, n, C, H, W]``) the
    classifier assigns to one and the same class. For reference (``benchmarks/class_consistency_bounds.py``):
    real MNIST test digits paired with their own inverses score 0.99, with unrelated inverse digits 0.10."""
    predictions = torch.stack([classifier(_as_float(x)).argmax(1) for x in paired])   # [D, n]
    return float((predictions == predictions[:1]).all(0).double().mean())


INCEPTION_CHUNK = 100      # images per Inception call: 299x299 activations of 500 images held about 8 GB


def _inception_update(fid: FrechetInceptionDistance, images: Tensor, real: bool) -> None:
    for start in range(0, len(images), INCEPTION_CHUNK):
        fid.update(images[start:start + INCEPTION_CHUNK], real=real)


REAL_INCEPTION_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def _real_inception_path(images: Tensor, cache: Path | None) -> Path | None:
    """The cache file of the real Inception statistics of exactly these images (keyed by their bytes and
    the Inception weights file)."""
    from fedgen_pl.metrics.inception import inception_weights_file

    if cache is None:
        return None
    digest = hashlib.sha256(images.cpu().contiguous().numpy().tobytes())
    weights = inception_weights_file()
    digest.update(str(weights.stat().st_size if weights else "torchmetrics").encode())
    return cache / f"{digest.hexdigest()[:20]}.pt"


def load_real_inception(fid: FrechetInceptionDistance, images: Tensor, cache: Path | None) -> bool:
    """Fill ``fid``'s real statistics from the cache; False when they are not cached."""
    path = _real_inception_path(images, cache)
    if path is None or not path.is_file():
        return False
    state = torch.load(path, map_location=fid.device, weights_only=True)
    for name in REAL_INCEPTION_STATES:
        setattr(fid, name, state[name].to(fid.device))
    log.info("metrics: real Inception statistics from the cache (%s)", path)
    return True


def save_real_inception(fid: FrechetInceptionDistance, images: Tensor, cache: Path | None) -> None:
    path = _real_inception_path(images, cache)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({name: getattr(fid, name).cpu() for name in REAL_INCEPTION_STATES}, tmp)
    tmp.replace(path)


class GenerationEvaluator:
    """Metrics for every scope; real statistics are computed once, in ``__init__``."""

    def __init__(self, datamodule, classifier: Classifier, inception: nn.Module | None, num_samples: int,
                 kid_subset_size: int, conditional: bool, device: torch.device | str = "cpu",
                 batch_size: int = 500, seed: int = 0, kid_subsets: int = 20,
                 inception_scopes: str = "global", inception_cache: Path | None = None):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.conditional = conditional
        self.seed = seed
        self.consistency_samples = num_samples
        self.num_labels = datamodule.spec.num_labels
        self.classifier = classifier.to(self.device).eval()
        features, logits = Precomputed(classifier.feature_dim), Precomputed(self.num_labels)
        self.inception = inception.to(self.device) if inception is not None else None
        self.real = real_sets(datamodule, num_samples, seed)
        # how many real (and as many generated) samples each scope uses; fewer than asked when its test split is smaller
        self.samples_per_scope = {scope: len(x) for scope, (x, _, _) in self.real.items()}
        for scope, n in self.samples_per_scope.items():
            if n < num_samples:
                log.warning("metrics: %s has only %d test samples; it uses all of them once instead of "
                            "metrics.num_samples=%d (recorded in summary.json)", scope, n, num_samples)
        self.metrics: dict[str, dict[str, object]] = {}
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        for i, (scope, (x, _, _)) in enumerate(self.real.items()):
            log.info("metrics: real statistics %d/%d (%s, %d images)", i + 1, len(self.real), scope, len(x))
            metrics = {
                "fid_classifier": FrechetInceptionDistance(feature=features, reset_real_features=False),
                "kid_classifier": KernelInceptionDistance(feature=features, reset_real_features=False,
                                                          subset_size=min(kid_subset_size, len(x)), subsets=kid_subsets),
                "is_classifier": InceptionScore(feature=logits, splits=10),
                "acc": MulticlassAccuracy(num_classes=self.num_labels, average="micro"),
            }
            inception_here = self.inception is not None and (inception_scopes == "all" or scope == "global")
            if inception_here:
                metrics["fid_inception"] = FrechetInceptionDistance(feature=self.inception, reset_real_features=False)
            metrics = {name: m.to(self.device) for name, m in metrics.items()}
            cached = inception_here and load_real_inception(metrics["fid_inception"], x, inception_cache)
            for start in range(0, len(x), batch_size):
                batch = _as_float(x[start:start + batch_size].to(self.device))
                h = self.classifier.features(batch)
                metrics["fid_classifier"].update(h, real=True)
                metrics["kid_classifier"].update(h, real=True)
                if inception_here and not cached:
                    _inception_update(metrics["fid_inception"], batch, real=True)
            if inception_here and not cached:
                save_real_inception(metrics["fid_inception"], x, inception_cache)
            self.metrics[scope] = metrics

    def evaluate_model(self, model) -> dict[str, float]:
        """Every metric of ``model``'s global generator; ``global/class_consistency`` too when the model
        draws paired samples (the label-related scenario). With an EMA of the global model
        (``model.ema_decay``) the same metrics of the EMA follow, as ``ema/<scope>/<metric>``."""
        results = self._evaluate_generator(model)
        if getattr(model, "ema", None) is not None:
            with model.ema_weights():
                results.update({f"ema/{name}": value for name, value in self._evaluate_generator(model).items()})
        return results

    def _evaluate_generator(self, model) -> dict[str, float]:
        results = self.evaluate(model.sample_global)
        if hasattr(model, "paired_samples"):
            generator = torch.Generator(device=self.device).manual_seed(self.seed + 2)
            results["global/class_consistency"] = self.class_consistency(
                model.paired_samples(self.consistency_samples, generator))
        return results

    def class_consistency(self, paired: Tensor) -> float:
        return class_consistency(self.classifier, paired)

    @torch.no_grad()
    def evaluate(self, sample: SampleFn, scopes: list[str] | None = None) -> dict[str, float]:
        """Metric values as ``{"<scope>/<metric>": value}`` for the generator behind ``sample``."""
        results: dict[str, float] = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed)     # IS and KID draw random splits and subsets
            for scope in scopes or list(self.metrics):
                results.update(self._evaluate_scope(scope, sample))
        return results

    def _evaluate_scope(self, scope: str, sample: SampleFn) -> dict[str, float]:
        metrics = self.metrics[scope]
        for metric in metrics.values():
            metric.reset()      # fake statistics only: the real ones are kept
        _, labels, domains = self.real[scope]
        generator = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        for start in range(0, len(labels), self.batch_size):
            y = labels[start:start + self.batch_size].to(self.device)
            d = domains[start:start + self.batch_size].to(self.device)
            fake = sample(y, generator, d).float().clamp(-1, 1)
            h = self.classifier.features(fake)
            logits = self.classifier.head(h)
            metrics["fid_classifier"].update(h, real=False)
            metrics["kid_classifier"].update(h, real=False)
            metrics["is_classifier"].update(logits)
            if self.conditional:
                metrics["acc"].update(logits.argmax(1), y)
            if "fid_inception" in metrics:
                _inception_update(metrics["fid_inception"], fake, real=False)
        out = {
            f"{scope}/fid_classifier": float(metrics["fid_classifier"].compute()),
            f"{scope}/kid_classifier": float(metrics["kid_classifier"].compute()[0]),
            f"{scope}/is_classifier": float(metrics["is_classifier"].compute()[0]),
        }
        if self.conditional:
            out[f"{scope}/acc"] = float(metrics["acc"].compute())
        if "fid_inception" in metrics:
            out[f"{scope}/fid_inception"] = float(metrics["fid_inception"].compute())
        return out
