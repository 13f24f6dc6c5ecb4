"""The metrics classifier: its record, its cache and its cache key."""

import pytest
import torch

from fedgen_pl.metrics.classifier import load_or_train
from tests.conftest import needs_real_data


@needs_real_data
def test_classifier_record_and_cache(mnist_fmnist_scenario, classifier_cache, monkeypatch):
    import fedgen_pl.metrics.classifier as classifier_module

    dm, classifier, record = mnist_fmnist_scenario
    assert set(record["test_accuracy_per_dataset"]) == {"mnist", "fashion_mnist"}
    assert record["train_samples"] == 6000 and record["test_accuracy"] > 0.8
    # the same data and settings load the cached classifier: the same weights and record, no training
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was trained again")
    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    again, record_again = load_or_train(dm, classifier_cache, train_samples=6000, epochs=2)
    assert record_again == record
    for name, tensor in classifier.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_classifier_cache_key_covers_epochs_and_data(tmp_path):
    from fedgen_pl.metrics.classifier import cache_key

    base = cache_key([("mnist", 0)], {"mnist": "aa"}, (1, 28, 28), None, 2)
    assert cache_key([("mnist", 0)], {"mnist": "aa"}, (1, 28, 28), None, 7) != base
    assert cache_key([("mnist", 0)], {"mnist": "bb"}, (1, 28, 28), None, 2) != base
    assert cache_key([("mnist", 0)], {"mnist": "aa"}, (1, 28, 28), 500, 2) != base


def test_save_to_cache_writes_whole_files_and_leaves_nothing_when_the_write_fails(tmp_path, monkeypatch):
    from fedgen_pl.metrics import classifier

    path = tmp_path / "cache" / "entry.pt"
    classifier.save_to_cache({"a": torch.ones(3)}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["entry.pt"]              # no temporary file left

    def disk_full(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(classifier.torch, "save", disk_full)
    with pytest.raises(OSError):
        classifier.save_to_cache({"a": torch.zeros(3)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["entry.pt"]              # the partial write is gone
    assert torch.equal(torch.load(path)["a"], torch.ones(3))                    # the old entry is intact
