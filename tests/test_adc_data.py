"""The data of associative deep clustering (Haeusser et al. 2018, §3.5): FRGC in JULE's release
(plugins/datasets/frgc.py), SVHN's training set + a 150k subset of extra (svhn.py ``extra_count``)
and STL-10's 5,000 labeled training images only (stl10.py ``unlabeled = false``).

No network here, so each format is written by the test in its genuine on-disk layout and read
through the same ``load`` function a run uses: FRGC as JULE's MATLAB-written HDF5 file (``data``
N x C x W x H, ``labels`` N x 1 subject ids; h5py), SVHN as format-2 .mat files, STL-10 as
column-major binaries. Images carry a known pattern (distinct values at the top-left pixel, the
pixel to its right and the pixel below it), so a transposed or flipped loader fails. FRGC's
download is served from ``file://`` URLs and checked against ``git hash-object``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from ssl_bench import ALL, UserError
from ssl_bench.data import draw_subsets
from ssl_bench.params import validate
from ssl_bench.registry import registry
from ssl_bench_plugins.datasets import files, frgc, stl10, svhn

h5py = pytest.importorskip("h5py")

TL, RIGHT, BELOW = 255, 128, 64


def patterned(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 N x C x H x W noise in 0..50 with the pattern in every image and channel."""
    x = np.random.default_rng(seed).integers(0, 51, size=(n, c, h, w), dtype=np.uint8)
    x[:, :, 0, 0], x[:, :, 0, 1], x[:, :, 1, 0] = TL, RIGHT, BELOW
    return x


def assert_pattern(x: torch.Tensor) -> None:
    assert (x[:, :, 0, 0] == TL).all() and (x[:, :, 0, 1] == RIGHT).all() and (x[:, :, 1, 0] == BELOW).all()


# --------------------------------------------------------------------------- FRGC
#: subject ids as a MATLAB script might store them: not 0..K-1, not in order
SUBJECTS = np.array([17, 3, 42, 8, 99])


def write_frgc(path: Path, n: int = 23, dtype=np.float64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """JULE's ``data4torch.h5``: MATLAB's H x W x C x N written column-major, i.e. ``data`` read
    row-major is N x C x W x H; ``labels`` (MATLAB 1 x N) is N x 1. Returns (N x C x H x W, ids)."""
    x = patterned(n, 3, 32, 32, seed)
    ids = SUBJECTS[np.arange(n) % len(SUBJECTS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=x.transpose(0, 1, 3, 2).astype(dtype))
        f.create_dataset("labels", data=ids.astype(np.float64)[:, None])
    return x, ids


@pytest.mark.parametrize("dtype", [np.float64, np.uint8], ids=["double", "uint8"])
def test_frgc_loads_jule_file_with_train_equal_to_test(tmp_path, dtype):
    x, ids = write_frgc(tmp_path / "frgc" / "data4torch.h5", dtype=dtype)
    ds = frgc.load_frgc(tmp_path)
    assert ds.train_x.shape == (23, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert_pattern(ds.train_x)
    np.testing.assert_array_equal(ds.train_x.numpy(), x)
    # ids mapped to 0..K-1 in sorted order: 3 -> 0, 8 -> 1, 17 -> 2, 42 -> 3, 99 -> 4
    assert ds.num_classes == 5
    np.testing.assert_array_equal(ds.train_y.numpy(), np.searchsorted(np.sort(SUBJECTS), ids))
    assert ds.train_y.dtype == torch.int64
    assert ds.test_x is ds.train_x and ds.test_y is ds.train_y  # the protocol clusters the whole set
    assert ds.unlabeled_pool is None and ds.augment is None
    assert (ds.mean, ds.std) == files.channel_stats(x)
    assert "23 faces of 5 subjects" in ds.description and "train = test" in ds.description


def test_frgc_through_the_registry_and_jule_folder_name(tmp_path):
    spec = registry().dataset("frgc")
    assert spec.params == [] and spec.download is frgc.download_frgc
    write_frgc(tmp_path / "FRGC" / "data4torch.h5", n=10)  # a JULE checkout's datasets/ as the data dir
    ds = spec.load(tmp_path)
    assert len(ds.train_y) == 10 and ds.input_shape == (3, 32, 32)


def test_frgc_rounds_non_integral_pixels_and_takes_flat_labels(tmp_path):
    path = tmp_path / "frgc" / "data4torch.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.full((4, 3, 32, 32), 254.6))
        f.create_dataset("labels", data=np.array([2, 1, 2, 1]))
    ds = frgc.load_frgc(tmp_path)
    assert (ds.train_x == 255).all() and ds.train_y.tolist() == [1, 0, 1, 0] and ds.num_classes == 2


def test_missing_frgc_names_the_paths_and_the_source(tmp_path):
    with pytest.raises(UserError) as err:
        frgc.load_frgc(tmp_path)
    msg = str(err.value)
    assert "'frgc'" in msg and "data4torch.h5" in msg
    assert str(tmp_path / "frgc") in msg and str(tmp_path / "FRGC") in msg
    assert "github.com/jwyang/JULE.torch" in msg and str(tmp_path / "frgc" / "data4torch.h5") in msg
    assert f"ssl-bench data download frgc --data-dir {tmp_path}" in msg


@pytest.mark.parametrize("case, words", [
    ("no labels", "missing labels"),
    ("label count", "23 images but 22 labels"),
    ("whitened", "0..255"),
    ("not hdf5", "cannot read as an HDF5 file"),
    ("3-d data", "N x C x W x H"),
])
def test_malformed_frgc_is_a_user_error(tmp_path, case, words):
    path = tmp_path / "frgc" / "data4torch.h5"
    x, ids = write_frgc(path)
    if case == "not hdf5":
        path.write_bytes(b"this is not an HDF5 file" * 10)
    else:
        with h5py.File(path, "a") as f:
            if case == "no labels":
                del f["labels"]
            elif case == "label count":
                del f["labels"]
                f.create_dataset("labels", data=ids[:-1, None])
            elif case == "whitened":
                del f["data"]
                f.create_dataset("data", data=(x.astype(np.float64) - 128) / 64)
            elif case == "3-d data":
                del f["data"]
                f.create_dataset("data", data=x[:, 0])
    with pytest.raises(UserError, match=words):
        frgc.load_frgc(tmp_path)


def test_git_blob_id_is_what_git_computes(tmp_path):
    path = tmp_path / "data4torch.h5"
    write_frgc(path, n=5)
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert frgc.git_blob_id(path) == expected.stdout.strip()


def test_frgc_download_verifies_the_git_blob_id(tmp_path, monkeypatch, capsys):
    served = tmp_path / "served" / "data4torch.h5"
    x, _ = write_frgc(served, n=6)
    wrong = tmp_path / "served" / "other.h5"
    write_frgc(wrong, n=6, seed=1)
    monkeypatch.setattr(frgc, "GIT_BLOB_ID", frgc.git_blob_id(served))
    data = tmp_path / "data"

    monkeypatch.setattr(frgc, "URLS", (wrong.as_uri(),))
    with pytest.raises(UserError, match="git blob id mismatch") as err:
        frgc.download_frgc(data)
    assert "Without a network, copy" in str(err.value)
    assert not (data / "frgc" / "data4torch.h5").exists() and not list((data / "frgc").iterdir())

    monkeypatch.setattr(frgc, "URLS", ((tmp_path / "nowhere.h5").as_uri(), wrong.as_uri(), served.as_uri()))
    frgc.download_frgc(data)  # the first URL fails, the second mismatches, the third is right
    np.testing.assert_array_equal(frgc.load_frgc(data).train_x.numpy(), x)
    assert sorted(p.name for p in (data / "frgc").iterdir()) == ["data4torch.h5"]  # no partial file left
    capsys.readouterr()
    frgc.download_frgc(data)
    assert "present, git blob id verified" in capsys.readouterr().err


# --------------------------------------------------------------------------- SVHN: train + a subset of extra
def write_svhn_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """SVHN format 2: X is H x W x 3 x N uint8, y is N x 1 with 10 for the digit 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
    scipy.io.savemat(path, {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)), "y": y})


def write_svhn(folder: Path, n_train=40, n_test=20, n_extra=30) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sets = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test), ("extra", n_extra))):
        x, y = patterned(n, 3, 32, 32, seed=10 + i), (np.arange(n) * 3 + i) % 10
        write_svhn_mat(folder / f"{split}_32x32.mat", x, y)
        sets[split] = (x, y)
    return sets


def test_svhn_extra_count_appends_a_seeded_subset_in_file_order(tmp_path):
    sets = write_svhn(tmp_path / "svhn")
    ds = svhn.load_svhn(tmp_path, extra=True, extra_count=12, extra_seed=5)
    assert ds.train_x.shape == (52, 3, 32, 32) and len(ds.train_y) == 52
    assert_pattern(ds.train_x)
    np.testing.assert_array_equal(ds.train_x[:40].numpy(), sets["train"][0])
    chosen = np.sort(np.random.default_rng(5).choice(30, 12, replace=False))  # the documented draw
    np.testing.assert_array_equal(ds.train_x[40:].numpy(), sets["extra"][0][chosen])
    np.testing.assert_array_equal(ds.train_y[40:].numpy(), sets["extra"][1][chosen])
    assert (ds.mean, ds.std) == files.channel_stats(ds.train_x.numpy())  # statistics of the images used
    assert len(ds.test_y) == 20

    again = svhn.load_svhn(tmp_path, extra=True, extra_count=12, extra_seed=5)
    other = svhn.load_svhn(tmp_path, extra=True, extra_count=12, extra_seed=6)
    assert torch.equal(again.train_x, ds.train_x) and not torch.equal(other.train_x, ds.train_x)
    everything = svhn.load_svhn(tmp_path, extra=True)
    assert torch.equal(svhn.load_svhn(tmp_path, extra=True, extra_count=ALL).train_x, everything.train_x)
    assert torch.equal(svhn.load_svhn(tmp_path, extra=True, extra_count=30).train_x, everything.train_x)


def test_svhn_extra_count_errors(tmp_path):
    write_svhn(tmp_path / "svhn")
    with pytest.raises(UserError, match=r"extra_count = 31 but the extra set has only 30 images"):
        svhn.load_svhn(tmp_path, extra=True, extra_count=31)
    with pytest.raises(UserError, match="needs extra = true"):
        svhn.load_svhn(tmp_path, extra_count=10)


def test_svhn_extra_keys_are_typed_and_stay_out_of_run_ids_at_default():
    params = {p.name: p for p in registry().dataset("svhn").params}
    assert not params["extra_count"].in_id_at_default and not params["extra_seed"].in_id_at_default
    assert params["extra"].in_id_at_default  # the older key is unchanged
    args = validate(list(params.values()), {"extra": True, "extra_count": 150000}, "datasets.svhn.")
    assert args == {"extra": True, "normalisation": "dataset", "extra_count": 150000, "extra_seed": 0}
    with pytest.raises(UserError, match="extra_count"):
        validate(list(params.values()), {"extra_count": -1}, "datasets.svhn.")


# --------------------------------------------------------------------------- STL-10: the 5,000 labeled images only
def write_stl10(folder: Path, n_train=20, n_test=10) -> dict[str, np.ndarray]:
    """STL-10 binaries without unlabeled_X.bin: each image's channels stored column-major; labels 1..10."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        x = patterned(n, 3, 96, 96, seed=20 + i)
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")
        y = (np.arange(n) * 7) % 10
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def test_stl10_labeled_training_images_only(tmp_path):
    arrays = write_stl10(tmp_path / "stl10" / "stl10_binary")
    with pytest.raises(UserError, match="unlabeled_X.bin"):  # the default wants the 100k pool
        stl10.load_stl10(tmp_path)
    ds = stl10.load_stl10(tmp_path, unlabeled=False)
    assert ds.unlabeled_x is None and ds.unlabeled_pool is None
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train_x"])
    assert_pattern(ds.train_x)
    # a clustering run (n_labeled 0, n_unlabeled "all") then draws exactly the labeled training images
    subsets = draw_subsets(ds.train_y.numpy(), 10, seed=0, n_labeled=0, n_unlabeled=ALL, overlap=True,
                           unlabeled_pool=ds.unlabeled_pool)
    np.testing.assert_array_equal(np.sort(subsets.unlabeled), np.arange(20))
