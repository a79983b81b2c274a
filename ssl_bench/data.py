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
    #: the data set's own versions of view pipelines, by name (e.g. ``{"weak": translate_only}``
    #: for digits, which a horizontal flip would turn into other symbols); a method's view of that
    #: name uses it instead of the registered pipeline (``ssl_bench.views.view_pipeline``)
    pipelines: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = dataclasses.field(
        default_factory=dict)

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
    #: ``build(data_dir, **params) -> str`` writes a derived data set's files once (``ssl-bench
    #: data build NAME``; ``params`` are ``load``'s, validated) and returns a report of what it
    #: wrote (paths, checksums); ``load`` then reads them. None if the data set is not built
    build: Callable[..., str] | None = None

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
                 overlap: bool, n_validation: int = 0, unlabeled_pool: int | None = None,
                 allowed: np.ndarray | None = None) -> Subsets:
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
    ``allowed`` (sorted indices) restricts both sets to part of the training set (retrieval's
    training classes); None: all of it.
    """
    n = len(labels)
    validation = validation_indices(n, n_validation, seed)
    pool = np.setdiff1d(np.arange(n), validation) if n_validation else np.arange(n)
    if allowed is not None:
        pool = np.intersect1d(pool, allowed)

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


_RESIDENT: dict[str, list[ResidentDataset]] = {}
#: data sets kept per device: a run uses at most two (domain adaptation: source and target)
RESIDENT_PER_DEVICE = 2


def resident(dataset: ImageDataset, device: torch.device) -> ResidentDataset:
    """``dataset`` on ``device``, reusing the copy made for an earlier run. At most two data sets
    are kept per device (a grid's runs come grouped by data set, and device memory is not spent
    twice); the least recently used copy is freed first."""
    key = str(torch.device(device))
    held = _RESIDENT.setdefault(key, [])
    for i, copy in enumerate(held):
        if copy.dataset is dataset:
            held.append(held.pop(i))
            return copy
    while len(held) >= RESIDENT_PER_DEVICE:
        held.pop(0)  # free the old copy before making the new one
    held.append(ResidentDataset(dataset, torch.device(device)))
    return held[-1]


#: an augmentation pipeline: float batch in [0, 1] and a generator -> augmented batch
Pipeline = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Domain:
    """One data set on the training device with its own normalisation, input transform and
    standard augmentation: the source and the target of a domain-adaptation run are two."""

    def __init__(self, dataset: ImageDataset, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format):
        on_device = resident(dataset, device)
        self.dataset, self.device, self.memory_format = dataset, device, memory_format
        self.mean, self.std, self.transform = on_device.mean, on_device.std, dataset.transform
        self.standard_augment = dataset.augment
        self.pipelines = dataset.pipelines
        self.train_x, self.train_y = on_device.train_x, on_device.train_y
        self.test_x, self.test_y = on_device.test_x, on_device.test_y
        self.unlabeled_x = on_device.unlabeled_x

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> network input: scaled to [0, 1], the data set's transform, mean/std."""
        return self.prepare(x_uint8, None, None)

    def prepare(self, x_uint8: torch.Tensor, pipeline: Pipeline | None, generator: torch.Generator | None):
        """uint8 training images: scaled to [0, 1], augmented by ``pipeline`` (None: not at all),
        transformed, normalised."""
        x = x_uint8.float().div_(255.0)
        if pipeline is not None:
            x = pipeline(x, generator)
        if self.transform is not None:
            x = self.transform(x)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


class RunLabels:
    """The run's label vector over the labeled domain's training images (-1: no label).

    It starts as the labels the task gives (the labeled subset's classes) and a method may
    extend or change it while training (``ctx.labels.assign``: discovered samples with hard
    pseudo-labels, k-means labels) or return to the start (``reset``); the labeled sampler
    draws from whatever is labeled now. The count and true accuracy of the labels assigned so
    far go into the run's curve (``labels_assigned``, ``labels_assigned_accuracy``); the
    accuracy only while every assigned label names a class (``assign(..., classes=False)``
    for cluster ids, whose numbers mean nothing against the true classes)."""

    def __init__(self, initial: torch.Tensor, truth: torch.Tensor | None):
        self.initial = initial
        self.current = initial.clone()
        self.truth = truth  # the true classes, for the diagnostics only; never given to methods
        self.version = 0
        self.assigned_ever = False
        self.cluster_ids = False  # some assigned label is a cluster id, not a class

    def assign(self, indices: torch.Tensor, labels: torch.Tensor, classes: bool = True) -> None:
        """Give the training images ``indices`` the labels ``labels`` (-1 removes a label):
        classes, or with ``classes=False`` cluster ids (k-means pseudo-labels), which the
        labeled sampler treats alike but which no true class is compared with."""
        self.current[indices] = labels.to(self.current)
        self.version += 1
        self.assigned_ever = True
        self.cluster_ids = self.cluster_ids or not classes

    def reset(self) -> None:
        """Back to the labels the task gave."""
        self.current = self.initial.clone()
        self.version += 1
        self.cluster_ids = False

    def labeled(self) -> torch.Tensor:
        """Indices of the images labeled now, ascending."""
        return torch.nonzero(self.current >= 0).squeeze(1)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Count, true accuracy and error (%) of the labels that differ from the task's (device
        tensors; with no such label, accuracy 0 and error 100; no accuracy for cluster ids)."""
        changed = (self.current != self.initial) & (self.current >= 0)
        count = changed.sum()
        stats = {"labels_assigned": count.double()}
        if self.truth is not None and not self.cluster_ids:
            right = (changed & (self.current == self.truth)).sum()
            stats["labels_assigned_accuracy"] = 100.0 * right.double() / count.clamp_min(1).double()
            stats["labels_assigned_error"] = 100.0 - stats["labels_assigned_accuracy"]
        return stats


SAMPLERS = ("class_balanced", "uniform", "p_k")


class DeviceData:
    """A run's data on the training device: uint8 images, its label vector, and samplers that
    gather batches by index with a device-side generator (seeded from the run seed).

    ``dataset`` is the labeled domain; ``unlabeled_dataset`` (default: the same) the domain of
    the unlabeled samples, whose images come from its training set or, with
    ``unlabeled_from_pool`` (default: when it has one), its separate unlabeled pool.
    ``labels`` is the initial label vector (default: the labeled subset's true classes)."""

    def __init__(self, dataset: ImageDataset, subsets: Subsets, device: torch.device, seed: int,
                 augment: bool = False, memory_format: torch.memory_format = torch.contiguous_format, *,
                 labels: np.ndarray | None = None, unlabeled_dataset: ImageDataset | None = None,
                 unlabeled_from_pool: bool | None = None, num_classes: int | None = None,
                 hide_labels: bool = False, augmentation: Callable[[Domain], Pipeline | None] | None = None):
        self.device = device
        self.augment = augment
        #: with ``augment``: a domain's pipeline for plain training batches (None: its standard one)
        self.augmentation = augmentation
        self.num_classes = num_classes or dataset.num_classes
        self.memory_format = memory_format
        self.domain = Domain(dataset, device, memory_format)
        self.unlabeled_domain = (self.domain if unlabeled_dataset is None or unlabeled_dataset is dataset
                                 else Domain(unlabeled_dataset, device, memory_format))
        pool = self.unlabeled_domain.dataset.unlabeled_x is not None if unlabeled_from_pool is None else unlabeled_from_pool
        self.unlabeled_x = self.unlabeled_domain.unlabeled_x if pool else self.unlabeled_domain.train_x
        self.mean, self.std = self.domain.mean, self.domain.std
        self.train_x = self.domain.train_x
        #: the true training labels; None when the task keeps labels away from training
        self.train_y = None if hide_labels else self.domain.train_y
        self.test_x, self.test_y = self.domain.test_x, self.domain.test_y
        as_index = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)
        self.validation = as_index(subsets.validation)
        self.unlabeled = as_index(subsets.unlabeled)
        if labels is None:
            labels = np.full(len(dataset.train_y), -1, dtype=np.int64)
            labels[subsets.labeled] = dataset.train_y.numpy()[subsets.labeled]
        self.labels = RunLabels(as_index(labels), None if hide_labels else self.domain.train_y)
        self._blocks_version = -1
        self._class_blocks()
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    # ---------------------------------------------------------------- images
    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images of the labeled domain -> network input (no augmentation)."""
        return self.domain.normalise(x_uint8)

    def training_batch(self, images: torch.Tensor, domain: Domain | None = None) -> torch.Tensor:
        """uint8 training images: scaled to [0, 1], augmented if the run asks for it (``augment``,
        ``augmentation``), normalised."""
        domain = domain or self.domain
        pipeline = None
        if self.augment:
            pipeline = domain.standard_augment if self.augmentation is None else self.augmentation(domain)
        return domain.prepare(images, pipeline, self.generator)

    def view(self, images: torch.Tensor, pipeline: Pipeline | None, domain: Domain | None = None) -> torch.Tensor:
        """One more augmented view of uint8 training images (a method's declared view)."""
        return (domain or self.domain).prepare(images, pipeline, self.generator)

    # ---------------------------------------------------------------- samplers
    def _class_blocks(self) -> None:
        """Labeled indices sorted by class; class c occupies [start_c, start_c + size_c)."""
        if self._blocks_version == self.labels.version:
            return
        labeled = self.labels.labeled()
        classes = self.labels.current[labeled]
        order = torch.argsort(classes, stable=True)
        self.labeled, self.labeled_classes = labeled[order], classes[order]
        sizes = torch.bincount(self.labeled_classes, minlength=self.num_classes)
        self.class_sizes = sizes
        self.class_starts = torch.cumsum(sizes, 0) - sizes
        self.present = torch.nonzero(sizes).squeeze(1)
        self._blocks_version = self.labels.version

    def labeled_indices(self, per_class: int, sampler: str = "class_balanced", batch: int = 0,
                        classes: int = 0) -> torch.Tensor:
        """Indices of one labeled batch.

        - ``class_balanced``: ``per_class`` samples of every class that has labeled samples;
          within a class a random permutation, so no repeats unless the class has fewer than
          ``per_class`` labeled samples (then it cycles through them).
        - ``p_k``: the same for ``classes`` (P) classes drawn without replacement (0: all),
          K = ``per_class`` samples each (metric learning's P x K batches).
        - ``uniform``: ``batch`` samples uniformly with replacement (0: per_class x classes)."""
        self._class_blocks()
        if sampler == "uniform":
            size = batch or per_class * self.num_classes
            return self.labeled[torch.randint(len(self.labeled), (size,), generator=self.generator, device=self.device)]
        keys = self.labeled_classes.double() + torch.rand(len(self.labeled), generator=self.generator,
                                                         device=self.device, dtype=torch.float64)
        shuffled = self.labeled[torch.argsort(keys)]  # random order within each class block
        present = self.present
        if sampler == "p_k" and classes and classes < len(present):
            present = present[torch.randperm(len(present), generator=self.generator, device=self.device)[:classes]]
        slot = torch.arange(per_class, device=self.device)
        pos = self.class_starts[present, None] + slot[None, :] % self.class_sizes[present, None]
        return shuffled[pos.reshape(-1)]

    def labeled_batch(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced labeled batch: normalised images and their labels."""
        idx = self.labeled_indices(per_class)
        return self.training_batch(self.train_x[idx]), self.labels.current[idx]

    def unlabeled_indices(self, size: int) -> torch.Tensor | None:
        """``size`` positions drawn uniformly (with replacement) in the unlabeled set."""
        if len(self.unlabeled) == 0 or size == 0:
            return None
        pick = torch.randint(len(self.unlabeled), (size,), generator=self.generator, device=self.device)
        return self.unlabeled[pick]

    def unlabeled_batch(self, size: int) -> torch.Tensor | None:
        """``size`` samples drawn uniformly (with replacement) from the unlabeled set."""
        idx = self.unlabeled_indices(size)
        return None if idx is None else self.training_batch(self.unlabeled_x[idx], self.unlabeled_domain)


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


# --------------------------------------------------------------------------- loading
def data_roles(config: dict, registry) -> dict[str, str]:
    """Role -> data-set name of the data sets a run uses (its task decides)."""
    return registry.task(config.get("task", "ssl"))().data_roles(config)


def data_key(config: dict, registry) -> str:
    """Runs with equal keys use the same loaded data sets."""
    from .results import config_json

    roles = data_roles(config, registry)
    return config_json({role: [name, config["datasets"][name]] for role, name in roles.items()})


def load_one(name: str, args: dict, registry, data_dir: Path) -> ImageDataset:
    from .errors import UserError

    spec = registry.dataset(name)
    try:
        return spec.load(data_dir, **args)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"data set {name!r} failed to load: {type(exc).__name__}: {exc}") from exc


def load_data(config: dict, registry, data_dir: Path) -> dict[str, ImageDataset]:
    """The run's data sets by role (``"source"``, and e.g. ``"target"``), loaded from ``data_dir``."""
    return {role: load_one(name, dict(config["datasets"][name]), registry, data_dir)
            for role, name in data_roles(config, registry).items()}
