"""FID, KID, IS and label accuracy of generated images, per community and global (docs/method.md §10).

Every metric is a torchmetrics metric over a named feature network:

- ``fid_classifier``, ``kid_classifier``: penultimate features of the scenario's classifier;
- ``is_classifier``: the Inception-Score formula over the classifier's logits (close to the number of
  labels for real, balanced data);
- ``acc``: the share of generated samples the classifier assigns to their conditioned label;
- ``fid_inception``, ``kid_inception``: the TF-FID InceptionV3 (when ``metrics.inception`` is on), on
  ``metrics.inception_samples`` images of the ``metrics.inception_reference`` split (``reference_set``).

Scopes: ``community_k`` compares samples for community k's labels with k's test data; ``global``
compares with the mixture of the communities' test data in their training proportions. Real sets are
drawn once per run with a fixed generator (``num_samples`` each, the same for every model compared)
and their statistics kept (``reset_real_features=False``); generated samples use the real set's labels
and a fixed latent seed, so evaluations differ only by the generator.
"""

from __future__ import annotations

import hashlib
import logging
import time
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
from fedgen_pl.metrics.classifier import Classifier, save_to_cache

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


def reference_set(datamodule, num_samples: int, split: str = "test", seed: int = 0,
                  communities: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The real images behind the Inception statistics (uint8), their global labels and domains: each
    distinct dataset's ``split`` (``test`` or ``train``), restricted to the classes its communities hold,
    mixed in the communities' training proportions; ``num_samples`` in all, drawn without replacement
    (all of a dataset's images once where it has fewer). Two communities drawing on one dataset share
    its images, so prism_mnist and prism_mnist_communities have the same 10,000 test images."""
    spec = datamodule.spec
    communities = list(range(spec.num_communities)) if communities is None else communities
    counts = torch.zeros(spec.num_communities).index_add_(0, torch.tensor(spec.community_of_device),
                                                          torch.tensor(spec.device_sample_counts, dtype=torch.float))
    datasets: dict[str, dict] = {}
    for k in communities:
        name = datamodule.community_data[k]
        entry = datasets.setdefault(name, {"classes": set(), "weight": 0.0, "domain": k})
        entry["classes"].update(datamodule.community_classes[k])
        entry["weight"] += float(counts[k])
    total = sum(entry["weight"] for entry in datasets.values())
    wanted = [int(num_samples * entry["weight"] // total) for entry in datasets.values()]
    wanted[0] += num_samples - sum(wanted)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for (name, entry), n in zip(datasets.items(), wanted):
        source = datamodule.sources[name]
        x, y = (source.test_x, source.test_y) if split == "test" else (source.train_x, source.train_y)
        keep = torch.isin(y, torch.tensor(sorted(entry["classes"]))).nonzero().flatten()
        index = keep[torch.randperm(len(keep), generator=generator)[:n]]
        parts.append((x[index], datamodule.lookups[name][y[index]], torch.full((len(index),), entry["domain"])))
    return tuple(torch.cat([part[i] for part in parts]) for i in range(3))


@torch.no_grad()
def class_consistency(classifier: nn.Module, paired: Tensor) -> float:
    """Share of latent vectors whose samples in every domain (``paired``: ``[D, n, C, H, W]``) the
    classifier assigns to one and the same class. For reference (``benchmarks/class_consistency_bounds.py``):
    real MNIST test digits paired with their own inverses score 0.99, with unrelated inverse digits 0.10."""
    predictions = torch.stack([classifier(_as_float(x)).argmax(1) for x in paired])   # [D, n]
    return float((predictions == predictions[:1]).all(0).double().mean())


# Images per Inception call. On CPU so few that the largest activation (64 x 147 x 147 per image: 2.8 MB in
# bf16, 5.5 MB in fp32) stays under glibc's 32 MB mmap ceiling: a larger buffer is mmapped afresh and
# zero-filled by the kernel at every call: 46% system time at 100 images (benchmarks/RESULTS.md).
# On a GPU 100 (299x299 activations of 500 images held about 8 GB).
INCEPTION_CHUNK = {"cpu": 4, "cuda": 100}


@torch.no_grad()
def inception_features(network: nn.Module, images: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """2048-d features (float64) of images (uint8 or float in [-1, 1]), ``INCEPTION_CHUNK`` at a time."""
    chunk = INCEPTION_CHUNK.get(torch.device(device).type, INCEPTION_CHUNK["cuda"])
    return torch.cat([network(images[start:start + chunk].to(device)) for start in range(0, len(images), chunk)])


def _real_inception_path(images: Tensor, cache: Path | None, tag: str) -> Path | None:
    """The cache file of the real Inception features of exactly these images (keyed by their bytes, the
    Inception weights file and the network's ``cache_tag``: the precision and layout it ran at)."""
    from fedgen_pl.metrics.inception import inception_weights_file

    if cache is None:
        return None
    digest = hashlib.sha256(images.cpu().contiguous().numpy().tobytes())
    weights = inception_weights_file()
    digest.update(str(weights.stat().st_size if weights else "torchmetrics").encode())
    digest.update(tag.encode())
    return cache / f"features-{digest.hexdigest()[:20]}.pt"


def real_inception_features(network: nn.Module, images: Tensor, cache: Path | None,
                            device: torch.device | str = "cpu") -> Tensor:
    """The real images' Inception features, from the cache or computed and cached (stored as float32:
    the network's own output type, so nothing is lost)."""
    path = _real_inception_path(images, cache, getattr(network, "cache_tag", "32"))
    if path is not None and path.is_file():
        log.info("metrics: real Inception features from the cache (%s)", path)
        return torch.load(path, map_location=device, weights_only=True).double()
    started = time.time()
    features = inception_features(network, images, device)
    log.info("metrics: real Inception features of %d images in %.0f s", len(images), time.time() - started)
    if path is not None:
        save_to_cache(features.float().cpu(), path)
    return features


class SavedFeatures:
    """The generated images' Inception features of one evaluation, kept on disk batch by batch, so that a run
    cut off in its last evaluation (2 x 10,000 images: about an hour on a CPU) resumes it where it stopped
    instead of from its first image. A batch's file is read back only for the same generator: the key is a
    digest of the first batch of images (the generator's weights and latent seed), with the scope, the
    number of images and the network's ``cache_tag``. The run removes the directory when it finishes.
    Features are stored as float32, the networks' own output type, so a batch read back equals one computed."""

    def __init__(self, directory: Path, scope: str, images: int, first_batch: Tensor, tag: str):
        digest = hashlib.sha256(first_batch.detach().cpu().contiguous().numpy().tobytes())
        digest.update(f"{scope}|{images}|{tag}".encode())
        self.directory, self.key = Path(directory), digest.hexdigest()[:20]

    def get(self, index: int, compute: Callable[[], Tensor], device: torch.device) -> Tensor:
        """Batch ``index``'s features: read back when stored, else ``compute()``d and stored."""
        path = self.directory / f"{self.key}-{index:05d}.pt"
        if path.is_file():
            return torch.load(path, map_location=device, weights_only=True).double()
        features = compute()
        save_to_cache(features.float().cpu(), path)
        return features


class GenerationEvaluator:
    """Metrics for every scope; real statistics are computed once, in ``__init__``.

    The classifier metrics use ``num_samples`` real and generated samples per scope. The Inception
    metrics (``fid_inception``, ``kid_inception``; with an Inception network) use their own real set per
    scope, ``reference_set(inception_samples, inception_reference)``, and as many generated samples; its
    features are cached on disk. They are computed when ``evaluate(..., inception=True)`` asks (the
    training callback asks at the last evaluation only: 10,000 images cost minutes on a CPU)."""

    def __init__(self, datamodule, classifier: Classifier, inception: nn.Module | None, num_samples: int,
                 kid_subset_size: int, conditional: bool, device: torch.device | str = "cpu",
                 batch_size: int = 500, seed: int = 0, kid_subsets: int = 20,
                 inception_scopes: str = "global", inception_cache: Path | None = None,
                 inception_samples: int | None = None, inception_reference: str = "test", iw_samples: int = 0,
                 anomaly_data: str | None = None, anomaly_classes: list[int] = (),
                 inception_progress: Path | None = None):
        self.device = torch.device(device)
        self.inception_progress = inception_progress     # where SavedFeatures keeps an evaluation's batches
        self.iw_samples = iw_samples
        self.anomaly = None         # VAEs: (normal images, anomalous images, label prior) of metrics/anomaly.py
        if anomaly_data is not None:
            from fedgen_pl.metrics.anomaly import held_out_images

            anomalous = held_out_images(datamodule, anomaly_data, list(anomaly_classes), num_samples, seed)
            normal, _, _ = reference_set(datamodule, num_samples, "test", seed)
            prior = torch.bincount(datamodule.train_y.cpu(), minlength=datamodule.spec.num_labels).float()
            self.anomaly = (_as_float(normal.to(self.device)), _as_float(anomalous.to(self.device)), prior)
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
            if kid_subset_size > len(x):
                log.warning("metrics: %s has %d images, so its KID subsets have %d images instead of "
                            "metrics.kid_subset_size=%d (recorded in summary.json)", scope, len(x), len(x),
                            kid_subset_size)
                self.samples_per_scope[f"{scope}/kid_subset"] = len(x)
            metrics = {
                "fid_classifier": FrechetInceptionDistance(feature=features, reset_real_features=False),
                "kid_classifier": KernelInceptionDistance(feature=features, reset_real_features=False,
                                                          subset_size=min(kid_subset_size, len(x)), subsets=kid_subsets),
                "is_classifier": InceptionScore(feature=logits, splits=10),
                "acc": MulticlassAccuracy(num_classes=self.num_labels, average="micro"),
            }
            metrics = {name: m.to(self.device) for name, m in metrics.items()}
            for start in range(0, len(x), batch_size):
                h = self.classifier.features(_as_float(x[start:start + batch_size].to(self.device)))
                metrics["fid_classifier"].update(h, real=True)
                metrics["kid_classifier"].update(h, real=True)
            self.metrics[scope] = metrics

        # Inception: per scope, its own real set and its features (cached)
        self.inception_real: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.inception_metrics: dict[str, dict[str, object]] = {}
        if self.inception is not None:
            n, width = inception_samples or num_samples, self.inception.num_features
            scopes = {"global": None} if inception_scopes == "global" else \
                {"global": None, **{f"community_{k}": [k] for k in range(datamodule.spec.num_communities)}}
            for scope, members in scopes.items():
                x, y, d = reference_set(datamodule, n, inception_reference, seed, members)
                if len(x) < n:
                    log.warning("metrics: the %s split of %s has %d images; fid_inception uses all of them once "
                                "instead of metrics.inception_samples=%d (recorded in summary.json)",
                                inception_reference, scope, len(x), n)
                if kid_subset_size > len(x):
                    log.warning("metrics: kid_inception of %s uses subsets of %d images instead of "
                                "metrics.kid_subset_size=%d (recorded in summary.json)", scope, len(x), kid_subset_size)
                    self.samples_per_scope[f"{scope}/inception_kid_subset"] = len(x)
                real = real_inception_features(self.inception, x, inception_cache, self.device)
                fid = FrechetInceptionDistance(feature=Precomputed(width), reset_real_features=False).to(self.device)
                kid = KernelInceptionDistance(feature=Precomputed(width), reset_real_features=False,
                                              subset_size=min(kid_subset_size, len(x)), subsets=kid_subsets).to(self.device)
                fid.update(real, real=True)
                kid.update(real, real=True)
                self.inception_real[scope] = (x, y, d)
                self.inception_metrics[scope] = {"fid_inception": fid, "kid_inception": kid}
                self.samples_per_scope[f"{scope}/inception"] = len(x)

    def evaluate_model(self, model, inception: bool = True) -> dict[str, float]:
        """Every metric of ``model``'s global generator; ``global/class_consistency`` too when the model
        draws paired samples (the label-related scenario), the test-set bounds when it is a VAE
        (``FedVAE.likelihood_metrics``, and the anomaly AUROC when configured); ``inception=False`` skips the
        costly ones (Inception, the IW bound, the anomaly scores).
        With an EMA of the global model (``model.ema_decay``) the global scope's metrics of the EMA follow,
        as ``ema/global/<metric>`` (the global scope only: the tables read it, and evaluation stays cheap)."""
        results = self._evaluate_generator(model, inception)
        if hasattr(model, "likelihood_metrics"):      # a VAE: its test-set bounds on every scope's real images
            sets = {scope: (_as_float(x.to(self.device)), y.to(self.device)) for scope, (x, y, _) in self.real.items()}
            results.update(model.likelihood_metrics(sets, self.iw_samples if inception else 0, self.seed))
            if self.anomaly is not None and inception:
                from fedgen_pl.metrics.anomaly import anomaly_metrics

                results.update(anomaly_metrics(model, *self.anomaly, seed=self.seed))
        if getattr(model, "has_ema", False):
            with model.ema_weights():
                results.update({f"ema/{name}": value
                                for name, value in self._evaluate_generator(model, inception, ["global"]).items()})
        return results

    def _evaluate_generator(self, model, inception: bool, scopes: list[str] | None = None) -> dict[str, float]:
        results = self.evaluate(model.sample_global, scopes, inception=inception)
        if model.recipe.conditioning == "domain":
            generator = torch.Generator(device=self.device).manual_seed(self.seed + 2)
            results["global/class_consistency"] = self.class_consistency(
                model.paired_samples(self.consistency_samples, generator))
        return results

    def class_consistency(self, paired: Tensor) -> float:
        return class_consistency(self.classifier, paired)

    @torch.no_grad()
    def evaluate(self, sample: SampleFn, scopes: list[str] | None = None, inception: bool = True) -> dict[str, float]:
        """Metric values as ``{"<scope>/<metric>": value}`` for the generator behind ``sample``."""
        results: dict[str, float] = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed)     # IS and KID draw random splits and subsets
            for scope in scopes or list(self.metrics):
                results.update(self._evaluate_scope(scope, sample))
                if inception and scope in self.inception_metrics:
                    results.update(self._evaluate_inception(scope, sample))
        return results

    def _generated(self, sample: SampleFn, labels: Tensor, domains: Tensor, seed: int):
        """Batches of generated images for these labels and domains, from a fixed latent seed."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for start in range(0, len(labels), self.batch_size):
            y = labels[start:start + self.batch_size].to(self.device)
            d = domains[start:start + self.batch_size].to(self.device)
            yield y, sample(y, generator, d).float().clamp(-1, 1)

    def _evaluate_scope(self, scope: str, sample: SampleFn) -> dict[str, float]:
        metrics = self.metrics[scope]
        for metric in metrics.values():
            metric.reset()      # fake statistics only: the real ones are kept
        _, labels, domains = self.real[scope]
        for y, fake in self._generated(sample, labels, domains, self.seed + 1):
            h = self.classifier.features(fake)
            logits = self.classifier.head(h)
            metrics["fid_classifier"].update(h, real=False)
            metrics["kid_classifier"].update(h, real=False)
            metrics["is_classifier"].update(logits)
            if self.conditional:
                metrics["acc"].update(logits.argmax(1), y)
        out = {
            f"{scope}/fid_classifier": float(metrics["fid_classifier"].compute()),
            f"{scope}/kid_classifier": float(metrics["kid_classifier"].compute()[0]),
            f"{scope}/is_classifier": float(metrics["is_classifier"].compute()[0]),
        }
        if self.conditional:
            out[f"{scope}/acc"] = float(metrics["acc"].compute())
        return out

    def _evaluate_inception(self, scope: str, sample: SampleFn) -> dict[str, float]:
        fid, kid = self.inception_metrics[scope]["fid_inception"], self.inception_metrics[scope]["kid_inception"]
        fid.reset()
        kid.reset()
        _, labels, domains = self.inception_real[scope]
        saved = None
        for index, (_, fake) in enumerate(self._generated(sample, labels, domains, self.seed + 3)):
            if self.inception_progress is None:
                h = inception_features(self.inception, fake, self.device)
            else:           # every batch is still generated: the latent stream stays that of a whole evaluation
                saved = saved or SavedFeatures(self.inception_progress, scope, len(labels), fake,
                                               getattr(self.inception, "cache_tag", "32"))
                h = saved.get(index, lambda: inception_features(self.inception, fake, self.device), self.device)
            fid.update(h, real=False)
            kid.update(h, real=False)
        return {f"{scope}/fid_inception": float(fid.compute()), f"{scope}/kid_inception": float(kid.compute()[0])}
