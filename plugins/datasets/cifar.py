"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), python version: data sets ``cifar10`` and ``cifar100``.

Format (https://www.cs.toronto.edu/~kriz/cifar.html, "Dataset layout", python version): each
batch file is a Python 2 ``cPickle`` of a dict. ``data`` is a uint8 numpy array N x 3072: each
row one 32 x 32 colour image, the 1024 red values first, then green, then blue, each channel
row-major (the first 32 values are the image's top row). So ``data.reshape(N, 3, 32, 32)`` is
N x C x H x W with pixel (0, 0) top-left, no transpose. Labels are a list of N ints:
``labels`` (0..9) in CIFAR-10's ``data_batch_1`` .. ``data_batch_5`` (10,000 images each) and
``test_batch`` (10,000); ``fine_labels`` (0..99) in CIFAR-100's ``train`` (50,000) and ``test``
(10,000), which also hold ``coarse_labels`` (20 superclasses, not used). The files are read with
``encoding="latin1"`` (Python 2 byte strings: the array's raw bytes, and the dict keys, which
therefore load as str; bytes keys are accepted too), through an unpickler that only admits the
few globals a numpy array needs (a pickle can run arbitrary code otherwise). Anything else (not
a pickle, missing keys, wrong dtype or width, label count or range) is a UserError naming the
file.

Parameters:

- ``whitening`` (default ``"zscore"``): the CCLP paper whitens every data set ("Following common
  practice we whiten the datasets", §5); the authors' configuration uses ``zscoreDb``, a z-score
  with data-set statistics. ``"zscore"``: per-channel mean/std of the training images (0-1
  scale, population std), applied on the device to every batch, as every other data set here.
  ``"none"``: mean 0, std 1, the network sees pixels in [0, 1]. ``"zca"``: ZCA whitening fitted
  on the training images only (:func:`fit_zca`); it needs the core's per-batch transform hook
  (``ImageDataset.transform``), and without it loading says so (UserError). All statistics come
  from the full training set (also when a run holds some of it out with ``n_validation``: they
  use no labels).
- ``zca_epsilon`` (default 0.1): ZCA's regulariser, relative to the mean eigenvalue of the
  covariance (the average per-pixel variance): eigenvalues lambda are whitened by
  1 / sqrt(lambda + zca_epsilon * mean(lambda)). 0.1 is pylearn2's ``filter_bias`` of 0.1 used
  after global contrast normalisation, where the average per-pixel variance is about 1. Only
  used with ``whitening = "zca"``.

Where the files are looked for: ``DATA_DIR/cifar10/cifar-10-batches-py/``, then
``DATA_DIR/cifar10/`` (``cifar100``: ``cifar-100-python/``), see ``files.py``. ``ssl-bench data
download cifar10`` fetches the archive (163 MB; CIFAR-100 161 MB), md5-verified, extracts the
batches directory, verifies each file's md5 and deletes the archive. URLs and md5 sums are
torchvision's (``torchvision/datasets/cifar.py``: ``CIFAR10``/``CIFAR100`` ``url``, ``tgz_md5``,
``train_list``, ``test_list``, ``meta``).

Data set: 3 x 32 x 32 uint8 images, 50,000 train / 10,000 test, 10 or 100 classes. No standard
augmentation is defined (the CCLP paper uses none).
"""
from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.datasets import files

SIDE, CHANNELS = 32, 3
ROW = CHANNELS * SIDE * SIDE  # 3072 bytes per image


@dataclasses.dataclass(frozen=True)
class Source:
    url: str
    archive_md5: str
    folder: str  # the directory inside the archive
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    num_classes: int
    #: md5 of every extracted file (torchvision's train_list, test_list, meta)
    md5: dict
    description: str


SOURCES = {
    "cifar10": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        label_key="labels",
        num_classes=10,
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        description="CIFAR-10 (Krizhevsky 2009)",
    ),
    "cifar100": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test="test",
        meta="meta",
        label_key="fine_labels",
        num_classes=100,
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        description="CIFAR-100 (Krizhevsky 2009), fine labels",
    ),
}

Whitening = Literal["zscore", "none", "zca"]


# --------------------------------------------------------------------------- reading
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of a CIFAR file")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file as (uint8 N x 3 x 32 x 32 images, int64 labels); UserError if malformed."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, UnicodeDecodeError, OverflowError) as exc:
        raise UserError(f"{path}: cannot read as a CIFAR python batch ({type(exc).__name__}: {exc}); delete it "
                        f"and download it again") from exc
    if not isinstance(entry, dict):
        raise UserError(f"{path}: expected a pickled dict, found {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise UserError(f"{path}: expected keys 'data' and {label_key!r}, found {sorted(map(str, entry))}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be a uint8 array N x {ROW} (3 x 32 x 32 per row), got {described}")
    labels = np.asarray(entry[label_key])
    if labels.ndim != 1 or len(labels) != len(data) or (len(labels) and labels.dtype.kind not in "iu"):
        raise UserError(f"{path}: {len(data)} images but {label_key!r} is {labels.dtype} {labels.shape}, "
                        f"not {len(data)} integer labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels must be 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return data.reshape(len(data), CHANNELS, SIDE, SIDE), labels.astype(np.int64)


def _dirs(name: str, data_dir) -> list[Path]:
    base = files.search_dirs(name, data_dir)[0]
    return [base / SOURCES[name].folder, base]


# --------------------------------------------------------------------------- whitening
class ZCAWhitening:
    """ZCA whitening of float batches N x C x H x W on the 0-1 scale, on any device:
    ``((x.flatten(1) - mean) @ matrix).view_as(x)``. ``matrix`` is symmetric, so this is
    ``W (x - mean)`` per image. The tensors are copied to a batch's device (and dtype) once."""

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, shape: tuple[int, ...], epsilon: float):
        self.mean, self.matrix, self.shape, self.epsilon = mean, matrix, tuple(shape), epsilon
        self._placed: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"ZCA fitted on {self.shape} images, got a batch of {tuple(x.shape[1:])}")
        key = (x.device, x.dtype)
        if key not in self._placed:
            self._placed[key] = (self.mean.to(x.device, x.dtype), self.matrix.to(x.device, x.dtype))
        mean, matrix = self._placed[key]
        return ((x.reshape(len(x), -1) - mean) @ matrix).reshape(x.shape)

    def __repr__(self) -> str:
        return f"ZCAWhitening(shape={self.shape}, epsilon={self.epsilon:g})"


def fit_zca(images: np.ndarray, epsilon: float = 0.1, *, method: str = "auto", chunk: int = 2048) -> ZCAWhitening:
    """ZCA whitening fitted on ``images`` (uint8 N x C x H x W, scaled to 0-1 here, or float already on
    that scale), D = C*H*W dimensions:

        mu = mean image; Sigma = (1/N) sum (x - mu)(x - mu)^T = U diag(lambda) U^T
        W = U diag(1 / sqrt(lambda + eps)) U^T,  eps = epsilon * mean(lambda)

    so that W (x - mu) has covariance U diag(lambda / (lambda + eps)) U^T, the identity up to the
    regulariser, and stays as close to the image as possible (the symmetric, "zero-phase" choice
    of W). ``epsilon`` is relative to the mean eigenvalue (trace(Sigma) / D), so it does not
    depend on the pixel scale.

    ``method``: "covariance" diagonalises the D x D covariance (accumulated in float64 over chunks
    of ``chunk`` images; for N >= D, e.g. CIFAR's 50,000 x 3,072); "gram" the N x N Gram matrix
    (for N < D): Sigma's eigenvectors with nonzero eigenvalues are (X - mu)^T v / sqrt(N lambda),
    and the directions the data does not span (lambda = 0) get 1 / sqrt(eps), exactly as the
    covariance formula gives them. "auto" picks the smaller matrix. Both give the same W."""
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"expected at least 2 images N x C x H x W, got {images.shape}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    n, shape = len(images), tuple(images.shape[1:])
    d = int(np.prod(shape))
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0

    def rows(start: int) -> np.ndarray:
        return images[start:start + chunk].reshape(-1, d).astype(np.float64) * scale

    mean = sum(rows(s).sum(0) for s in range(0, n, chunk)) / n
    if method == "auto":
        method = "covariance" if n >= d else "gram"
    if method == "covariance":
        cov = np.zeros((d, d))
        for s in range(0, n, chunk):
            c = rows(s) - mean
            cov += c.T @ c
        cov /= n
        lam, vectors = np.linalg.eigh(cov)
        lam = np.clip(lam, 0.0, None)
        eps = epsilon * float(np.trace(cov)) / d
        matrix = (vectors / np.sqrt(lam + eps)) @ vectors.T
    elif method == "gram":
        centred = np.concatenate([rows(s) for s in range(0, n, chunk)]) - mean
        lam, v = np.linalg.eigh(centred @ centred.T / n)
        eps = epsilon * float(lam.clip(0).sum()) / d
        keep = lam > lam.max() * max(n, d) * np.finfo(np.float64).eps
        lam, v = lam[keep], v[:, keep]
        vectors = centred.T @ v / np.sqrt(n * lam)  # D x r, orthonormal columns
        matrix = (vectors * (1.0 / np.sqrt(lam + eps) - 1.0 / math.sqrt(eps))) @ vectors.T
        matrix[np.diag_indices(d)] += 1.0 / math.sqrt(eps)
    else:
        raise ValueError(f"method must be auto, covariance or gram, got {method!r}")
    return ZCAWhitening(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(matrix.astype(np.float32)),
                        shape, epsilon)


# --------------------------------------------------------------------------- loading
def load_cifar(name: str, data_dir, whitening: str = "zscore", zca_epsilon: float = 0.1) -> ImageDataset:
    """Load ``cifar10`` or ``cifar100`` from the python batches, whitened as ``whitening`` says."""
    source = SOURCES[name]
    if whitening not in ("zscore", "none", "zca"):
        raise UserError(f"datasets.{name}.whitening must be zscore, none or zca, got {whitening!r}")
    if whitening == "zca":
        if not zca_epsilon > 0:
            raise UserError(f"datasets.{name}.zca_epsilon must be positive, got {zca_epsilon}")
    dirs = _dirs(name, data_dir)
    how = files.how_to_get(name, data_dir, f"or extract {source.folder}/ of {source.url} into {dirs[1]}")
    paths = files.find_files(name, dirs, [*source.train, source.test], how)
    parts = [read_batch(p, source.label_key, source.num_classes) for p in paths[:-1]]
    train_x = np.concatenate([x for x, _ in parts]) if len(parts) > 1 else parts[0][0]
    train_y = np.concatenate([y for _, y in parts])
    del parts
    test_x, test_y = read_batch(paths[-1], source.label_key, source.num_classes)
    extra: dict = {}
    if whitening == "zscore":
        mean, std = files.channel_stats(train_x)
    else:
        mean, std = (0.0,) * CHANNELS, (1.0,) * CHANNELS
        if whitening == "zca":
            extra["transform"] = fit_zca(train_x, zca_epsilon)
    return ImageDataset(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)), test_y=torch.from_numpy(test_y),
        num_classes=source.num_classes, mean=mean, std=std,
        description=f"{source.description}, {len(train_y)} train / {len(test_y)} test, 3x{SIDE}x{SIDE}, "
                    f"whitening {whitening}, from {paths[0].parent}",
        **extra,
    )


def load_cifar10(data_dir, whitening: Whitening = "zscore", zca_epsilon: float = 0.1) -> ImageDataset:
    return load_cifar("cifar10", data_dir, whitening, zca_epsilon)


def load_cifar100(data_dir, whitening: Whitening = "zscore", zca_epsilon: float = 0.1) -> ImageDataset:
    return load_cifar("cifar100", data_dir, whitening, zca_epsilon)


# --------------------------------------------------------------------------- downloads
def download(name: str, data_dir) -> None:
    """Fetch and verify the archive, extract the batches directory, verify each file, delete the
    archive. Nothing is fetched if every file is already there with its md5."""
    source = SOURCES[name]
    base = files.search_dirs(name, data_dir)[0]
    target = base / source.folder
    if all(files.verify(target / f, md5=m) for f, m in source.md5.items()):
        files.say(f"{target}: present, md5 verified")
        return
    archive = files.download_file(source.url, base / source.url.rsplit("/", 1)[1], md5=source.archive_md5)
    files.extract_tar(archive, base, source.folder)
    bad = [f for f, m in source.md5.items() if not files.verify(target / f, md5=m)]
    if bad:
        raise UserError(f"{name}: after extracting {archive}, these files are missing or have the wrong md5: "
                        f"{', '.join(bad)}")
    archive.unlink()


def download_cifar10(data_dir) -> None:
    download("cifar10", data_dir)


def download_cifar100(data_dir) -> None:
    download("cifar100", data_dir)


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec("cifar10", load_cifar10, "CIFAR-10 python batches (3x32x32, 50k/10k, 10 classes; whitening "
                                             "zscore|none|zca); `ssl-bench data download cifar10`",
                    download=download_cifar10),
        DatasetSpec("cifar100", load_cifar100, "CIFAR-100 python batches (3x32x32, 50k/10k, 100 fine classes; "
                                               "whitening zscore|none|zca); `ssl-bench data download cifar100`",
                    download=download_cifar100),
    ]
