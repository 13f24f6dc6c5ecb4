"""The scenario's classifier over its global label space (docs/method.md §10).

One small CNN per scenario, trained once on the real training split of every community's dataset
(all classes the federation uses, labelled in the global label space) and cached on disk, keyed by
the datasets, the label space and this file's ``CODE_VERSION``. Its penultimate features give the
classifier FID and KID, its logits the Inception-Score-style score and ``acc``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedgen_pl.images import normalise_images

log = logging.getLogger("fedgen")

CODE_VERSION = 1        # bump when the network or its training changes: old caches are not reused


class Classifier(nn.Module):
    """conv-pool-conv-pool-fc; ``features`` is the 128-d penultimate layer."""

    feature_dim = 128

    def __init__(self, image_shape: tuple[int, int, int], num_labels: int):
        super().__init__()
        c, h, w = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, num_labels)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def cache_key(label_classes: list, data_fingerprints: dict[str, str], image_shape, train_samples: int | None,
              epochs: int) -> str:
    """Everything that changes the classifier: its label space, the data of every dataset (a digest of the
    bytes, so the source it came from and its conversion count), the image shape, the training samples,
    the epochs and the code version."""
    payload = json.dumps({"labels": [list(p) for p in label_classes], "image_shape": list(image_shape),
                          "datasets": data_fingerprints, "train_samples": train_samples, "epochs": epochs,
                          "version": CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def data_fingerprint(source) -> str:
    digest = hashlib.sha256()
    for tensor in (source.train_x, source.train_y, source.test_x, source.test_y):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


_normalise = normalise_images       # the project's one image conversion (fedgen_pl/images.py)


@torch.no_grad()
def correct_count(model: Classifier, x: Tensor, y: Tensor, batch_size: int = 1000) -> int:
    """How many of the images x the classifier labels y."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(_normalise(x[start:start + batch_size]))
        correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    return correct


def accuracy(model: Classifier, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    return correct_count(model, x, y, batch_size) / max(1, len(x))


def train_classifier(train_x: Tensor, train_y: Tensor, num_labels: int, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, progress: bool = True) -> Classifier:
    """Adam on the real training images (uint8 ``[n, C, H, W]``), seeded."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(tuple(train_x.shape[1:]), num_labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (-(-len(train_x) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr * 3, total_steps=steps)
    started, done = time.time(), 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(_normalise(train_x[index])), train_y[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            done += 1
            if progress and (done % 200 == 0 or done == steps):
                log.info("classifier: epoch %d/%d, step %d/%d, loss %.3f, %.0f s", epoch + 1, epochs, done, steps,
                         float(loss.detach()), time.time() - started)
    return model.eval()


def load_or_train(datamodule, cache_dir: Path, train_samples: int | None = None, epochs: int = 3) -> tuple[Classifier, dict]:
    """The cached classifier for ``datamodule``'s scenario, training and caching it when absent.

    Returns the model (eval mode, frozen) and its record: test accuracy overall and per dataset."""
    spec = datamodule.spec
    fingerprints = {name: data_fingerprint(source) for name, source in datamodule.sources.items()}
    key = cache_key(spec.label_classes, fingerprints, spec.data_shape, train_samples, epochs)
    path = Path(cache_dir).expanduser() / "classifiers" / f"{key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = Classifier(spec.data_shape, spec.num_labels)
            model.load_state_dict(blob["state_dict"])
            log.info("classifier: loaded from cache %s (test accuracy %.4f)", path, blob["record"]["test_accuracy"])
            return _freeze(model), blob["record"]
        except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("classifier: cache %s unreadable (%s); retraining", path, err)

    train_x, train_y, test_sets = datamodule.labelled_splits()
    if train_samples is not None and train_samples < len(train_x):
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:train_samples]
        train_x, train_y = train_x[keep], train_y[keep]
    log.info("classifier: training on %d real images, %d labels (cached afterwards at %s)", len(train_x),
             spec.num_labels, path)
    started = time.time()
    model = train_classifier(train_x, train_y, spec.num_labels, epochs=epochs)
    correct = {name: correct_count(model, x, y) for name, (x, y) in test_sets.items()}     # each image once
    sizes = {name: len(x) for name, (x, _) in test_sets.items()}
    per_dataset = {name: correct[name] / max(1, sizes[name]) for name in test_sets}
    overall = sum(correct.values()) / max(1, sum(sizes.values()))
    record = {"test_accuracy": overall, "test_accuracy_per_dataset": per_dataset,
              "train_samples": len(train_x), "epochs": epochs, "label_names": spec.label_names,
              "code_version": CODE_VERSION, "train_seconds": round(time.time() - started, 1), "key": key}
    save_to_cache({"state_dict": model.state_dict(), "record": record}, path)
    log.info("classifier: test accuracy %.4f %s", record["test_accuracy"], per_dataset)
    return _freeze(model), record


def save_to_cache(obj, path: Path) -> None:
    """``torch.save`` into a cache shared by several runs (a sweep's agents, test workers): each process writes
    its own temporary file and renames it into place, so a reader sees a whole file or none; a failed write
    (a full disk) leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _freeze(model: Classifier) -> Classifier:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
