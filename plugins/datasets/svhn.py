"""SVHN, the Street View House Numbers (Netzer et al. 2011), cropped-digit format: data set ``svhn``.

Format ("Format 2", http://ufldl.stanford.edu/housenumbers/): MATLAB files ``train_32x32.mat``
(73,257 digits), ``test_32x32.mat`` (26,032) and ``extra_32x32.mat`` (531,131 easier samples),
each holding ``X``, a 32 x 32 x 3 x N uint8 array (row, column, RGB channel, sample), and ``y``,
an N x 1 array of labels 1..10 where 10 is the digit 0. They are read with ``scipy.io.loadmat``
and rearranged with one transpose to N x 3 x 32 x 32 (pixel (0, 0) = ``X[0, 0, :, n]``, the
top-left pixel); labels map to 0..9 by ``y % 10`` (as torchvision does), after checking they
are in 1..10.

Parameters: ``extra`` (default false) appends the extra images to the training set (604,388
images, 1.9 GB in memory); the LbA paper's SVHN results use the training set only. The
per-channel mean/std (0-1 scale, population std) are computed from the training images actually
used, so they differ with ``extra``. ``normalisation = "per_image"`` instead standardises each
image on its own as the LbA authors' code does (``per_image_standardise``).

``extra_count`` (default "all"; only with ``extra = true``) appends that many extra images instead
of all 531,131: associative deep clustering trains on "the training set combined with 150,000
images from the additional, unlabeled set" (Haeusser et al. 2018, §3.5), i.e. ``extra = true``,
``extra_count = 150000``. Which ones: a uniform draw without replacement,
``numpy.random.default_rng(extra_seed).choice(531131, extra_count, replace=False)``, appended in
file order (sorted indices); ``extra_seed`` (default 0) is a data-set parameter, so the subset is
fixed per grid and part of the run id rather than varying with the run's seed (the ADC authors'
loader, ``semisup/tools/svhn.py`` of jplapp/associative_deep_clustering, draws its subset with an
unseeded ``RandomState``). Both keys stay out of run ids at their defaults.

Where the files are looked for: ``DATA_DIR/svhn/`` (see ``files.py``). ``ssl-bench data download
svhn`` fetches all three files (train 182 MB, test 64 MB, extra 1.3 GB) from the official site,
md5-verified; URLs and md5 sums are torchvision's (``torchvision/datasets/svhn.py``,
``SVHN.split_list``).

Standard augmentation (``augment = true`` in a grid): ``svhn_augment`` of
``ssl_bench_plugins.augment.ops`` (random affine + Gaussian blur, as the LbA paper names for SVHN;
parameters are documented there), imported when first called so that loading never depends on it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ssl_bench import ALL, Count, DatasetSpec, ImageDataset, UserError, hookimpl, hyperparameter
from ssl_bench_plugins.augment.pipelines import weak_without_flip
from ssl_bench_plugins.datasets import files

NAME = "svhn"
URL = "http://ufldl.stanford.edu/housenumbers/"
#: file -> md5, from torchvision/datasets/svhn.py (SVHN.split_list)
MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SVHN's standard augmentation: ``ssl_bench_plugins.augment.ops.svhn_augment``, imported at call time."""
    from ssl_bench_plugins.augment.ops import svhn_augment

    return svhn_augment(x, generator)


def read_mat(path: Path, labels: tuple[int, int] = (1, 10)) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN-format .mat file as (uint8 H x W x 3 x N images in MATLAB's layout, int64 labels
    0..9); UserError if malformed. ``labels``: the range the stored labels must lie in (SVHN:
    1..10, 10 = the digit 0; SynthDigits, released in the same format, is read with (0, 10): the
    LbA authors' loader maps its labels by ``% 10`` as well, so both 0 and 10 mean the digit 0);
    either way they map to 0..9 by ``y % 10``."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError, ... on bad files
        raise UserError(f"{path}: cannot read as a MATLAB file ({type(exc).__name__}: {exc}); delete it and "
                        f"download it again") from exc
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path}: expected variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise UserError(f"{path}: X must be uint8 H x W x 3 x N, got {x.dtype} {x.shape}")
    y = np.asarray(y).reshape(-1)
    if len(y) != x.shape[3]:
        raise UserError(f"{path}: X has {x.shape[3]} images but y has {len(y)} labels")
    low, high = labels
    if len(y) and (y.min() < low or y.max() > high):
        raise UserError(f"{path}: labels must be {low}..{high} (10 = digit 0), found {y.min()}..{y.max()}")
    return x, (y.astype(np.int64) % 10)


def _to_nchw(x: np.ndarray, out: np.ndarray) -> None:
    """H x W x C x N (MATLAB layout) into ``out`` (N x C x H x W), without an intermediate copy."""
    np.copyto(out, x.transpose(3, 2, 0, 1))


def per_image_standardise(x: torch.Tensor) -> torch.Tensor:
    """The LbA authors' input normalisation for SVHN (``svhn_model`` in semisup/architectures.py
    of github.com/haeusser/learning_by_association): per image and channel, subtract the spatial
    mean and divide by the spatial mean squared deviation + 1e-5 (the code's "std" is the
    variance), on the 0-255 scale of the uint8 inputs (assumed: the code feeds the decoded uint8
    images cast to float)."""
    x = x * 255.0
    mean = x.mean(dim=(2, 3), keepdim=True)
    variance = (x - mean).square().mean(dim=(2, 3), keepdim=True)
    return (x - mean) / (variance + 1e-5)


#: declared with ``since`` so that runs leaving them at their defaults keep their ids
EXTRA_COUNT = hyperparameter(ALL, since="0.2")
EXTRA_SEED = hyperparameter(0, since="0.2")


def _extra_subset(n_extra: int, extra_count, extra_seed: int) -> np.ndarray | None:
    """Sorted indices of the ``extra_count`` extra images to use (None: all of them)."""
    if extra_count == ALL:
        return None
    if extra_count > n_extra:
        raise UserError(f"datasets.{NAME}.extra_count = {extra_count} but the extra set has only {n_extra} images")
    return np.sort(np.random.default_rng(extra_seed).choice(n_extra, extra_count, replace=False))


def load_svhn(data_dir, extra: bool = False, normalisation: Literal["dataset", "per_image"] = "dataset",
              extra_count: Count = EXTRA_COUNT, extra_seed: int = EXTRA_SEED) -> ImageDataset:
    extra_count = ALL if extra_count is EXTRA_COUNT else extra_count  # called directly, not through a grid
    extra_seed = 0 if extra_seed is EXTRA_SEED else extra_seed
    if extra_count != ALL and not extra:
        raise UserError(f"datasets.{NAME}.extra_count = {extra_count} needs extra = true (it subsets the extra set)")
    dirs = files.search_dirs(NAME, data_dir)
    needed = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    paths = files.find_files(NAME, dirs, needed, files.how_to_get(NAME, data_dir, f"or copy them there from {URL}"))
    tx, train_y = read_mat(paths[0])
    parts = [(tx, train_y)]
    if extra:
        ex, ey = read_mat(paths[2])
        keep = _extra_subset(len(ey), extra_count, extra_seed)
        parts.append((ex, ey) if keep is None else (ex[:, :, :, keep], ey[keep]))
        del ex, ey
    h, w = tx.shape[:2]
    if any(p[0].shape[:3] != (h, w, 3) for p in parts):
        raise UserError(f"{NAME}: the training and extra images differ in size")
    train_x = np.empty((sum(len(p[1]) for p in parts), 3, h, w), dtype=np.uint8)
    start = 0
    for x, y in parts:
        _to_nchw(x, train_x[start:start + len(y)])
        start += len(y)
    train_y = np.concatenate([p[1] for p in parts])
    del parts, tx
    sx, test_y = read_mat(paths[1])
    if sx.shape[:3] != (h, w, 3):
        raise UserError(f"{NAME}: test images are {sx.shape[:3]}, training images {(h, w, 3)}")
    test_x = np.empty((len(test_y), 3, h, w), dtype=np.uint8)
    _to_nchw(sx, test_x)
    if normalisation not in ("dataset", "per_image"):
        raise UserError(f"datasets.{NAME}.normalisation must be \"dataset\" or \"per_image\", got {normalisation!r}")
    if normalisation == "per_image":  # the transform does it all; no data-set statistics after it
        mean, std, transform = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), per_image_standardise
    else:
        (mean, std), transform = files.channel_stats(train_x), None
    return ImageDataset(
        name=NAME,
        train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y),
        num_classes=10, mean=mean, std=std, augment=augment, transform=transform,
        pipelines={"weak": weak_without_flip},  # a mirrored digit is another symbol
        description=f"SVHN cropped digits (format 2), {len(train_y)} train{' (with extra)' if extra else ''} / "
                    f"{len(test_y)} test, 3x{h}x{w}, from {paths[0].parent}",
    )


def download_svhn(data_dir) -> None:
    """Fetch train, test and extra .mat files into ``data_dir/svhn/``, md5-verified."""
    target = files.search_dirs(NAME, data_dir)[0]
    for filename, md5 in MD5.items():
        files.download_file(URL + filename, target / filename, md5=md5)


@hookimpl
def ssl_bench_datasets():
    return [DatasetSpec(NAME, load_svhn, "SVHN cropped digits (3x32x32, 73,257/26,032; extra=true adds 531,131, "
                                         "extra_count=N a seeded N of them); "
                                         "`ssl-bench data download svhn`", download=download_svhn)]
