"""The file-based data sets (plugins/datasets/mnist.py, svhn.py, stl10.py, files.py).

No network here, so each format is tested on SMALL files written by the test in the genuine
on-disk format (idx via struct + gzip, SVHN .mat via scipy.io.savemat with the real variable
layout, STL-10 binaries via numpy tofile in the column-major layout) and read through the same
``load`` function a run uses. Images carry a known pattern (distinct values at the top-left
pixel, the pixel to its right and the pixel below it), so a transposed or flipped loader fails.
Downloads are served from ``file://`` URLs or a patched ``urlopen``. The real Fashion-MNIST is
checked where Debian's ``dataset-fashion-mnist`` is installed (CI installs it).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import sys
import tarfile
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from ssl_bench import Count, UserError
from ssl_bench.cli import main as cli_main
from ssl_bench.registry import registry
from ssl_bench_plugins.datasets import files
from ssl_bench_plugins.datasets import mnist
from ssl_bench_plugins.datasets import stl10
from ssl_bench_plugins.datasets import svhn

from conftest import cli, write_grid

#: official md5 sums of the upstream .gz files, written out here independently of the plugin
#: (torchvision/datasets/mnist.py, FashionMNIST.resources; the Fashion-MNIST README lists the same)
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN = Path("/usr/share/datasets/fashion-mnist")

# pattern values: top-left pixel, the pixel to its right (row 0, column 1), the pixel below it (row 1, column 0)
TL, RIGHT, BELOW = 255, 128, 64


def patterned(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 N x C x H x W noise in 0..50 with the pattern in every image and channel."""
    x = np.random.default_rng(seed).integers(0, 51, size=(n, c, h, w), dtype=np.uint8)
    x[:, :, 0, 0], x[:, :, 0, 1], x[:, :, 1, 0] = TL, RIGHT, BELOW
    return x


def assert_pattern(x: torch.Tensor) -> None:
    assert (x[:, :, 0, 0] == TL).all() and (x[:, :, 0, 1] == RIGHT).all() and (x[:, :, 1, 0] == BELOW).all()


def assert_stats(ds, train: np.ndarray) -> None:
    scaled = train.astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ds.std, scaled.std(axis=(0, 2, 3)), rtol=1e-12)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- writers of genuine formats
def idx_bytes(a: np.ndarray, type_code: int = 0x08) -> bytes:
    """An idx file: 00 00 TYPE NDIM, big-endian uint32 dims, big-endian data."""
    dtype = np.dtype(mnist.IDX_TYPES[type_code])
    return bytes([0, 0, type_code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(dtype).tobytes()


def write_idx_set(folder: Path, n_train: int = 100, n_test: int = 30, gz: bool = True) -> dict[str, np.ndarray]:
    """The four MNIST files (1 x 28 x 28 images with the pattern; labels cycling 0..9)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": patterned(n_train, 1, 28, 28, seed=1)[:, 0],
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": patterned(n_test, 1, 28, 28, seed=2)[:, 0],
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def write_svhn_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """SVHN format 2: X is H x W x 3 x N uint8, y is N x 1 with 10 for the digit 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
    scipy.io.savemat(path, {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)), "y": y})


def write_svhn(folder: Path, n_train=40, n_test=20, n_extra=30) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sets = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test), ("extra", n_extra))):
        x, y = patterned(n, 3, 32, 32, seed=10 + i), (np.arange(n) + i) % 10
        write_svhn_mat(folder / f"{split}_32x32.mat", x, y)
        sets[split] = (x, y)
    return sets


def write_stl10(folder: Path, n_train=20, n_test=10, n_unlabeled=12) -> dict[str, np.ndarray]:
    """STL-10 binaries: each image's channels stored column-major; labels uint8 1..10."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled))):
        x = patterned(n, 3, 96, 96, seed=20 + i)
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")
        out[f"{split}_x"] = x
        if split != "unlabeled":
            y = (np.arange(n) * 7) % 10
            (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
            out[f"{split}_y"] = y
    return out


# --------------------------------------------------------------------------- registration
def test_datasets_are_registered_with_their_parameters():
    reg = registry()
    for name in ("mnist", "fashion_mnist", "svhn", "stl10"):
        spec = reg.dataset(name)
        assert spec.download is not None and spec.help
    assert [(p.name, p.type, p.default) for p in reg.dataset("svhn").params] == [
        ("extra", bool, False), ("normalisation", str, "dataset"), ("extra_count", Count, "all"),
        ("extra_seed", int, 0)]
    assert [(p.name, p.type, p.default) for p in reg.dataset("stl10").params] == [("unlabeled", bool, True)]
    assert reg.dataset("mnist").params == []


# --------------------------------------------------------------------------- idx / MNIST
@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_mnist_loads_idx_files(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "mnist", gz=gz)
    ds = mnist.load_mnist(tmp_path)
    assert ds.train_x.shape == (100, 1, 28, 28) and ds.test_x.shape == (30, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64 and ds.test_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert_pattern(ds.train_x)
    assert_pattern(ds.test_x)
    assert ds.num_classes == 10 and ds.augment is None and ds.unlabeled_x is None
    assert_stats(ds, arrays["train-images-idx3-ubyte"][:, None])
    assert "100 train / 30 test" in ds.description


def test_parse_idx_reads_header_dims_and_big_endian_data():
    a = np.arange(-6, 6, dtype=np.int32).reshape(2, 3, 2) * 100_000
    out = mnist.parse_idx(idx_bytes(a, 0x0C))
    assert out.shape == (2, 3, 2) and out.dtype == np.int32
    np.testing.assert_array_equal(out, a)
    f = mnist.parse_idx(idx_bytes(np.array([1.5, -2.25]), 0x0D))
    np.testing.assert_array_equal(f, [1.5, -2.25])


def _corrupt(case: str, folder: Path) -> None:
    images = folder / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    if case == "truncated-gzip":
        raw = images.read_bytes()
        images.write_bytes(raw[: len(raw) // 2])
    elif case == "truncated-idx":
        images.write_bytes(gzip.compress(data[:-100]))
    elif case == "trailing-bytes":
        images.write_bytes(gzip.compress(data + b"\0" * 7))
    elif case == "bad-magic":
        images.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + data[4:]))
    elif case == "not-gzip-garbage":
        images.unlink()
        (folder / "train-images-idx3-ubyte").write_bytes(b"<html>403 Forbidden</html>")
    elif case == "truncated-header":
        images.write_bytes(gzip.compress(data[:9]))
    elif case == "label-out-of-range":
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(100, 10, np.uint8))))
    elif case == "count-mismatch":
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(99, np.uint8))))
    elif case == "images-not-3d":
        images.write_bytes(gzip.compress(idx_bytes(np.zeros((100, 784), np.uint8))))


@pytest.mark.parametrize("case, words", [
    ("truncated-gzip", ["train-images-idx3-ubyte.gz", "corrupt gzip"]),
    ("truncated-idx", ["train-images-idx3-ubyte.gz", "truncated"]),
    ("trailing-bytes", ["train-images-idx3-ubyte.gz", "trailing"]),
    ("bad-magic", ["train-images-idx3-ubyte.gz", "not an idx file"]),
    ("not-gzip-garbage", ["train-images-idx3-ubyte", "not an idx file"]),
    ("truncated-header", ["train-images-idx3-ubyte.gz", "truncated idx header"]),
    ("label-out-of-range", ["train-labels-idx1-ubyte.gz", "label 10"]),
    ("count-mismatch", ["100 images", "99 labels"]),
    ("images-not-3d", ["train-images-idx3-ubyte.gz", "N x H x W"]),
])
def test_malformed_idx_is_a_user_error(tmp_path, case, words):
    write_idx_set(tmp_path / "mnist")
    _corrupt(case, tmp_path / "mnist")
    with pytest.raises(UserError) as info:
        mnist.load_mnist(tmp_path)
    for word in words:
        assert word in str(info.value)


def test_missing_mnist_names_directory_and_download_command(tmp_path):
    with pytest.raises(UserError) as info:
        mnist.load_mnist(tmp_path / "root")
    msg = str(info.value)
    assert "'mnist'" in msg and str(tmp_path / "root" / "mnist") in msg and "no such directory" in msg
    assert f"ssl-bench data download mnist --data-dir {tmp_path / 'root'}" in msg
    # a directory holding only some of the files: named with what it lacks
    write_idx_set(tmp_path / "root" / "mnist")
    (tmp_path / "root" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"missing t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz\)"):
        mnist.load_mnist(tmp_path / "root")


def test_fashion_mnist_looks_in_data_dir_then_debian_location(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share" / "fashion-mnist"
    monkeypatch.setattr(mnist, "DEBIAN_DIR", debian)
    with pytest.raises(UserError) as info:
        mnist.load_fashion_mnist(tmp_path / "root")
    msg = str(info.value)
    for word in ("'fashion_mnist'", str(tmp_path / "root" / "fashion_mnist"), str(debian),
                 "ssl-bench data download fashion_mnist", "apt-get install dataset-fashion-mnist"):
        assert word in msg
    write_idx_set(debian, n_train=50, gz=False)
    assert len(mnist.load_fashion_mnist(tmp_path / "root").train_y) == 50  # found in the system location
    write_idx_set(tmp_path / "root" / "fashion_mnist", n_train=70)
    ds = mnist.load_fashion_mnist(tmp_path / "root")
    assert len(ds.train_y) == 70 and str(tmp_path / "root" / "fashion_mnist") in ds.description  # data_dir first


@pytest.mark.skipif(not all((DEBIAN / f).is_file() for f in FASHION_MD5),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path):
    ds = mnist.load_fashion_mnist(tmp_path)  # empty data dir: found in /usr/share/datasets/fashion-mnist
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert np.bincount(ds.train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(ds.test_y.numpy()).tolist() == [1000] * 10
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)
    # Debian normalised the gzip headers (no file name, mtime of the build), so the files' own md5
    # differs from the official one; with the upstream header restored the bytes hash to it exactly
    for name, official in FASHION_MD5.items():
        path = DEBIAN / name
        assert mnist.upstream_gzip_md5(path, name[:-3], mnist.DEBIAN_UPSTREAM_MTIME[name]) == official, name
        assert mnist.SOURCES["fashion_mnist"]["md5"][name] == official


def test_upstream_gzip_md5_restores_a_stripped_header(tmp_path):
    payload = os.urandom(1000)
    original = gzip.compress(payload, mtime=1234567890)  # no file name in the header
    # the upstream form: same deflate data, FNAME set
    upstream = b"\x1f\x8b\x08\x08" + struct.pack("<I", 1234567890) + original[8:10] + b"x.bin\0" + original[10:]
    assert gzip.decompress(upstream) == payload
    stripped = original[:4] + struct.pack("<I", 99) + original[8:]
    (tmp_path / "x.gz").write_bytes(stripped)
    assert mnist.upstream_gzip_md5(tmp_path / "x.gz", "x.bin", 1234567890) == md5(upstream)
    assert mnist.upstream_gzip_md5(tmp_path / "x.gz", "x.bin", 1234567891) != md5(upstream)


# --------------------------------------------------------------------------- SVHN
def test_svhn_loads_mat_files(tmp_path):
    sets = write_svhn(tmp_path / "svhn")
    raw = scipy.io.loadmat(tmp_path / "svhn" / "train_32x32.mat")
    assert raw["X"].shape == (32, 32, 3, 40) and raw["y"].shape == (40, 1) and 10 in raw["y"]  # the real layout
    ds = svhn.load_svhn(tmp_path)
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_x.numpy(), sets["train"][0])
    np.testing.assert_array_equal(ds.test_x.numpy(), sets["test"][0])
    assert_pattern(ds.train_x)
    # 10 -> 0, the others unchanged
    np.testing.assert_array_equal(ds.train_y.numpy(), sets["train"][1])
    assert (ds.train_y == 0).sum() == 4 and ds.train_y.max() == 9
    assert len(ds.mean) == 3 and ds.mean[0] != ds.mean[1]  # channels kept apart (the pattern differs per position)
    assert_stats(ds, sets["train"][0])
    assert ds.augment is svhn.augment


def test_svhn_per_image_standardisation_is_the_authors_by_hand(tmp_path):
    write_svhn(tmp_path / "svhn")
    ds = svhn.load_svhn(tmp_path, normalisation="per_image")
    assert ds.mean == (0.0, 0.0, 0.0) and ds.std == (1.0, 1.0, 1.0)
    from ssl_bench.data import Domain

    x = Domain(ds, torch.device("cpu")).normalise(ds.train_x[:2])
    raw = ds.train_x[:2].double()  # 0-255: minus each image-channel's mean, over its variance + 1e-5
    centred = raw - raw.mean(dim=(2, 3), keepdim=True)
    expected = centred / (centred.square().mean(dim=(2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(x.double(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match=r"datasets\.svhn\.normalisation must be"):
        svhn.load_svhn(tmp_path, normalisation="zca")


def test_svhn_extra_is_appended_to_the_training_set(tmp_path):
    sets = write_svhn(tmp_path / "svhn")
    ds = svhn.load_svhn(tmp_path, extra=True)
    assert ds.train_x.shape == (70, 3, 32, 32) and len(ds.train_y) == 70 and len(ds.test_y) == 20
    np.testing.assert_array_equal(ds.train_x[40:].numpy(), sets["extra"][0])
    np.testing.assert_array_equal(ds.train_y.numpy(), np.concatenate([sets["train"][1], sets["extra"][1]]))
    assert_stats(ds, np.concatenate([sets["train"][0], sets["extra"][0]]))
    # extra is only needed when asked for
    (tmp_path / "svhn" / "extra_32x32.mat").unlink()
    assert len(svhn.load_svhn(tmp_path).train_y) == 40
    with pytest.raises(UserError, match="missing extra_32x32.mat"):
        svhn.load_svhn(tmp_path, extra=True)


def test_missing_svhn_names_directory_and_download_command(tmp_path):
    with pytest.raises(UserError) as info:
        svhn.load_svhn(tmp_path)
    msg = str(info.value)
    assert "'svhn'" in msg and str(tmp_path / "svhn") in msg
    assert f"ssl-bench data download svhn --data-dir {tmp_path}" in msg


@pytest.mark.parametrize("case, words", [
    ("garbage", ["train_32x32.mat", "cannot read"]),
    ("label-0", ["train_32x32.mat", "labels must be 1..10"]),
    ("no-y", ["train_32x32.mat", "X and y"]),
    ("float-X", ["train_32x32.mat", "uint8"]),
])
def test_malformed_svhn_is_a_user_error(tmp_path, case, words):
    write_svhn(tmp_path / "svhn")
    path = tmp_path / "svhn" / "train_32x32.mat"
    x = np.zeros((32, 32, 3, 5), np.uint8)
    if case == "garbage":
        path.write_bytes(b"not a mat file" * 20)
    elif case == "label-0":
        scipy.io.savemat(path, {"X": x, "y": np.zeros((5, 1), np.uint8)})
    elif case == "no-y":
        scipy.io.savemat(path, {"X": x})
    elif case == "float-X":
        scipy.io.savemat(path, {"X": x.astype(np.float64), "y": np.ones((5, 1), np.uint8)})
    with pytest.raises(UserError) as info:
        svhn.load_svhn(tmp_path)
    for word in words:
        assert word in str(info.value)


def test_augmentation_is_imported_when_called(monkeypatch):
    """svhn/stl10 attach a function that imports ssl_bench_plugins.augment.ops at call time (the module
    may not exist yet); here a stand-in module records the calls."""
    calls = []
    fake = types.ModuleType("ssl_bench_plugins.augment.ops")
    fake.svhn_augment = lambda x, g: calls.append(("svhn", g)) or x + 1
    fake.stl10_augment = lambda x, g: calls.append(("stl10", g)) or x * 2
    monkeypatch.setitem(sys.modules, "ssl_bench_plugins.augment.ops", fake)
    g = torch.Generator()
    x = torch.ones(2, 3, 4, 4)
    assert torch.equal(svhn.augment(x, g), x + 1) and torch.equal(stl10.augment(x, g), x * 2)
    assert calls == [("svhn", g), ("stl10", g)]


# --------------------------------------------------------------------------- STL-10
def test_stl10_loads_binaries(tmp_path):
    arrays = write_stl10(tmp_path / "stl10" / "stl10_binary")
    ds = stl10.load_stl10(tmp_path)
    assert ds.train_x.shape == (20, 3, 96, 96) and ds.test_x.shape == (10, 3, 96, 96)
    assert ds.unlabeled_x.shape == (12, 3, 96, 96) and ds.unlabeled_pool == 12
    assert ds.train_x.dtype == ds.unlabeled_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    for split in ("train", "test", "unlabeled"):
        got = getattr(ds, f"{split}_x")
        assert_pattern(got)  # the stored column-major layout is transposed back: top-left stays top-left
        np.testing.assert_array_equal(got.numpy(), arrays[f"{split}_x"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_y"])  # 1..10 -> 0..9
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_y"])
    assert set(ds.train_y.tolist()) == set(range(10))
    assert_stats(ds, arrays["train_x"])  # from the labeled training images only
    assert ds.augment is stl10.augment


def test_stl10_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(stl10, "CHUNK", 5)  # 12 unlabeled images: chunks 5, 5, 2
    arrays = write_stl10(tmp_path / "stl10" / "stl10_binary")
    np.testing.assert_array_equal(stl10.load_stl10(tmp_path).unlabeled_x.numpy(), arrays["unlabeled_x"])


def test_stl10_without_unlabeled_pool(tmp_path):
    write_stl10(tmp_path / "stl10" / "stl10_binary")
    with_pool = stl10.load_stl10(tmp_path)
    (tmp_path / "stl10" / "stl10_binary" / "unlabeled_X.bin").unlink()
    ds = stl10.load_stl10(tmp_path, unlabeled=False)
    assert ds.unlabeled_x is None and ds.unlabeled_pool is None and len(ds.train_y) == 20
    assert ds.mean == with_pool.mean and ds.std == with_pool.std
    with pytest.raises(UserError, match="missing unlabeled_X.bin"):
        stl10.load_stl10(tmp_path)


def test_stl10_files_directly_in_data_dir_are_found(tmp_path):
    write_stl10(tmp_path / "stl10", n_train=10)
    assert len(stl10.load_stl10(tmp_path).train_y) == 10


@pytest.mark.parametrize("case, words", [
    ("truncated-images", ["train_X.bin", "not a whole number"]),
    ("label-count", ["train_y.bin", "19 labels for 20 images"]),
    ("label-0", ["test_y.bin", "labels must be 1..10"]),
])
def test_malformed_stl10_is_a_user_error(tmp_path, case, words):
    folder = tmp_path / "stl10" / "stl10_binary"
    write_stl10(folder)
    if case == "truncated-images":
        raw = (folder / "train_X.bin").read_bytes()
        (folder / "train_X.bin").write_bytes(raw[:-1000])
    elif case == "label-count":
        (folder / "train_y.bin").write_bytes(np.ones(19, np.uint8).tobytes())
    elif case == "label-0":
        (folder / "test_y.bin").write_bytes(np.zeros(10, np.uint8).tobytes())
    with pytest.raises(UserError) as info:
        stl10.load_stl10(tmp_path)
    for word in words:
        assert word in str(info.value)


def test_missing_stl10_names_directories_and_download_command(tmp_path):
    with pytest.raises(UserError) as info:
        stl10.load_stl10(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "stl10" / "stl10_binary") in msg and str(tmp_path / "stl10") + " " in msg
    assert f"ssl-bench data download stl10 --data-dir {tmp_path}" in msg


# --------------------------------------------------------------------------- downloads
def test_download_verifies_checksum_and_renames_into_place(tmp_path):
    src = tmp_path / "server" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))  # several read chunks
    dest = tmp_path / "data" / "sub" / "f.bin"
    got = files.download_file(src.as_uri(), dest, md5=md5(src.read_bytes()))
    assert got == dest and dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["f.bin"]  # no temporary left
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest2 = tmp_path / "data" / "g.bin"
    files.download_file(src.as_uri(), dest2, sha256=sha.upper())
    assert dest2.read_bytes() == src.read_bytes()


def test_download_mismatch_deletes_file_and_raises(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"tampered content")
    dest = tmp_path / "data" / "f.bin"
    with pytest.raises(UserError) as info:
        files.download_file(src.as_uri(), dest, md5="0" * 32)
    msg = str(info.value)
    assert "md5 mismatch" in msg and "0" * 32 in msg and md5(b"tampered content") in msg
    assert not dest.exists() and os.listdir(dest.parent) == []
    with pytest.raises(UserError, match="sha256 mismatch"):
        files.download_file(src.as_uri(), dest, sha256="ab" * 32)
    assert os.listdir(dest.parent) == []


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dest = tmp_path / "f.bin"
    with pytest.raises(UserError) as info:
        files.download_file(["http://a.example/f.bin", "http://b.example/f.bin"], dest, md5="0" * 32)
    msg = str(info.value)
    assert "http://a.example/f.bin" in msg and "http://b.example/f.bin" in msg and "name resolution" in msg
    assert "No network?" in msg and str(dest) in msg
    assert list(tmp_path.iterdir()) == []


def test_download_tries_mirrors_and_skips_verified_files(tmp_path, monkeypatch):
    src = tmp_path / "good" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(b"payload")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "f.bin").write_bytes(b"wrong")
    dest = tmp_path / "data" / "f.bin"
    urls = [(tmp_path / "none" / "f.bin").as_uri(), (tmp_path / "bad" / "f.bin").as_uri(), src.as_uri()]
    files.download_file(urls, dest, md5=md5(b"payload"))
    assert dest.read_bytes() == b"payload"
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("verified file downloaded again"))
    files.download_file(urls, dest, md5=md5(b"payload"))
    monkeypatch.undo()
    dest.write_bytes(b"corrupt")  # a local copy with the wrong checksum is downloaded again
    files.download_file(urls, dest, md5=md5(b"payload"))
    assert dest.read_bytes() == b"payload" and os.listdir(dest.parent) == ["f.bin"]


def test_data_download_command_fetches_mnist(tmp_path, monkeypatch, capsys):
    """`ssl-bench data download mnist` through DatasetSpec.download, served from file:// URLs."""
    server = tmp_path / "server"
    write_idx_set(server)
    checksums = {f"{name}.gz": md5((server / f"{name}.gz").read_bytes()) for name in mnist.FILES}
    monkeypatch.setitem(mnist.SOURCES, "mnist", {"mirrors": ((tmp_path / "down").as_uri() + "/", server.as_uri() + "/"),
                                                 "md5": checksums})
    root = tmp_path / "data"
    assert cli_main(["data", "download", "mnist", "--data-dir", str(root)]) == 0
    assert sorted(os.listdir(root / "mnist")) == sorted(checksums)
    assert len(mnist.load_mnist(root).train_y) == 100
    # a checksum that does not match: exit 2, one error line, the file not kept
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setitem(checksums, "t10k-labels-idx1-ubyte.gz", "f" * 32)
    capsys.readouterr()
    assert cli_main(["data", "download", "mnist", "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert err[-1].startswith("ssl-bench: error: could not download t10k-labels-idx1-ubyte.gz")
    assert "md5 mismatch" in err[-1] and "f" * 32 in err[-1]
    assert not (root / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_download_svhn_fetches_all_three_files(tmp_path, monkeypatch):
    server = tmp_path / "server"
    write_svhn(server)
    monkeypatch.setattr(svhn, "URL", server.as_uri() + "/")
    monkeypatch.setattr(svhn, "MD5", {f: md5((server / f).read_bytes()) for f in svhn.MD5})
    registry().dataset("svhn").download(tmp_path / "data")
    assert len(svhn.load_svhn(tmp_path / "data", extra=True).train_y) == 70


def test_download_stl10_extracts_verifies_and_removes_archive(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    arrays = write_stl10(staging / "stl10_binary")
    (staging / "stl10_binary" / "class_names.txt").write_text("airplane\n")
    archive = tmp_path / "server" / "stl10_binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "stl10_binary", arcname="stl10_binary")
    monkeypatch.setattr(stl10, "URL", archive.as_uri())
    monkeypatch.setattr(stl10, "ARCHIVE_MD5", md5(archive.read_bytes()))
    monkeypatch.setattr(stl10, "FILE_MD5", {f: md5((staging / "stl10_binary" / f).read_bytes())
                                            for f in stl10.FILE_MD5})
    root = tmp_path / "data"
    registry().dataset("stl10").download(root)
    assert sorted(os.listdir(root / "stl10")) == ["stl10_binary"]  # archive deleted, no temporaries
    ds = stl10.load_stl10(root)
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train_x"])
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded although verified"))
    stl10.download_stl10(root)  # everything verified: nothing fetched
    # an archive whose contents do not have the expected checksums is reported
    monkeypatch.setattr(stl10, "FILE_MD5", {**stl10.FILE_MD5, "test_y.bin": "0" * 32})
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(archive.read_bytes()))
    with pytest.raises(UserError, match="test_y.bin"):
        stl10.download_stl10(root)


def test_extract_rejects_members_escaping_the_directory(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("stl10_binary/ok.bin", "stl10_binary/../evil.bin"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "into").mkdir()
    with pytest.raises(UserError, match="evil.bin"):
        files.extract_tar(archive, tmp_path / "into", "stl10_binary")
    assert os.listdir(tmp_path / "into") == [] and not (tmp_path / "evil.bin").exists()


def test_channel_stats_is_exact_and_chunked():
    x = np.random.default_rng(5).integers(0, 256, size=(37, 3, 5, 4), dtype=np.uint8)
    mean, std = files.channel_stats(x, chunk=8)
    scaled = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-13)
    assert files.channel_stats(np.full((3, 1, 2, 2), 7, np.uint8))[1] == (0.0,)


# --------------------------------------------------------------------------- CLI end to end
MNIST_GRID = """
name = "mnist_tiny"
[base]
dataset = "mnist"
backbone = "lba_convnet"
method = "lba"
steps = 2
eval_every = 2
last_k = 1
labeled_per_class = 2
unlabeled_batch = 20
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
[axes]
n_labeled = [20]
n_unlabeled = [0, 50]
[[table]]
name = "t"
rows = "n_labeled"
columns = "n_unlabeled"
metric = "test_error"
"""


def test_cli_runs_a_grid_on_mnist_files(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_idx_set(tmp_path / "data" / "mnist")
    grid = write_grid(tmp_path, MNIST_GRID)
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--data-dir", str(tmp_path / "data"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_parquet(out / "mnist_tiny" / "runs")
    assert len(rows) == 2 and set(rows["status"]) == {"ok"} and set(rows["dataset"]) == {"mnist"}
    assert (rows["steps_done"] == 2).all() and sorted(rows["n_unlabeled"]) == [0, 50]


def test_cli_run_without_svhn_files_exits_2_and_writes_nothing(tmp_path):
    grid = write_grid(tmp_path, MNIST_GRID.replace('dataset = "mnist"', 'dataset = "svhn"'))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--data-dir", str(empty), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: error: data set 'svhn'"), proc.stderr
    assert str(empty / "svhn") in lines[0] and f"ssl-bench data download svhn --data-dir {empty}" in lines[0]
    assert not out.exists() and os.listdir(empty) == [] and sorted(os.listdir(tmp_path)) == ["empty", "g.toml"]
