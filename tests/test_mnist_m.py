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


# ------------------------------------------------------------------ built files (`ssl-bench data build`)
def write_photos(root, n_train=2, n_test=2):
    """Tiny BSDS500-like folders: ``root/bsds500/{train,test}/*.jpg`` (40 x 50 RGB noise)."""
    from PIL import Image

    rng = np.random.default_rng(5)
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / "bsds500" / split
        folder.mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{k}.jpg")


def test_build_writes_idx_files_with_a_manifest_and_loading_them_gives_the_same_bytes(tmp_path):
    import json
    import shutil

    from ssl_bench_plugins.datasets import files
    from ssl_bench_plugins.datasets.mnist import parse_idx
    from test_datasets import idx_bytes

    write_idx_set(tmp_path / "mnist", n_train=30, n_test=12)
    write_photos(tmp_path)
    made = mnist_m.make_mnist_m(tmp_path, seed=3)
    report = mnist_m.build_mnist_m(tmp_path, seed=3)
    folder = tmp_path / "mnist_m" / "seed3"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dataset"] == "mnist_m" and manifest["seed"] == 3 and manifest["description"] == made.description
    assert sorted(manifest["files"]) == sorted(mnist_m.BUILT_FILES)
    for name, entry in manifest["files"].items():
        digest = files.file_digest(folder / name, "sha256")
        assert entry["sha256"] == digest and f"{digest}  {folder / name}" in report  # printed, sha256sum style
        assert entry["bytes"] == (folder / name).stat().st_size
    # genuine idx files: MNIST's reader parses them; the images are the blended set, N x 3 x 28 x 28
    raw = (folder / "train-images-idx4-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x04" and raw == idx_bytes(made.train_x.numpy())
    assert np.array_equal(parse_idx((folder / "t10k-labels-idx1-ubyte").read_bytes()), made.test_y.numpy())
    # the loader reads them: the same bytes as building on load, self-contained (no MNIST, no photos)
    shutil.rmtree(tmp_path / "mnist")
    shutil.rmtree(tmp_path / "bsds500")
    built = mnist_m.load_mnist_m(tmp_path, seed=3)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(built, field), getattr(made, field)), field
    assert built.train_y.dtype == torch.int64 and (built.mean, built.std) == (made.mean, made.std)
    assert built.pipelines == made.pipelines and built.augment is made.augment
    assert built.description.startswith(made.description) and str(folder) in built.description
    # another seed is not built: built on load, which needs the sources again
    with pytest.raises(UserError, match="mnist_m needs the BSDS500 photos"):
        mnist_m.load_mnist_m(tmp_path, seed=4)


def test_build_is_byte_identical_for_a_seed_and_replaces_an_older_build(tmp_path):
    write_idx_set(tmp_path / "fashion_mnist", n_train=20, n_test=10)
    first = mnist_m.build_fashion_mnist_m(tmp_path)
    assert mnist_m.build_fashion_mnist_m(tmp_path) == first  # same paths, same sha256
    assert sorted(p.name for p in (tmp_path / "fashion_mnist_m").iterdir()) == ["seed0"]  # no temporaries left
    assert mnist_m.build_fashion_mnist_m(tmp_path, seed=1).split("\n")[1:] != first.split("\n")[1:]
    assert torch.equal(mnist_m.load_fashion_mnist_m(tmp_path).test_x, mnist_m.make_fashion_mnist_m(tmp_path).test_x)


def test_a_corrupt_or_missing_built_file_is_one_clear_error(tmp_path):
    write_idx_set(tmp_path / "fashion_mnist", n_train=20, n_test=10)
    mnist_m.build_fashion_mnist_m(tmp_path)
    folder = tmp_path / "fashion_mnist_m" / "seed0"
    images = folder / "train-images-idx4-ubyte"
    raw = bytearray(images.read_bytes())
    raw[100] ^= 0xFF
    images.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"built fashion_mnist_m: .*train-images-idx4-ubyte has sha256 [0-9a-f]{64}, "
                                        r"but .*manifest.json says [0-9a-f]{64}: the file is corrupt or was changed "
                                        r"since it was built; rebuild it with `ssl-bench data build fashion_mnist_m "
                                        r"--set seed=0"):
        mnist_m.load_fashion_mnist_m(tmp_path)
    mnist_m.build_fashion_mnist_m(tmp_path)  # a rebuild repairs it
    assert mnist_m.load_fashion_mnist_m(tmp_path).train_x.shape == (20, 3, 28, 28)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte is missing \(listed in .*manifest.json\)"):
        mnist_m.load_fashion_mnist_m(tmp_path)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match=r"manifest.json: not a manifest of a built fashion_mnist_m"):
        mnist_m.load_fashion_mnist_m(tmp_path)
    (folder / "manifest.json").unlink()  # no manifest: built on load as before
    assert mnist_m.load_fashion_mnist_m(tmp_path).train_x.shape == (20, 3, 28, 28)


def test_data_build_command(tmp_path):
    from conftest import cli

    write_idx_set(tmp_path / "fashion_mnist", n_train=20, n_test=10)
    proc = cli("data", "build", "fashion_mnist_m", "--data-dir", str(tmp_path), "--set", "seed=2")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "fashion_mnist_m" / "seed2"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"fashion_mnist_m (seed 2): 20 train / 10 test images written to {folder}"
    assert len(lines) == 6 and lines[-1] == f"manifest: {folder / 'manifest.json'}"
    proc = cli("data", "build", "fashion_mnist_m", "--data-dir", str(tmp_path), "--set", "seed=x")
    assert proc.returncode == 2 and "datasets.fashion_mnist_m.seed must be an int, got 'x'" in proc.stderr
    proc = cli("data", "build", "digits", "--data-dir", str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.startswith("digits: nothing to build")
