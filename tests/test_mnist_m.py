"""MNIST-M's recipe (plugins/datasets/mnist_m.py) on tiny hand-made images: |patch - image| per
channel with patches that are real crops, seeded, training and test images from disjoint
photos; the 3-channel sources and their random inversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_bench import ImageDataset, UserError
from ssl_bench_plugins.datasets import mnist_m
from test_datasets import write_idx_set


def position_photo(h: int, w: int) -> np.ndarray:
    """An RGB photo whose pixel (r, c) is (r, c, 7): every crop says where it was taken."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r, c, np.full_like(r, 7)], axis=2).astype(np.uint8)


def test_blend_is_the_absolute_difference_with_a_real_crop():
    photo = position_photo(9, 11)
    zeros = np.zeros((50, 3, 4), dtype=np.uint8)
    out = mnist_m.blend(zeros, [photo], np.random.default_rng(0))
    assert out.shape == (50, 3, 3, 4) and out.dtype == np.uint8
    tops, lefts = out[:, 0, 0, 0], out[:, 1, 0, 0]
    for k in range(50):  # with a black image the output IS the patch: a contiguous crop, in bounds
        t, l = int(tops[k]), int(lefts[k])
        np.testing.assert_array_equal(out[k], photo[t:t + 3, l:l + 4].transpose(2, 0, 1))
    assert len(set(zip(tops.tolist(), lefts.tolist()))) > 10  # crops are spread over the photo
    grey = np.full((50, 3, 4), 5, dtype=np.uint8)
    out5 = mnist_m.blend(grey, [photo], np.random.default_rng(0))  # same crops: same seed
    np.testing.assert_array_equal(out5.astype(int), np.abs(out.astype(int) - 5))  # |patch - 5|, no wrap-around


def test_blend_is_seeded_and_needs_photos_large_enough():
    grey = np.random.default_rng(1).integers(0, 256, (20, 3, 3), dtype=np.uint8)
    photos = [position_photo(8, 8), 255 - position_photo(6, 7)]
    a = mnist_m.blend(grey, photos, np.random.default_rng(3))
    assert np.array_equal(a, mnist_m.blend(grey, photos, np.random.default_rng(3)))
    assert not np.array_equal(a, mnist_m.blend(grey, photos, np.random.default_rng(4)))
    with pytest.raises(UserError, match="at least 3x3"):
        mnist_m.blend(grey, [position_photo(2, 8)], np.random.default_rng(0))


def test_training_and_test_images_come_from_disjoint_photos(tmp_path):
    write_idx_set(tmp_path / "fashion_mnist", n_train=30, n_test=10)
    from ssl_bench_plugins.datasets.mnist import load_fashion_mnist

    grey = load_fashion_mnist(tmp_path)
    black = ImageDataset(name="black", train_x=torch.zeros_like(grey.train_x), train_y=grey.train_y,
                         test_x=torch.zeros_like(grey.test_x), test_y=grey.test_y, num_classes=10,
                         mean=(0.5,), std=(0.5,))
    train_photo = np.broadcast_to(np.array([10, 20, 30], np.uint8), (40, 40, 3)).copy()
    test_photo = np.broadcast_to(np.array([200, 100, 50], np.uint8), (40, 40, 3)).copy()
    ds = mnist_m._blended("x", black, [train_photo], [test_photo], 0, "test photos")
    assert (ds.train_x[:, :, 0, 0] == torch.tensor([10, 20, 30], dtype=torch.uint8)).all()
    assert (ds.test_x[:, :, 0, 0] == torch.tensor([200, 100, 50], dtype=torch.uint8)).all()
    assert torch.equal(ds.train_y, grey.train_y) and "sha256" in ds.description
    # the real offline pair: scikit-learn's china.jpg for training, flower.jpg for test
    train, test = mnist_m.sample_photos()
    assert len(train) == len(test) == 1 and not np.array_equal(train[0], test[0])
    real = mnist_m.load_fashion_mnist_m(tmp_path)
    again = mnist_m.load_fashion_mnist_m(tmp_path)
    assert real.train_x.shape == (30, 3, 28, 28) and torch.equal(real.train_x, again.train_x)
    assert real.description == again.description
    assert mnist_m.load_fashion_mnist_m(tmp_path, seed=1).description != real.description


def test_rgb_sources_and_their_random_inversion(tmp_path):
    write_idx_set(tmp_path / "mnist", n_train=20, n_test=10)
    rgb = mnist_m.load_mnist_rgb(tmp_path)
    assert rgb.train_x.shape == (20, 3, 28, 28) and torch.equal(rgb.train_x[:, 0], rgb.train_x[:, 2])
    assert len(rgb.mean) == 3 and rgb.augment is mnist_m.random_inversion
    x = torch.rand(400, 3, 4, 4)
    y = mnist_m.random_inversion(x, torch.Generator().manual_seed(0))
    inverted = torch.isclose(y, 1 - x).all(dim=(1, 2, 3))
    unchanged = (y == x).all(dim=(1, 2, 3))
    assert (inverted | unchanged).all()  # each image whole: inverted or left as it is
    assert 150 < int(inverted.sum()) < 250


def test_mnist_m_without_bsds500_says_where_to_put_it(tmp_path):
    with pytest.raises(UserError, match=r"mnist_m needs the BSDS500 photos: no train/\*\.jpg .*bsds500"):
        mnist_m.load_mnist_m(tmp_path)
