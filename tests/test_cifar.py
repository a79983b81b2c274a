"""CIFAR-10 / CIFAR-100 (plugins/datasets/cifar.py): the python batches, whitening, checksummed downloads.

No network here, so the format is tested on SMALL files written by the test the way the real
ones were written: Python 2's cPickle (protocol 2) of numpy 1.x arrays, emitted opcode by
opcode below (dict keys and the array's raw bytes as Python 2 byte strings, which is why the
files must be read with ``encoding="latin1"``; the array through ``numpy.core.multiarray.
_reconstruct``), and read through the same ``load`` function a run uses. Images carry a known
pattern (distinct values at the top-left pixel, the pixel to its right and the one below it in
every channel, and a different value per channel at the bottom-right pixel), so a transposed,
flipped or channel-swapped loader fails. Downloads are served from ``file://`` URLs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import pickletools
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_bench import UserError
from ssl_bench.registry import registry
from ssl_bench_plugins.datasets import cifar
from test_datasets import assert_pattern, assert_stats, patterned

#: md5 sums of torchvision/datasets/cifar.py (CIFAR10/CIFAR100: tgz_md5, train_list, test_list,
#: meta), written out here independently of the plugin
TORCHVISION_MD5 = {
    "cifar10": {"archive": "c58f30108f718f92721af3b95e74349a",
                "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    "cifar100": {"archive": "eb9058c3a382ffc7106e4002c42a8d85", "train": "16019d7e3df5f24257cddd939b257f8d",
                 "test": "f0ef6b0ae62326f3e7ffdfab6717acfc", "meta": "7973b15100ade9c7d40fb424638fde48"},
}
#: a different value per channel at the bottom-right pixel (the noise of ``patterned`` is 0..50)
CHANNEL_MARK = (200, 180, 160)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- a Python 2 cPickle writer
def _py2_str(s: bytes) -> bytes:
    """A Python 2 byte string: SHORT_BINSTRING (< 256 bytes) or BINSTRING."""
    return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<i", len(s)) + s


def _int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _ndarray(a: np.ndarray) -> bytes:
    """numpy 1.x's pickle of a uint8 C-order array under Python 2 (ndarray.__reduce__)."""
    assert a.dtype == np.uint8 and a.flags.c_contiguous
    shape = b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _py2_str(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R" + b"(" + _int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb")


def py2_pickle(entries: dict) -> bytes:
    """A dict of str -> (uint8 array | list of int | list of str | str | int), as Python 2's
    ``cPickle.dump(d, f, 2)`` wrote the CIFAR batches: PROTO 2, EMPTY_DICT, MARK, the items, SETITEMS."""
    out = [b"\x80\x02}("]
    for key, value in entries.items():
        out.append(_py2_str(key.encode()))
        if isinstance(value, np.ndarray):
            out.append(_ndarray(value))
        elif isinstance(value, list):
            items = [_int(v) if isinstance(v, int) else _py2_str(v.encode()) for v in value]
            out.append(b"](" + b"".join(items) + b"e")
        elif isinstance(value, str):
            out.append(_py2_str(value.encode()))
        else:
            out.append(_int(value))
    return b"".join(out) + b"u."


def cifar_images(n: int, seed: int) -> np.ndarray:
    x = patterned(n, 3, 32, 32, seed=seed)
    for c, mark in enumerate(CHANNEL_MARK):
        x[:, c, 31, 31] = mark
    return x


def batch_entries(x: np.ndarray, labels: np.ndarray, label_key: str, name: str) -> dict:
    entries = {"batch_label": name, label_key: [int(v) for v in labels], "data": x.reshape(len(x), -1),
               "filenames": [f"img_{i}.png" for i in range(len(x))]}
    if label_key == "fine_labels":
        entries["coarse_labels"] = [int(v) // 5 for v in labels]
    return entries


def write_cifar10(folder: Path, n_train: int = 60, n_test: int = 20) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py``: data_batch_1..5 (the training images split in 5), test_batch,
    batches.meta; labels cycle through 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, test_x = cifar_images(n_train, seed=30), cifar_images(n_test, seed=31)
    train_y, test_y = np.arange(n_train) % 10, (np.arange(n_test) * 3 + 1) % 10
    bounds = np.linspace(0, n_train, 6).astype(int)
    for i in range(5):
        part = slice(bounds[i], bounds[i + 1])
        (folder / f"data_batch_{i + 1}").write_bytes(
            py2_pickle(batch_entries(train_x[part], train_y[part], "labels", f"training batch {i + 1} of 5")))
    (folder / "test_batch").write_bytes(py2_pickle(batch_entries(test_x, test_y, "labels", "testing batch 1 of 1")))
    (folder / "batches.meta").write_bytes(py2_pickle({"num_cases_per_batch": 10000, "label_names": [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"], "num_vis": 3072}))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_cifar100(folder: Path, n_train: int = 300, n_test: int = 40) -> dict[str, np.ndarray]:
    """``cifar-100-python``: train, test (fine labels 0..99, coarse = fine // 5), meta."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, test_x = cifar_images(n_train, seed=40), cifar_images(n_test, seed=41)
    train_y, test_y = (np.arange(n_train) * 7) % 100, (np.arange(n_test) * 13) % 100
    (folder / "train").write_bytes(py2_pickle(batch_entries(train_x, train_y, "fine_labels", "training batch 1 of 1")))
    (folder / "test").write_bytes(py2_pickle(batch_entries(test_x, test_y, "fine_labels", "testing batch 1 of 1")))
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": [f"f{i}" for i in range(100)],
                                              "coarse_label_names": [f"c{i}" for i in range(20)]}))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def test_the_writer_emits_python_2_pickles():
    """What the real files need: latin1 decoding (the ASCII default fails on the raw bytes), str keys,
    the array rebuilt by numpy.core.multiarray._reconstruct."""
    raw = py2_pickle(batch_entries(cifar_images(3, seed=0), np.array([1, 2, 3]), "labels", "b"))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    entry = pickle.loads(raw, encoding="latin1")
    assert sorted(entry) == ["batch_label", "data", "filenames", "labels"]
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (3, 3072) and entry["labels"] == [1, 2, 3]
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "SHORT_BINSTRING" in opcodes and "BINSTRING" in opcodes and "BINUNICODE" not in opcodes
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and raw[:2] == b"\x80\x02"


# --------------------------------------------------------------------------- loading
def test_cifar10_loads_python_batches(tmp_path):
    arrays = write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = cifar.load_cifar10(tmp_path)
    assert ds.train_x.shape == (60, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == ds.test_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train_x"])   # all five batches, in order
    np.testing.assert_array_equal(ds.test_x.numpy(), arrays["test_x"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_y"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_y"])
    for x in (ds.train_x, ds.test_x):
        assert_pattern(x)  # rows of the 3072 are R, G, B planes, each row-major: no transpose needed
        assert [int(x[0, c, 31, 31]) for c in range(3)] == list(CHANNEL_MARK)
    assert ds.num_classes == 10 and ds.augment is None and ds.unlabeled_x is None
    assert_stats(ds, arrays["train_x"])  # zscore (the default): per-channel, from the training images only
    assert ds.mean[0] != ds.mean[2]
    assert "60 train / 20 test" in ds.description and "whitening zscore" in ds.description


def test_cifar100_uses_the_fine_labels(tmp_path):
    arrays = write_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    ds = cifar.load_cifar100(tmp_path)
    assert ds.num_classes == 100 and ds.train_x.shape == (300, 3, 32, 32) and ds.test_x.shape == (40, 3, 32, 32)
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_y"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_y"])
    assert ds.train_y.max() == 99 and len(set(ds.train_y.tolist())) == 100
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train_x"])
    assert_pattern(ds.train_x)
    assert_stats(ds, arrays["train_x"])


def test_whitening_none_leaves_pixels_in_0_1(tmp_path):
    write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = cifar.load_cifar10(tmp_path, whitening="none")
    assert ds.mean == (0.0, 0.0, 0.0) and ds.std == (1.0, 1.0, 1.0)


def test_python3_pickles_with_bytes_keys_load_too(tmp_path):
    """A file re-saved from Python 3 (protocol 2, bytes keys, numpy 2's module path)."""
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    arrays = write_cifar10(folder)
    x, y = arrays["train_x"][:12], arrays["train_y"][:12]
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": x.reshape(12, -1), b"labels": y.tolist()}, protocol=2))
    ds = cifar.load_cifar10(tmp_path)
    np.testing.assert_array_equal(ds.train_x[:12].numpy(), x)
    np.testing.assert_array_equal(ds.train_y[:12].numpy(), y)


def test_files_directly_in_the_data_set_directory_are_found(tmp_path):
    write_cifar10(tmp_path / "cifar10", n_train=20)
    assert len(cifar.load_cifar10(tmp_path).train_y) == 20


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("case, words", [
    ("garbage", ["data_batch_3", "cannot read"]),
    ("truncated", ["data_batch_3", "cannot read"]),
    ("not-a-dict", ["data_batch_3", "expected a pickled dict"]),
    ("no-labels", ["data_batch_3", "'labels'"]),
    ("float-data", ["data_batch_3", "uint8 array N x 3072"]),
    ("wrong-width", ["data_batch_3", "uint8 array N x 3072", "(12, 1024)"]),
    ("label-count", ["data_batch_3", "12 images", "not 12 integer labels"]),
    ("label-range", ["data_batch_3", "labels must be 0..9", "0..10"]),
    ("code", ["data_batch_3", "refusing to load global", "system"]),
])
def test_malformed_batches_are_user_errors(tmp_path, monkeypatch, case, words):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar10(folder)
    path = folder / "data_batch_3"
    good = cifar_images(12, seed=3).reshape(12, -1)
    entries = {
        "not-a-dict": None,
        "no-labels": {"data": good},
        "float-data": {"data": good.astype(np.float32), "labels": [0] * 12},
        "wrong-width": {"data": good[:, :1024].copy(), "labels": [0] * 12},
        "label-count": {"data": good, "labels": [0] * 11},
        "label-range": {"data": good, "labels": [10] + [0] * 11},
    }
    if case == "garbage":
        path.write_bytes(b"<html>404</html>")
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "not-a-dict":
        path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    elif case == "code":
        path.write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    else:
        path.write_bytes(pickle.dumps(entries[case], protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        cifar.load_cifar10(tmp_path)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_missing_files_name_directories_and_download_command(tmp_path):
    with pytest.raises(UserError) as info:
        cifar.load_cifar10(tmp_path / "root")
    msg = str(info.value)
    assert "'cifar10'" in msg and str(tmp_path / "root" / "cifar10" / "cifar-10-batches-py") in msg
    assert "no such directory" in msg and f"ssl-bench data download cifar10 --data-dir {tmp_path / 'root'}" in msg
    assert "cifar-10-python.tar.gz" in msg
    folder = tmp_path / "root" / "cifar10" / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(UserError, match=r"missing data_batch_4\)"):
        cifar.load_cifar10(tmp_path / "root")
    with pytest.raises(UserError, match="ssl-bench data download cifar100"):
        cifar.load_cifar100(tmp_path / "root")


def test_registered_with_parameters_and_downloads():
    reg = registry()
    for name in ("cifar10", "cifar100"):
        spec = reg.dataset(name)
        assert spec.download is not None and spec.help
        params = {p.name: (p.type, p.default, p.choices) for p in spec.params}
        assert params == {"whitening": (str, "zscore", ("zscore", "none", "zca")), "zca_epsilon": (float, 0.1, None)}


# --------------------------------------------------------------------------- checksums and downloads
def test_checksums_are_torchvisions():
    for name, source in cifar.SOURCES.items():
        expected = TORCHVISION_MD5[name]
        assert source.archive_md5 == expected["archive"]
        assert source.md5 == {k: v for k, v in expected.items() if k != "archive"}
        assert set(source.md5) == {*source.train, source.test, source.meta}
    torchvision_cifar = pytest.importorskip("torchvision.datasets.cifar")
    for name, cls in (("cifar10", torchvision_cifar.CIFAR10), ("cifar100", torchvision_cifar.CIFAR100)):
        source = cifar.SOURCES[name]
        assert (cls.url, cls.tgz_md5, cls.base_folder) == (source.url, source.archive_md5, source.folder)
        assert dict(cls.train_list + cls.test_list) == {f: source.md5[f] for f in (*source.train, source.test)}
        assert cls.meta["md5"] == source.md5[cls.meta["filename"]] and cls.meta["filename"] == source.meta


def _archive(tmp_path: Path, name: str) -> tuple[Path, dict[str, str], dict[str, np.ndarray]]:
    source = cifar.SOURCES[name]
    staging = tmp_path / "staging" / source.folder
    arrays = (write_cifar10 if name == "cifar10" else write_cifar100)(staging)
    (staging / "readme.html").write_text("<html></html>")
    archive = tmp_path / "server" / source.url.rsplit("/", 1)[1]
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=source.folder)
    return archive, {f: md5((staging / f).read_bytes()) for f in source.md5}, arrays


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_extracts_verifies_and_removes_the_archive(tmp_path, monkeypatch, name):
    archive, checksums, arrays = _archive(tmp_path, name)
    source = cifar.SOURCES[name]
    monkeypatch.setitem(cifar.SOURCES, name, dataclasses.replace(source, url=archive.as_uri(),
                                                                 archive_md5=md5(archive.read_bytes()), md5=checksums))
    root = tmp_path / "data"
    registry().dataset(name).download(root)
    assert sorted(os.listdir(root / name)) == [source.folder]  # archive deleted, no temporaries
    ds = cifar.load_cifar(name, root)
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train_x"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_y"])
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded although verified"))
    cifar.download(name, root)  # everything verified: nothing fetched


def test_download_reports_files_with_the_wrong_checksum(tmp_path, monkeypatch):
    archive, checksums, _ = _archive(tmp_path, "cifar10")
    bad = {**checksums, "test_batch": "0" * 32}
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(
        cifar.SOURCES["cifar10"], url=archive.as_uri(), archive_md5=md5(archive.read_bytes()), md5=bad))
    with pytest.raises(UserError, match="wrong md5: test_batch"):
        cifar.download("cifar10", tmp_path / "data")
    # an archive with the wrong checksum is not kept and nothing is extracted
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(
        cifar.SOURCES["cifar10"], url=archive.as_uri(), archive_md5="f" * 32, md5=checksums))
    other = tmp_path / "other"
    with pytest.raises(UserError, match="md5 mismatch"):
        cifar.download("cifar10", other)
    assert os.listdir(other / "cifar10") == []


def test_download_serves_the_official_urls(tmp_path, monkeypatch):
    """Without a network: urlopen is patched to serve the archive for the official URL only."""
    archive, checksums, _ = _archive(tmp_path, "cifar10")
    official = cifar.SOURCES["cifar10"]
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(
        official, archive_md5=md5(archive.read_bytes()), md5=checksums))
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return io.BytesIO(archive.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    cifar.download("cifar10", tmp_path / "data")
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert len(cifar.load_cifar10(tmp_path / "data").train_y) == 60


# --------------------------------------------------------------------------- ZCA whitening
def correlated_images(n: int, shape=(1, 3, 4), seed: int = 0) -> np.ndarray:
    """uint8 images whose pixels are strongly correlated (a shared brightness plus a smooth ramp)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    base = rng.normal(128, 40, size=(n, 1)) + rng.normal(0, 10, size=(n, d)) + np.linspace(0, 30, d) * rng.normal(
        1, 0.5, size=(n, 1))
    return np.clip(base, 0, 255).astype(np.uint8).reshape(n, *shape)


def whiten(zca: cifar.ZCAWhitening, images: np.ndarray) -> np.ndarray:
    return zca(torch.from_numpy(images).double() / 255.0).reshape(len(images), -1).numpy()


def test_zca_whitened_training_covariance_is_the_identity():
    train = correlated_images(500)
    raw = train.reshape(500, -1) / 255.0
    assert abs(np.corrcoef(raw.T)[0, 11]) > 0.5  # strongly correlated before
    zca = cifar.fit_zca(train, epsilon=1e-9)
    white = whiten(zca, train)
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(12), atol=1e-4)
    w = zca.matrix.double().numpy()
    np.testing.assert_allclose(w, w.T, atol=1e-5)  # symmetric: the zero-phase (ZCA) whitening matrix
    np.testing.assert_allclose(zca.mean.double().numpy(), raw.mean(0), atol=1e-6)


def test_zca_regulariser_shrinks_small_eigenvalues_only():
    train = correlated_images(500)
    zca = cifar.fit_zca(train, epsilon=0.1)
    eigenvalues = np.linalg.eigvalsh(np.cov(whiten(zca, train).T, bias=True))
    cov = np.cov((train.reshape(500, -1) / 255.0).T, bias=True)
    lam = np.linalg.eigvalsh(cov)
    expected = lam / (lam + 0.1 * lam.mean())  # relative to the mean eigenvalue
    np.testing.assert_allclose(np.sort(eigenvalues), np.sort(expected), atol=1e-4)
    assert expected.max() > 0.99 and expected.min() < 0.5


@pytest.mark.parametrize("n", [8, 40])
def test_zca_gram_and_covariance_routes_agree(n):
    images = correlated_images(n, shape=(2, 3, 3), seed=n)  # D = 18: fewer and more images than dimensions
    a = cifar.fit_zca(images, epsilon=0.05, method="covariance")
    b = cifar.fit_zca(images, epsilon=0.05, method="gram", chunk=3)
    torch.testing.assert_close(a.matrix, b.matrix, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.mean, b.mean)


def test_zca_transform_works_on_batches_of_its_shape_only():
    zca = cifar.fit_zca(correlated_images(50), epsilon=0.1)
    x = torch.rand(4, 1, 3, 4)
    out = zca(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.reshape(4, -1), (x.reshape(4, -1) - zca.mean) @ zca.matrix)
    with pytest.raises(ValueError, match="fitted on"):
        zca(torch.rand(4, 1, 4, 3))
    with pytest.raises(ValueError, match="epsilon"):
        cifar.fit_zca(correlated_images(5), epsilon=0)



def test_zca_is_fitted_on_the_training_set_only(tmp_path):
    """Through the loader: the transform's mean is the training images' mean, and the whitened training images have an
    identity covariance on the subspace they span (60 images, 3,072 dimensions: a projector of
    rank 59), which the test images, not seen by the fit, do not."""
    arrays = write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = cifar.load_cifar10(tmp_path, whitening="zca", zca_epsilon=1e-6)
    assert ds.mean == (0.0, 0.0, 0.0) and ds.std == (1.0, 1.0, 1.0) and "whitening zca" in ds.description
    train = arrays["train_x"].reshape(60, -1) / 255.0
    np.testing.assert_allclose(ds.transform.mean.double().numpy(), train.mean(0), atol=1e-6)
    white = whiten(ds.transform, arrays["train_x"])
    cov = white.T @ white / 60
    np.testing.assert_allclose(cov @ cov, cov, atol=2e-3)  # a projector ...
    assert np.trace(cov) == pytest.approx(59, abs=0.05)     # ... of rank 59
    test_white = whiten(ds.transform, arrays["test_x"])
    test_cov = test_white.T @ test_white / len(test_white)
    assert np.abs(test_cov @ test_cov - test_cov).max() > 1.0


def test_zca_reaches_the_network_through_the_core(tmp_path):
    """With the core's hook, training and evaluation batches are ZCA-whitened (mean 0, std 1 after)."""
    from ssl_bench.data import DeviceData, draw_subsets

    write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = cifar.load_cifar10(tmp_path, whitening="zca")
    subsets = draw_subsets(ds.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled=10, overlap=True)
    data = DeviceData(ds, subsets, torch.device("cpu"), seed=0)
    x = ds.test_x[:5]
    torch.testing.assert_close(data.normalise(x), ds.transform(x.float() / 255))
    raw = ds.train_x[:7]
    torch.testing.assert_close(data.training_batch(raw), ds.transform(raw.float() / 255))
    assert not torch.allclose(data.training_batch(raw), (raw.float() / 255 - torch.tensor(ds.mean).view(1, 3, 1, 1)))


def test_bad_whitening_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="whitening must be"):
        cifar.load_cifar10(tmp_path, whitening="pca")
    with pytest.raises(UserError, match="zca_epsilon must be positive"):
        cifar.load_cifar10(tmp_path, whitening="zca", zca_epsilon=0.0)
