"""MNIST-M and its offline sibling Fashion-MNIST-M (Ganin & Lempitsky 2015's recipe), and the
3-channel sources of the domain-adaptation pairs: data sets ``mnist_m``, ``fashion_mnist_m``,
``mnist_rgb``, ``fashion_mnist_rgb``.

The recipe (Ganin et al. 2016, §5.2.2 "MNIST -> MNIST-M"; the ADA dissertation, ch. 4): each
grey 28 x 28 image is blended with a random 28 x 28 patch of a random natural photo by the
absolute difference per colour channel, out = |patch - digit|. Built here on load, seeded by
the data set's ``seed`` parameter (default 0; the same seed gives the same bytes, whose sha256
is in the data set's description), training images from one set of photos and test images from
another, disjoint set:

- ``mnist_m``: MNIST (``DATA_DIR/mnist``) on the BSDS500 photos the original used
  (``DATA_DIR/bsds500/``: the archive's ``BSR/BSDS500/data/images/train/*.jpg`` for training
  images and ``.../test/*.jpg`` for test images; the folder may hold ``train/`` and ``test/``
  directly). Get BSDS500 from the Berkeley segmentation site; without it the error says so.
- ``fashion_mnist_m``: Fashion-MNIST (Debian's files, offline) on the two photos scikit-learn
  ships (``sklearn.datasets.load_sample_images``): ``china.jpg`` for training images, ``flower.jpg``
  for test images. Two photos are far fewer than BSDS500's 500, so the backgrounds are less
  varied than MNIST-M's: an offline stand-in with the same recipe, not MNIST-M's difficulty.

``mnist_rgb`` / ``fashion_mnist_rgb``: the grey images replicated to 3 channels, the source
side of these pairs (a domain-adaptation run needs one image shape). Their standard
augmentation (``augment = true``) is a random inversion of each image (probability 0.5), the
dissertation's only augmentation for MNIST -> MNIST-M ("MNIST ... randomly inverted").
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.datasets import files
from ssl_bench_plugins.datasets.mnist import load_fashion_mnist, load_mnist


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
                    f"{len(train_x)} train / {len(test_x)} test, 3x28x28; sha256 {digest}")


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


def load_mnist_m(data_dir, seed: int = 0) -> ImageDataset:
    train, test = bsds500_photos(data_dir)
    return _blended("mnist_m", load_mnist(data_dir), train, test, seed, "BSDS500 photos (train/test)")


def load_fashion_mnist_m(data_dir, seed: int = 0) -> ImageDataset:
    train, test = sample_photos()
    return _blended("fashion_mnist_m", load_fashion_mnist(data_dir), train, test, seed,
                    "scikit-learn's china.jpg (train) / flower.jpg (test)")


def load_mnist_rgb(data_dir) -> ImageDataset:
    return _rgb(load_mnist(data_dir), "mnist_rgb")


def load_fashion_mnist_rgb(data_dir) -> ImageDataset:
    return _rgb(load_fashion_mnist(data_dir), "fashion_mnist_rgb")


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec("mnist_m", load_mnist_m, "MNIST-M: MNIST blended with BSDS500 photo patches (3x28x28; needs "
                                             "DATA_DIR/bsds500)"),
        DatasetSpec("fashion_mnist_m", load_fashion_mnist_m, "Fashion-MNIST blended with scikit-learn's sample "
                                                             "photos by MNIST-M's recipe (3x28x28, offline)"),
        DatasetSpec("mnist_rgb", load_mnist_rgb, "MNIST replicated to 3 channels; augment = random inversion "
                                                 "(the MNIST -> MNIST-M source)"),
        DatasetSpec("fashion_mnist_rgb", load_fashion_mnist_rgb, "Fashion-MNIST replicated to 3 channels; augment = "
                                                                 "random inversion (source for fashion_mnist_m)"),
    ]
