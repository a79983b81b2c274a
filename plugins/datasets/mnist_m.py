"""MNIST-M and its offline sibling Fashion-MNIST-M (Ganin & Lempitsky 2015's recipe), and the
3-channel sources of the domain-adaptation pairs: data sets ``mnist_m``, ``fashion_mnist_m``,
``mnist_rgb``, ``fashion_mnist_rgb``.

The recipe (Ganin et al. 2016, §5.2.2 "MNIST -> MNIST-M"; the ADA dissertation, ch. 4): each
grey 28 x 28 image is blended with a random 28 x 28 patch of a random natural photo by the
absolute difference per colour channel, out = |patch - digit|. Built seeded by the data set's
``seed`` parameter (default 0; the same seed gives the same bytes, whose sha256 is in the data
set's description), training images from one set of photos and test images from another,
disjoint set, either on load or once by ``ssl-bench data build NAME`` (below):

- ``mnist_m``: MNIST (``DATA_DIR/mnist``) on the BSDS500 photos the original used
  (``DATA_DIR/bsds500/``: the archive's ``BSR/BSDS500/data/images/train/*.jpg`` for training
  images and ``.../test/*.jpg`` for test images; the folder may hold ``train/`` and ``test/``
  directly). Get BSDS500 from the Berkeley segmentation site; without it the error says so.
- ``fashion_mnist_m``: Fashion-MNIST (Debian's files, offline) on the two photos scikit-learn
  ships (``sklearn.datasets.load_sample_images``): ``china.jpg`` for training images, ``flower.jpg``
  for test images. Two photos are far fewer than BSDS500's 500, so the backgrounds are less
  varied than MNIST-M's: an offline stand-in with the same recipe, not MNIST-M's difficulty.

Built files (``ssl-bench data build mnist_m`` / ``fashion_mnist_m`` [``--set seed=S``]): the
blended set of seed S is written to ``DATA_DIR/NAME/seedS/`` in MNIST's idx format (LeCun et
al., "THE IDX FILE FORMAT"; see ``mnist.py``), uncompressed, so the same seed gives
byte-identical files:

- ``train-images-idx4-ubyte``, ``t10k-images-idx4-ubyte``: magic ``00 00 08 04`` (unsigned
  bytes, 4 dimensions), the big-endian uint32 dimensions N, 3, 28, 28, then the pixels in C
  order (N x C x H x W, as the data set holds them);
- ``train-labels-idx1-ubyte``, ``t10k-labels-idx1-ubyte``: magic ``00 00 08 01``, N, then one
  byte per label;
- ``manifest.json``: the data set, seed, the data set's description (recipe, sources, the
  images' digest), the format, and each file's size and sha256 (also printed by the build).

The files are written into a temporary folder renamed into place, manifest last. ``load``
reads them when ``DATA_DIR/NAME/seedS/manifest.json`` exists, after checking every file's
sha256 against the manifest (about half a second for MNIST-M's 165 MB): a missing, changed or
corrupt file is a UserError naming it and how to rebuild; without a manifest the set is built
on load as before. The bytes are the same either way (tested), so results do not depend on
which path loaded them. A built set is self-contained: loading it needs neither MNIST nor the
photos.

``mnist_rgb`` / ``fashion_mnist_rgb``: the grey images replicated to 3 channels, the source
side of these pairs (a domain-adaptation run needs one image shape). Their standard
augmentation (``augment = true``) is a random inversion of each image (probability 0.5), the
dissertation's only augmentation for MNIST -> MNIST-M ("MNIST ... randomly inverted").
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.augment.pipelines import weak_without_flip
from ssl_bench_plugins.datasets import files
from ssl_bench_plugins.datasets.mnist import load_fashion_mnist, load_mnist, read_idx

#: the built files of one seed, in ``DATA_DIR/NAME/seedS/`` (module docstring)
BUILT_FILES = ("train-images-idx4-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx4-ubyte",
               "t10k-labels-idx1-ubyte")
FORMAT = ("idx (LeCun et al.), uncompressed: images 00 00 08 04 + N, 3, H, W (uint32 big-endian) + "
          "N x C x H x W ubyte; labels 00 00 08 01 + N + N ubyte")
#: the view pipelines of a built set without its grey source loaded: the grey data set's
#: (``mnist.py``: MNIST's weak view never flips, a mirrored digit being another symbol)
PIPELINES = {"mnist_m": {"weak": weak_without_flip}, "fashion_mnist_m": {}}


def blend(grey: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """N x H x W uint8 images -> N x 3 x H x W uint8: |patch - image| per channel, each patch a
    uniformly placed H x W crop of a uniformly chosen photo (H' x W' x 3 uint8, H' >= H, W' >= W)."""
    n, h, w = grey.shape
    if any(p.ndim != 3 or p.shape[2] != 3 or p.shape[0] < h or p.shape[1] < w for p in photos):
        raise UserError(f"every photo must be an RGB image of at least {h}x{w} pixels")
    which = rng.integers(len(photos), size=n)
    out = np.empty((n, 3, h, w), dtype=np.uint8)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for k, photo in enumerate(photos):
        idx = np.flatnonzero(which == k)
        top = rng.integers(photo.shape[0] - h + 1, size=len(idx))
        left = rng.integers(photo.shape[1] - w + 1, size=len(idx))
        patches = photo[top[:, None, None] + rows, left[:, None, None] + cols]  # len x H x W x 3
        diff = np.abs(patches.astype(np.int16) - grey[idx][..., None].astype(np.int16)).astype(np.uint8)
        out[idx] = diff.transpose(0, 3, 1, 2)
    return out


def random_inversion(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image (float, [0, 1]) inverted to 1 - x with probability 0.5."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], 1.0 - x, x)


def no_augmentation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The blended data sets' standard augmentation: none (the dissertation augments only the
    source side); defined so that a domain-adaptation run with ``augment = true`` (the source's
    inversion) accepts them as targets."""
    return x


def _blended(name: str, grey: ImageDataset, train_photos, test_photos, seed: int, origin: str) -> ImageDataset:
    rng = np.random.default_rng(seed)
    train_x = blend(grey.train_x.numpy()[:, 0], train_photos, rng)
    test_x = blend(grey.test_x.numpy()[:, 0], test_photos, rng)
    digest = hashlib.sha256(train_x.tobytes() + test_x.tobytes()).hexdigest()[:16]
    mean, std = files.channel_stats(train_x)
    return ImageDataset(
        name=name, train_x=torch.from_numpy(train_x), train_y=grey.train_y.clone(),
        test_x=torch.from_numpy(test_x), test_y=grey.test_y.clone(), num_classes=grey.num_classes,
        mean=mean, std=std, augment=no_augmentation, pipelines=dict(grey.pipelines),
        description=f"{grey.name} blended with {origin} (|patch - image| per channel, seed {seed}), "
                    f"{len(train_x)} train / {len(test_x)} test, 3x{train_x.shape[2]}x{train_x.shape[3]}; "
                    f"sha256 {digest}")


# --------------------------------------------------------------------------- built files
def built_dir(name: str, data_dir, seed: int) -> Path:
    """Where ``ssl-bench data build NAME --set seed=S`` writes: ``DATA_DIR/NAME/seedS``."""
    return files.search_dirs(name, data_dir)[0] / f"seed{seed}"


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file of unsigned bytes (module docstring; ``mnist.read_idx`` reads it)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx: unsigned bytes only, got {array.dtype}")
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def write_built(ds: ImageDataset, data_dir, seed: int) -> str:
    """Write a blended data set's files and manifest to :func:`built_dir` (atomically: a
    temporary folder renamed into place, replacing an older build); returns the report the
    build command prints: the folder, each file's sha256 (``sha256sum`` style) and the manifest."""
    if ds.num_classes > 256:
        raise ValueError(f"{ds.name}: labels must fit in a byte")
    target = built_dir(ds.name, data_dir, seed)
    arrays = (ds.train_x.numpy(), ds.train_y.numpy().astype(np.uint8), ds.test_x.numpy(),
              ds.test_y.numpy().astype(np.uint8))
    return files.write_with_manifest(
        target, dict(zip(BUILT_FILES, arrays)), write_idx,
        {"dataset": ds.name, "seed": seed, "description": ds.description, "format": FORMAT},
        f"{ds.name} (seed {seed}): {len(ds.train_y)} train / {len(ds.test_y)} test images written to {target}",
        entry_fields=("bytes",))


def load_built(name: str, data_dir, seed: int) -> ImageDataset | None:
    """The built data set ``name`` of ``seed`` from :func:`built_dir`, every file's sha256
    checked against the manifest; None if there is no manifest (then it is built on load)."""
    folder = built_dir(name, data_dir, seed)
    rebuild = (f"rebuild it with `ssl-bench data build {name} --set seed={seed} --data-dir {Path(data_dir).expanduser()}`"
               f", or delete {folder} to build it on load")
    manifest = files.verify_manifest(folder, name, BUILT_FILES, rebuild, {"seed": seed},
                                     lambda m: f"seed {m.get('seed')!r}", {"description": str})
    if manifest is None:
        return None
    description = manifest["description"]
    train_x, train_y, test_x, test_y = (read_idx(folder / f) for f in BUILT_FILES)
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"built {name}: {folder}/{split}-* hold {x.dtype} {x.shape} images and {y.shape} labels, "
                            f"expected N x C x H x W bytes and N labels; {rebuild}")
    mean, std = files.channel_stats(train_x)
    return ImageDataset(
        name=name, train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y.astype(np.int64)), num_classes=10,
        mean=mean, std=std, augment=no_augmentation, pipelines=dict(PIPELINES[name]),
        description=f"{description}; read from {folder} (`ssl-bench data build`)")


def _rgb(grey: ImageDataset, name: str) -> ImageDataset:
    return ImageDataset(
        name=name, train_x=grey.train_x.expand(-1, 3, -1, -1).contiguous(), train_y=grey.train_y,
        test_x=grey.test_x.expand(-1, 3, -1, -1).contiguous(), test_y=grey.test_y, num_classes=grey.num_classes,
        mean=grey.mean * 3, std=grey.std * 3, augment=random_inversion, pipelines=dict(grey.pipelines),
        description=f"{grey.description}, replicated to 3 channels; augment = true: random inversion")


def sample_photos() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """scikit-learn's two sample photos: (training photos, test photos) = ([china], [flower])."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    by_name = {Path(f).name: img for f, img in zip(bunch.filenames, bunch.images)}
    return [by_name["china.jpg"]], [by_name["flower.jpg"]]


def bsds500_photos(data_dir) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """BSDS500's training and test photos from ``DATA_DIR/bsds500``."""
    from PIL import Image

    roots = files.search_dirs("bsds500", data_dir)
    for root in roots:
        for base in (root / "BSR" / "BSDS500" / "data" / "images", root / "images", root):
            train, test = sorted((base / "train").glob("*.jpg")), sorted((base / "test").glob("*.jpg"))
            if train and test:
                load = lambda paths: [np.asarray(Image.open(p).convert("RGB")) for p in paths]  # noqa: E731
                return load(train), load(test)
    raise UserError(f"mnist_m needs the BSDS500 photos: no train/*.jpg and test/*.jpg under {roots[0]} (or its "
                    f"BSR/BSDS500/data/images/). Download BSR_bsds500.tgz from the Berkeley segmentation "
                    f"benchmark site and unpack it there")


def make_mnist_m(data_dir, seed: int = 0) -> ImageDataset:
    """MNIST-M built now from ``DATA_DIR/mnist`` and ``DATA_DIR/bsds500``."""
    train, test = bsds500_photos(data_dir)
    return _blended("mnist_m", load_mnist(data_dir), train, test, seed, "BSDS500 photos (train/test)")


def make_fashion_mnist_m(data_dir, seed: int = 0) -> ImageDataset:
    """Fashion-MNIST-M built now from Fashion-MNIST and scikit-learn's two photos."""
    train, test = sample_photos()
    return _blended("fashion_mnist_m", load_fashion_mnist(data_dir), train, test, seed,
                    "scikit-learn's china.jpg (train) / flower.jpg (test)")


def load_mnist_m(data_dir, seed: int = 0) -> ImageDataset:
    return load_built("mnist_m", data_dir, seed) or make_mnist_m(data_dir, seed)


def load_fashion_mnist_m(data_dir, seed: int = 0) -> ImageDataset:
    return load_built("fashion_mnist_m", data_dir, seed) or make_fashion_mnist_m(data_dir, seed)


def build_mnist_m(data_dir, seed: int = 0) -> str:
    return write_built(make_mnist_m(data_dir, seed), data_dir, seed)


def build_fashion_mnist_m(data_dir, seed: int = 0) -> str:
    return write_built(make_fashion_mnist_m(data_dir, seed), data_dir, seed)


def load_mnist_rgb(data_dir) -> ImageDataset:
    return _rgb(load_mnist(data_dir), "mnist_rgb")


def load_fashion_mnist_rgb(data_dir) -> ImageDataset:
    return _rgb(load_fashion_mnist(data_dir), "fashion_mnist_rgb")


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec("mnist_m", load_mnist_m, "MNIST-M: MNIST blended with BSDS500 photo patches (3x28x28; needs "
                                             "DATA_DIR/bsds500; `ssl-bench data build mnist_m` writes it once)",
                    build=build_mnist_m),
        DatasetSpec("fashion_mnist_m", load_fashion_mnist_m, "Fashion-MNIST blended with scikit-learn's sample "
                                                             "photos by MNIST-M's recipe (3x28x28, offline)",
                    build=build_fashion_mnist_m),
        DatasetSpec("mnist_rgb", load_mnist_rgb, "MNIST replicated to 3 channels; augment = random inversion "
                                                 "(the MNIST -> MNIST-M source)"),
        DatasetSpec("fashion_mnist_rgb", load_fashion_mnist_rgb, "Fashion-MNIST replicated to 3 channels; augment = "
                                                                 "random inversion (source for fashion_mnist_m)"),
    ]
