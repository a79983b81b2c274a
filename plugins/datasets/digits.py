"""UCI handwritten digits, as bundled with scikit-learn: 1,797 grey 8x8 images, 10 classes.

Needs no download, so it is the data set of the default grid and of the tests.

``digits_inverted`` is the same images with inverted intensities (255 - v) and their own
normalisation: a real, if simple, domain shift for domain-adaptation runs built offline
(``task = "domain_adaptation"``, ``dataset = "digits"``, ``target = "digits_inverted"``).

Fixed split: ``sklearn.model_selection.train_test_split(test_size=500, stratify=labels,
random_state=0)``, i.e. 1,297 training and 500 test images with every class in proportion
(the test indices' hash is pinned by a test). Pixels (0-16) are scaled to uint8 0-255 by
round(v * 255 / 16); normalisation uses the training set's mean and std.
"""
from __future__ import annotations

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, hookimpl
from ssl_bench_plugins.augment.pipelines import weak_without_flip

TEST_SIZE = 500


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=0)
    return np.sort(train), np.sort(test)


def load_digits(data_dir) -> ImageDataset:
    return _digits(inverted=False)


def load_digits_inverted(data_dir) -> ImageDataset:
    return _digits(inverted=True)


def _digits(inverted: bool) -> ImageDataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N x 1 x 8 x 8
    if inverted:
        images = 255 - images
    labels = bunch.target.astype(np.int64)
    train, test = split_indices(labels)
    scaled = images[train].astype(np.float64) / 255.0
    return ImageDataset(
        name="digits_inverted" if inverted else "digits",
        train_x=torch.from_numpy(images[train]), train_y=torch.from_numpy(labels[train]),
        test_x=torch.from_numpy(images[test]), test_y=torch.from_numpy(labels[test]),
        num_classes=10, mean=(float(scaled.mean()),), std=(float(scaled.std()),),
        pipelines={"weak": weak_without_flip},  # a mirrored digit is another symbol
        description="UCI digits (scikit-learn), 1297 train / 500 test, 1x8x8" + (", inverted" if inverted else ""),
    )


@hookimpl
def ssl_bench_datasets():
    return [DatasetSpec("digits", load_digits, "UCI handwritten digits from scikit-learn (8x8, bundled)"),
            DatasetSpec("digits_inverted", load_digits_inverted,
                        "the UCI digits with inverted intensities (255 - v): a domain-adaptation target")]
