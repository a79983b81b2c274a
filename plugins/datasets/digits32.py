"""The 32 x 32 RGB digit sets of two domain pairs of associative domain adaptation (Haeusser et
al. ICCV 2017 = the dissertation's chapter 4, §3.1 and Table 2): ``synth_digits``, the source of
SynthDigits -> SVHN, and ``mnist_32_rgb``, the target of SVHN -> MNIST (``svhn`` is
``svhn.py``'s).

``synth_digits``: Synthetic Digits (SynthDigits; Ganin & Lempitsky 2015, "Unsupervised domain
adaptation by backpropagation", §4.2 "Synthetic numbers -> SVHN") as released.
The chapter: "As a labeled source domain we use the Synthetic Digits dataset provided by the
authors of [9]" (Ganin et al.).

Format: the released 32 x 32 files ``synth_train_32x32.mat`` and ``synth_test_32x32.mat`` are in
SVHN's "format 2" layout: ``X`` a 32 x 32 x 3 x N uint8 array (row, column, RGB, sample) and
``y`` N labels. They are read by SVHN's reader (:func:`ssl_bench_plugins.datasets.svhn.read_mat`,
one code path for both), accepting labels 0..10 and mapping them by ``y % 10`` as the LbA
authors' loader does (``semisup/tools/synth.py`` of github.com/haeusser/learning_by_association,
read: ``labels = data['y'].ravel() % 10``). Data set: 3 x 32 x 32 uint8 images, 10 classes,
every image of each file (the split of the release); mean/std per channel from the training
images.

The authors' loader keeps a random 70,000 of the training file (``num=70000``, unseeded); here
the data set is the whole file and the domain-adaptation grids draw the 70,000 as the run's
labeled set (``n_labeled = 70000``, class-balanced, from the run's seed; see
benchmarks/grids/da_table2.toml).

Where the files are looked for: ``DATA_DIR/synth_digits/`` (see ``files.py``). No download:
Ganin's release is a file-sharing link with no stable URL and NO PUBLISHED CHECKSUM (none in the
paper, the authors' code or the common loaders); the description of the loaded data set
carries the sha256 of the arrays read (images then labels, train then test), so two copies can
be compared.

Standard augmentation (``augment = true``): SVHN's (``svhn_augment``: random affine + Gaussian
blur; the same kind of printed digits); the ``weak`` view never flips (a mirrored digit is
another symbol).

``mnist_32_rgb``: the chapter's §3.1, "SVHN -> MNIST: MNIST images were resized with bilinear
interpolation to 32 x 32 pixels and extended to three channels in order to match the shape of
SVHN": every MNIST image (``mnist.py``, ``DATA_DIR/mnist``) resized 28 -> 32 by PIL's bilinear
filter (``files.resize_bilinear``; the authors' code resizes inside the network with TensorFlow
1's bilinear ``resize_images``, which samples without PIL's half-pixel offset, so the two grids
are shifted by a fraction of a pixel), then replicated to 3 channels; labels and split are
MNIST's, mean/std per channel from the resized training images. No standard augmentation (the
chapter augments only MNIST -> MNIST-M's source).
"""
from __future__ import annotations

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.augment.pipelines import weak_without_flip
from ssl_bench_plugins.datasets import files, svhn
from ssl_bench_plugins.datasets.mnist import load_mnist

NAME = "synth_digits"
FILES = ("synth_train_32x32.mat", "synth_test_32x32.mat")
HOW = ("Get synth_train_32x32.mat and synth_test_32x32.mat (SynthDigits, 32x32) from Yaroslav Ganin's "
       "page for 'Unsupervised domain adaptation by backpropagation' (no direct download URL, no published "
       "checksum) and put them there.")


def _split(path) -> tuple[np.ndarray, np.ndarray]:
    x, y = svhn.read_mat(path, labels=(0, 10))
    if x.shape[:3] != (32, 32, 3):
        raise UserError(f"{path}: expected 32 x 32 x 3 x N images, got {x.shape}")
    out = np.empty((len(y), 3, 32, 32), dtype=np.uint8)
    svhn._to_nchw(x, out)
    return out, y


def load_synth_digits(data_dir) -> ImageDataset:
    paths = files.find_files(NAME, files.search_dirs(NAME, data_dir), FILES, HOW)
    train_x, train_y = _split(paths[0])
    test_x, test_y = _split(paths[1])
    digest = files.arrays_sha256(train_x, train_y, test_x, test_y)
    mean, std = files.channel_stats(train_x)
    return ImageDataset(
        name=NAME, train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y), num_classes=10,
        mean=mean, std=std, augment=svhn.augment, pipelines={"weak": weak_without_flip},
        description=f"SynthDigits (Ganin & Lempitsky 2015), {len(train_y)} train / {len(test_y)} test, 3x32x32, "
                    f"from {paths[0].parent}; no published checksum: sha256 of the arrays read {digest[:16]}")


def load_mnist_32_rgb(data_dir) -> ImageDataset:
    grey = load_mnist(data_dir)
    train_x = files.resize_bilinear(grey.train_x.numpy(), (32, 32)).repeat(3, axis=1)
    test_x = files.resize_bilinear(grey.test_x.numpy(), (32, 32)).repeat(3, axis=1)
    mean, std = files.channel_stats(train_x)
    return ImageDataset(
        name="mnist_32_rgb", train_x=torch.from_numpy(train_x), train_y=grey.train_y,
        test_x=torch.from_numpy(test_x), test_y=grey.test_y, num_classes=grey.num_classes, mean=mean, std=std,
        pipelines={"weak": weak_without_flip},
        description=f"{grey.description}, resized bilinearly to 32x32 (PIL) and replicated to 3 channels")


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec(NAME, load_synth_digits,
                    "SynthDigits (Ganin & Lempitsky 2015) from synth_train/test_32x32.mat (3x32x32, 10 classes; "
                    "the SynthDigits -> SVHN source); files by hand into DATA_DIR/synth_digits"),
        DatasetSpec("mnist_32_rgb", load_mnist_32_rgb, "MNIST resized bilinearly to 32x32 and replicated to 3 "
                                                       "channels (the SVHN -> MNIST target, 3x32x32)"),
    ]
