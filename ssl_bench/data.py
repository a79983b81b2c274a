"""Data sets in memory, seeded protocol subsets, and batch samplers on the training device.

A data set is a few uint8 tensors (N x C x H x W) with int64 labels; no per-sample Python
runs in the training loop: batches are gathered by index from tensors already on the device.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import UserError
from .params import ALL, Param, params_of_function


@dataclasses.dataclass
class ImageDataset:
    """Images as uint8 N x C x H x W, labels as int64 N; ``mean``/``std`` per channel on the
    0-1 scale, used to normalise batches on the device."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""
    #: a separate pool of unlabeled-only images (STL-10's 100k), uint8 N x C x H x W; when set,
    #: a run's unlabeled set is drawn from it instead of from the training set
    unlabeled_x: torch.Tensor | None = None
    #: the data set's standard training augmentation, used when a run sets ``augment = true``:
    #: ``augment(x, generator)`` maps a float batch N x C x H x W in [0, 1] on the training device
    #: to an augmented batch of the same shape, drawing all randomness from ``generator``
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    #: a fixed input transform (e.g. ZCA whitening fitted on the training set) applied to every
    #: batch, training and evaluation, after scaling to [0, 1] (and augmentation), before mean/std
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"{self.name}: {split}_x must be uint8 N x C x H x W, got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: {split}_y must be int64 of length {x.shape[0]}")

    @property
    def unlabeled_pool(self) -> int | None:
        """Size of the separate unlabeled pool, or None if unlabeled data comes from the training set."""
        return None if self.unlabeled_x is None else len(self.unlabeled_x)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train_y.numpy(), minlength=self.num_classes)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A data-set plugin: ``load(data_dir, **kwargs) -> ImageDataset``. Keyword arguments of
    ``load`` are the data set's parameters (``[base.datasets.NAME]`` in a grid)."""

    name: str
    load: Callable[..., ImageDataset]
    help: str = ""
    #: ``download(data_dir)`` fetches and verifies the files; None if nothing needs downloading
    download: Callable[[Path], None] | None = None

    @property
    def params(self) -> list[Param]:
        return params_of_function(self.load, skip=("data_dir",))


# --------------------------------------------------------------------------- subsets
@dataclasses.dataclass(frozen=True)
class Subsets:
    """Indices into the training set: labeled, unlabeled and validation samples of one run."""

    labeled: np.ndarray
    unlabeled: np.ndarray
    validation: np.ndarray

    def hashes(self) -> dict[str, str]:
        return {f"{k}_hash": index_hash(getattr(self, k)) for k in ("labeled", "unlabeled", "validation")}


def index_hash(indices: np.ndarray) -> str:
    """A short content hash of an index set (order-independent), stored with every result row."""
    return hashlib.sha256(np.sort(indices).astype("<i8").tobytes()).hexdigest()[:16]


def validation_indices(n: int, n_validation: int, seed: int) -> np.ndarray:
    """A run's validation set: ``n_validation`` of the ``n`` training samples, uniform without
    replacement, from the seed's own stream; ``draw_subsets`` and ``check_counts`` both use it."""
    if not n_validation:
        return np.zeros(0, dtype=np.int64)
    if n_validation >= n:
        raise UserError(f"n_validation={n_validation} leaves no training samples (the training set has {n})")
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(n, size=n_validation, replace=False))


def draw_subsets(labels: np.ndarray, num_classes: int, *, seed: int, n_labeled, n_unlabeled,
                 overlap: bool, n_validation: int = 0, unlabeled_pool: int | None = None) -> Subsets:
    """Draw one run's subsets from the training labels, all from ``seed``.

    1. A validation set of ``n_validation`` samples (uniform) is removed first.
    2. The labeled set is class-balanced: ``n_labeled / num_classes`` samples per class
       (``"all"``: every remaining sample).
    3. The unlabeled set (uniform, labels unused) is drawn independently of the labeled one
       from the remaining samples; with ``overlap`` it may share samples with the labeled set
       (as in the LbA paper's Table 3, whose errors are therefore "upper bounds"), without
       it the labeled samples are excluded first. A data set with a separate unlabeled pool
       (STL-10) draws the unlabeled set from that pool (indices into it); ``overlap`` does not apply.

    Each step uses its own random stream derived from ``seed``, so the labeled set of a seed is
    the same whatever ``n_unlabeled`` is, and runs at different unlabeled counts are paired.
    """
    n = len(labels)
    validation = validation_indices(n, n_validation, seed)
    pool = np.setdiff1d(np.arange(n), validation) if n_validation else np.arange(n)

    if n_labeled == ALL:
        labeled = pool.copy()
    else:
        per_class = n_labeled // num_classes
        rng = np.random.default_rng([seed, 0])
        chosen = []
        for c in range(num_classes):
            members = pool[labels[pool] == c]
            chosen.append(rng.choice(members, size=per_class, replace=False))
        labeled = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

    if unlabeled_pool is not None:
        candidates = np.arange(unlabeled_pool)
    else:
        candidates = pool if overlap else np.setdiff1d(pool, labeled)
    if n_unlabeled == ALL:
        unlabeled = candidates.copy()
    else:
        rng = np.random.default_rng([seed, 1])
        unlabeled = np.sort(rng.choice(candidates, size=n_unlabeled, replace=False))
    return Subsets(labeled.astype(np.int64), unlabeled.astype(np.int64), validation.astype(np.int64))


def check_counts(labels: np.ndarray, num_classes: int, *, n_labeled, n_unlabeled, overlap: bool,
                 n_validation: int, dataset: str, unlabeled_pool: int | None = None, seed: int = 0) -> None:
    """Reject counts the data set cannot supply, before anything is trained.

    Exact: the validation set removed is the one the run ``seed`` draws (``validation_indices``),
    so each class must keep ``n_labeled / num_classes`` samples after that draw."""
    counts = np.bincount(labels, minlength=num_classes)
    n = len(labels)
    if n_labeled != ALL:
        if n_labeled % num_classes:
            raise UserError(f"n_labeled={n_labeled} is not a multiple of the {num_classes} classes of "
                            f"{dataset}: labeled sets are class-balanced")
        per_class = n_labeled // num_classes
        validation = validation_indices(n, n_validation, seed)
        left = counts - np.bincount(labels[validation], minlength=num_classes)
        if per_class > int(left.min()):
            if not n_validation:
                raise UserError(f"n_labeled={n_labeled} asks for {per_class} labeled samples per class, but the "
                                f"smallest class of {dataset} has {int(counts.min())} training samples")
            c = int(left.argmin())
            raise UserError(f"n_labeled={n_labeled} asks for {per_class} labeled samples per class, but class {c} "
                            f"of {dataset} has {int(left[c])} of its {int(counts[c])} training samples left after "
                            f"seed {seed}'s n_validation={n_validation}")
    if n_unlabeled != ALL:
        labeled_total = (n - n_validation) if n_labeled == ALL else n_labeled
        if unlabeled_pool is not None:
            if n_unlabeled > unlabeled_pool:
                raise UserError(f"n_unlabeled={n_unlabeled} is more than the {unlabeled_pool} images of "
                                f"{dataset}'s unlabeled pool")
            return
        available = n - n_validation - (0 if overlap else labeled_total)
        if n_unlabeled > available:
            raise UserError(f"n_unlabeled={n_unlabeled} is more than the {available} training samples of "
                            f"{dataset} available for the unlabeled set"
                            + ("" if overlap else " (unlabeled_overlap=false excludes the labeled samples)"))


# --------------------------------------------------------------------------- batches
class ResidentDataset:
    """A data set's tensors on the training device (uint8 images, labels, normalisation), copied
    there once and shared by every run on that device (see :func:`resident`)."""

    def __init__(self, dataset: ImageDataset, device: torch.device):
        self.dataset = dataset
        self.device = device
        self.mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
        self.train_x, self.train_y = dataset.train_x.to(device), dataset.train_y.to(device)
        self.test_x, self.test_y = dataset.test_x.to(device), dataset.test_y.to(device)
        # where unlabeled images come from: the training set, or a separate unlabeled pool
        self.unlabeled_x = self.train_x if dataset.unlabeled_x is None else dataset.unlabeled_x.to(device)


_RESIDENT: dict[str, ResidentDataset] = {}


def resident(dataset: ImageDataset, device: torch.device) -> ResidentDataset:
    """``dataset`` on ``device``, reusing the copy made for the previous run. One data set is kept
    per device: a grid's runs come grouped by data set, and device memory is not spent twice."""
    key = str(torch.device(device))
    held = _RESIDENT.get(key)
    if held is None or held.dataset is not dataset:
        _RESIDENT.pop(key, None)  # free the old copy before making the new one
        held = _RESIDENT[key] = ResidentDataset(dataset, torch.device(device))
    return held


class DeviceData:
    """A run's data on the training device: uint8 images, labels, and samplers that gather
    batches by index with a device-side generator (seeded from the run seed)."""

    def __init__(self, dataset: ImageDataset, subsets: Subsets, device: torch.device, seed: int,
                 augment: bool = False, memory_format: torch.memory_format = torch.contiguous_format):
        self.device = device
        self.augment = dataset.augment if augment else None
        self.transform = dataset.transform
        self.num_classes = dataset.num_classes
        self.memory_format = memory_format
        on_device = resident(dataset, device)
        self.mean, self.std = on_device.mean, on_device.std
        self.train_x, self.train_y = on_device.train_x, on_device.train_y
        self.unlabeled_x = on_device.unlabeled_x
        self.test_x, self.test_y = on_device.test_x, on_device.test_y
        as_index = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)
        self.validation = as_index(subsets.validation)
        self.unlabeled = as_index(subsets.unlabeled)
        # Labeled indices sorted by class; a class's members occupy [start, start + size).
        labeled = as_index(subsets.labeled)
        order = torch.argsort(self.train_y[labeled], stable=True)
        self.labeled = labeled[order]
        self.labeled_classes = self.train_y[self.labeled]
        sizes = torch.bincount(self.labeled_classes, minlength=self.num_classes)
        self.class_sizes = sizes
        self.class_starts = torch.cumsum(sizes, 0) - sizes
        self.present = torch.nonzero(sizes).squeeze(1)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> network input: scaled to [0, 1], the data set's transform, mean/std."""
        return self._finish(x_uint8.float().div_(255.0))

    def training_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 training images: scaled to [0, 1], augmented if the run asks for it, normalised."""
        x = images.float().div_(255.0)
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return self._finish(x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def labeled_batch(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` samples of every class that has labeled samples, class-balanced.

        Within a class the samples are a random permutation, so there are no repeats unless the
        class has fewer than ``per_class`` labeled samples (then it cycles through them)."""
        keys = self.labeled_classes.double() + torch.rand(len(self.labeled), generator=self.generator,
                                                         device=self.device, dtype=torch.float64)
        shuffled = self.labeled[torch.argsort(keys)]  # random order within each class block
        present = self.present
        slot = torch.arange(per_class, device=self.device)
        pos = self.class_starts[present, None] + slot[None, :] % self.class_sizes[present, None]
        idx = shuffled[pos.reshape(-1)]
        return self.training_batch(self.train_x[idx]), self.train_y[idx]

    def unlabeled_batch(self, size: int) -> torch.Tensor | None:
        """``size`` samples drawn uniformly (with replacement) from the unlabeled set."""
        if len(self.unlabeled) == 0 or size == 0:
            return None
        pick = torch.randint(len(self.unlabeled), (size,), generator=self.generator, device=self.device)
        return self.training_batch(self.unlabeled_x[self.unlabeled[pick]])

    def eval_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        sets = {"test": (self.test_x, self.test_y)}
        if len(self.validation):
            sets["validation"] = (self.train_x[self.validation], self.train_y[self.validation])
        return sets


def default_data_dir(cli_value: str | Path | None = None) -> Path:
    """Where data-set plugins look for files: ``--data-dir``, then ``$SSL_BENCH_DATA``, then
    the user cache directory (``$XDG_CACHE_HOME/ssl-bench`` or ``~/.cache/ssl-bench``)."""
    import os

    if cli_value:
        return Path(cli_value).expanduser()
    if os.environ.get("SSL_BENCH_DATA"):
        return Path(os.environ["SSL_BENCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ssl-bench"
