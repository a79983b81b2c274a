"""The domain-adaptation data sets of the dissertation's chapter 4 (Table 2's four pairs) in their
released formats: synth_digits and mnist_32_rgb (plugins/datasets/digits32.py), synth_signs and
gtsrb (plugins/datasets/traffic_signs.py).

No network here: each test writes a few images in the genuine on-disk format (SynthDigits .mat
via scipy.io.savemat in SVHN's layout; Synthetic Signs PNGs + train_labelling.txt; GTSRB ppm
folders + semicolon-separated GT csv files) and loads them through the registry's DatasetSpec,
the path a run takes. Images carry known colours, so a wrong crop, resize, channel order or
label fails. The writers are reused by tests/test_grid_smoke.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from ssl_bench import UserError
from ssl_bench.registry import registry
from ssl_bench_plugins.datasets import files, traffic_signs
from test_datasets import assert_pattern, assert_stats, patterned, write_idx_set

SIGN_CLASSES = 43


@pytest.fixture(scope="module")
def reg():
    return registry()


def load(reg, name: str, data_dir: Path):
    return reg.dataset(name).load(data_dir)


def class_colour(c: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class 0..42 (no channel equal to another's by accident)."""
    return (5 * c + 10, 250 - 5 * c, (37 * c) % 256)


# --------------------------------------------------------------------------- writers of the released formats
def write_synth_digits(folder: Path, n_train: int = 40, n_test: int = 20, zero_as_ten: bool = False):
    """synth_train_32x32.mat / synth_test_32x32.mat: X 32 x 32 x 3 x N uint8, y N x 1 (0..9;
    with ``zero_as_ten`` the digit 0 stored as 10, as SVHN does)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        x, y = patterned(n, 3, 32, 32, seed=20 + i), (np.arange(n) * (i + 1)) % 10
        stored = np.where(y == 0, 10, y) if zero_as_ten else y
        scipy.io.savemat(folder / f"synth_{split}_32x32.mat",
                         {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)), "y": stored.astype(np.uint8)[:, None]})
        out[split] = (x, y)
    return out


def write_synth_signs(folder: Path, per_class: int = 3, nested: bool = True) -> list[tuple[str, int]]:
    """``synthetic_data/train/NNNNN.png`` + ``synthetic_data/train_labelling.txt`` ("train/NNNNN.png
    CLASS 0" lines): solid images of the class colour, of varying sizes (so every one is resized)."""
    root = folder / "synthetic_data" if nested else folder
    (root / "train").mkdir(parents=True, exist_ok=True)
    entries, lines = [], []
    for k in range(per_class * SIGN_CLASSES):
        c = (k * 7) % SIGN_CLASSES  # classes interleaved in file order
        size = (40 + k % 5, 36 + 2 * (k % 3))
        Image.new("RGB", size, class_colour(c)).save(root / "train" / f"{k:05d}.png")
        entries.append((f"train/{k:05d}.png", c))
        lines.append(f"train/{k:05d}.png {c} {k % 2}")
    (root / "train_labelling.txt").write_text("\n".join(lines) + "\n")
    return entries


#: a GTSRB image: width, height, and its ROI (x1, y1, x2, y2), x2/y2 exclusive as PIL crops
GTSRB_SIZE, GTSRB_ROI = (31, 29), (3, 2, 27, 26)


def gtsrb_image(c: int) -> Image.Image:
    """The class colour inside the ROI, white outside it (a crop that strays shows white)."""
    a = np.full((GTSRB_SIZE[1], GTSRB_SIZE[0], 3), 255, np.uint8)
    x1, y1, x2, y2 = GTSRB_ROI
    a[y1:y2, x1:x2] = class_colour(c)
    return Image.fromarray(a)


def write_gtsrb(folder: Path, train_per_class: int = 2, n_test: int = 50, test_gt_at_root: bool = True) -> dict:
    """GTSRB as unzipped: GTSRB/Final_Training/Images/000NN/*.ppm + GT-000NN.csv per class,
    GTSRB/Final_Test/Images/*.ppm (+ GT-final_test.test.csv without classes), and
    GT-final_test.csv (with classes) where GTSRB_Final_Test_GT.zip unpacks: the data set folder."""
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
    w, h = GTSRB_SIZE
    roi = ";".join(map(str, GTSRB_ROI))
    train_labels = []
    for c in range(SIGN_CLASSES):
        d = folder / "GTSRB" / "Final_Training" / "Images" / f"{c:05d}"
        d.mkdir(parents=True, exist_ok=True)
        rows = [header]
        for k in range(train_per_class):
            name = f"00000_{k:05d}.ppm"
            gtsrb_image(c).save(d / name)
            rows.append(f"{name};{w};{h};{roi};{c}")
            train_labels.append(c)
        (d / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    test_dir = folder / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True, exist_ok=True)
    test_labels = [(k * 11) % SIGN_CLASSES for k in range(n_test)]
    rows, unlabelled = [header], [header.rsplit(";", 1)[0]]
    for k, c in enumerate(test_labels):
        gtsrb_image(c).save(test_dir / f"{k:05d}.ppm")
        rows.append(f"{k:05d}.ppm;{w};{h};{roi};{c}")
        unlabelled.append(f"{k:05d}.ppm;{w};{h};{roi}")
    (test_dir / "GT-final_test.test.csv").write_text("\n".join(unlabelled) + "\n")
    (folder if test_gt_at_root else test_dir).joinpath("GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return {"train": np.array(train_labels), "test": np.array(test_labels)}


def write_bsds500(folder: Path) -> None:
    """BSDS500's layout (BSR/BSDS500/data/images/{train,test}/*.jpg), two small photos each."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        d = folder / "BSR" / "BSDS500" / "data" / "images" / split
        d.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(d / f"{k}.jpg")


# --------------------------------------------------------------------------- registration
def test_the_four_data_sets_are_registered_without_parameters(reg):
    for name in ("synth_digits", "synth_signs", "gtsrb", "mnist_32_rgb"):
        spec = reg.dataset(name)
        assert spec.help and spec.params == [] and spec.download is None


# --------------------------------------------------------------------------- SynthDigits
@pytest.mark.parametrize("zero_as_ten", [False, True], ids=["labels-0-9", "labels-1-10"])
def test_synth_digits_reads_the_svhn_layout_mat_files(reg, tmp_path, zero_as_ten):
    sets = write_synth_digits(tmp_path / "synth_digits", zero_as_ten=zero_as_ten)
    ds = load(reg, "synth_digits", tmp_path)
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train_x.numpy(), sets["train"][0])
    np.testing.assert_array_equal(ds.test_x.numpy(), sets["test"][0])
    np.testing.assert_array_equal(ds.train_y.numpy(), sets["train"][1])
    np.testing.assert_array_equal(ds.test_y.numpy(), sets["test"][1])
    assert_pattern(ds.train_x)
    assert_stats(ds, sets["train"][0])
    assert np.bincount(ds.train_y.numpy(), minlength=10).tolist() == [4] * 10
    digest = files.arrays_sha256(ds.train_x.numpy(), ds.train_y.numpy(), ds.test_x.numpy(), ds.test_y.numpy())
    assert "40 train / 20 test, 3x32x32" in ds.description and digest[:16] in ds.description
    assert "no published checksum" in ds.description


def test_synth_digits_missing_or_malformed_files_are_user_errors(reg, tmp_path):
    with pytest.raises(UserError) as info:
        load(reg, "synth_digits", tmp_path)
    msg = str(info.value)
    assert "'synth_digits'" in msg and str(tmp_path / "synth_digits") in msg
    assert "synth_train_32x32.mat" in msg and "synth_test_32x32.mat" in msg
    write_synth_digits(tmp_path / "synth_digits")
    scipy.io.savemat(tmp_path / "synth_digits" / "synth_test_32x32.mat",
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[3], [11]], np.uint8)})
    with pytest.raises(UserError, match=r"synth_test_32x32\.mat: labels must be 0\.\.10"):
        load(reg, "synth_digits", tmp_path)


# --------------------------------------------------------------------------- Synthetic Signs
def authors_split(n: int) -> tuple[list[int], list[int]]:
    """The LbA authors' split as their code does it (a Python list shuffled by NumPy's global
    legacy generator seeded 314; the first 90% train), written out independently of the plugin."""
    np.random.seed(314)
    order = list(range(n))
    np.random.shuffle(order)
    cut = int(n * 0.9)
    return order[:cut], order[cut:]


@pytest.mark.parametrize("nested", [True, False], ids=["synthetic_data-folder", "files-directly"])
def test_synth_signs_png_folder_and_labelling_file(reg, tmp_path, nested):
    entries = write_synth_signs(tmp_path / "synth_signs", per_class=3, nested=nested)
    ds = load(reg, "synth_signs", tmp_path)
    n = len(entries)
    train, test = authors_split(n)
    assert ds.train_x.shape == (len(train), 3, 40, 40) and ds.test_x.shape == (len(test), 3, 40, 40)
    assert (len(train), len(test)) == (116, 13)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64 and ds.num_classes == 43
    labels = np.array([c for _, c in entries])
    np.testing.assert_array_equal(ds.train_y.numpy(), labels[train])
    np.testing.assert_array_equal(ds.test_y.numpy(), labels[test])
    # every image resized from its own size to 40x40: a solid image stays its class colour
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        colours = torch.tensor([class_colour(int(c)) for c in y], dtype=torch.uint8)
        assert torch.equal(x, colours[:, :, None, None].expand_as(x))
    counts = np.bincount(ds.train_y.numpy(), minlength=43) + np.bincount(ds.test_y.numpy(), minlength=43)
    assert counts.tolist() == [3] * 43
    assert "sha256" in ds.description and "116 train / 13 test, 3x40x40" in ds.description


def test_synth_signs_resizes_bilinearly_with_pil(reg, tmp_path):
    """One non-uniform image: the loaded pixels are PIL's bilinear resize of the RGB image."""
    entries = write_synth_signs(tmp_path / "synth_signs", per_class=1)
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (57, 63, 3), dtype=np.uint8)
    first = tmp_path / "synth_signs" / "synthetic_data" / entries[0][0]
    Image.fromarray(picture).save(first)
    ds = load(reg, "synth_signs", tmp_path)
    expected = np.asarray(Image.fromarray(picture).resize((40, 40), Image.BILINEAR)).transpose(2, 0, 1)
    train, test = authors_split(len(entries))
    x = ds.train_x[train.index(0)] if 0 in train else ds.test_x[test.index(0)]
    np.testing.assert_array_equal(x.numpy(), expected)
    assert not (x == x[:, :1, :1]).all()  # really not uniform


def test_synth_signs_errors_name_the_files(reg, tmp_path):
    with pytest.raises(UserError) as info:
        load(reg, "synth_signs", tmp_path)
    msg = str(info.value)
    assert "'synth_signs'" in msg and "train_labelling.txt" in msg and str(tmp_path / "synth_signs") in msg
    assert "synthetic_data.zip" in msg
    entries = write_synth_signs(tmp_path / "synth_signs", per_class=1)
    gone = tmp_path / "synth_signs" / "synthetic_data" / entries[5][0]
    gone.unlink()
    with pytest.raises(UserError, match=rf"1 of the 43 images listed in .* are missing, e.g. {gone}"):
        load(reg, "synth_signs", tmp_path)
    labelling = tmp_path / "synth_signs" / "synthetic_data" / "train_labelling.txt"
    labelling.write_text("train/00000.png 43 0\n")
    with pytest.raises(UserError, match=r"line 1: class 43 outside 0\.\.42"):
        load(reg, "synth_signs", tmp_path)


# --------------------------------------------------------------------------- GTSRB
@pytest.mark.parametrize("test_gt_at_root", [True, False], ids=["gt-in-data-dir", "gt-in-Final_Test-Images"])
def test_gtsrb_ppm_folders_and_gt_csv(reg, tmp_path, test_gt_at_root):
    labels = write_gtsrb(tmp_path / "gtsrb", train_per_class=2, n_test=50, test_gt_at_root=test_gt_at_root)
    ds = load(reg, "gtsrb", tmp_path)
    assert ds.train_x.shape == (86, 3, 40, 40) and ds.test_x.shape == (50, 3, 40, 40)
    assert ds.train_x.dtype == torch.uint8 and ds.test_y.dtype == torch.int64 and ds.num_classes == 43
    np.testing.assert_array_equal(ds.train_y.numpy(), labels["train"])  # class folders in order
    np.testing.assert_array_equal(ds.test_y.numpy(), labels["test"])  # GT-final_test.csv order
    assert np.bincount(ds.train_y.numpy(), minlength=43).tolist() == [2] * 43
    # cropped to the ROI (right/lower bounds exclusive) before resizing: no white border pixel
    # reaches the 40x40 image, which is the class colour everywhere
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        colours = torch.tensor([class_colour(int(c)) for c in y], dtype=torch.uint8)
        assert torch.equal(x, colours[:, :, None, None].expand_as(x))
    assert "GTSRB" in ds.description and "86 train / 50 test" in ds.description and "sha256" in ds.description


def test_gtsrb_crop_then_bilinear_resize_is_pils(reg, tmp_path):
    write_gtsrb(tmp_path / "gtsrb", train_per_class=1, n_test=3)
    picture = np.random.default_rng(5).integers(0, 256, (GTSRB_SIZE[1], GTSRB_SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00001.ppm")
    ds = load(reg, "gtsrb", tmp_path)
    expected = np.asarray(Image.fromarray(picture).crop(GTSRB_ROI).resize((40, 40), Image.BILINEAR))
    np.testing.assert_array_equal(ds.test_x[1].numpy(), expected.transpose(2, 0, 1))


def test_gtsrb_errors_name_what_is_missing(reg, tmp_path):
    with pytest.raises(UserError) as info:
        load(reg, "gtsrb", tmp_path)
    msg = str(info.value)
    assert "'gtsrb'" in msg and "Final_Training/Images" in msg and str(tmp_path / "gtsrb") in msg
    assert "GTSRB_Final_Training_Images.zip" in msg and "GTSRB_Final_Test_GT.zip" in msg
    write_gtsrb(tmp_path / "gtsrb", train_per_class=1, n_test=2)
    gt = tmp_path / "gtsrb" / "GT-final_test.csv"
    gt.rename(tmp_path / "gt.csv")
    with pytest.raises(UserError, match=r"GT-final_test\.csv.*GTSRB_Final_Test_GT\.zip"):
        load(reg, "gtsrb", tmp_path)
    # the test-images zip's own annotation file has no classes: say which file is needed
    (tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.test.csv").rename(gt)
    with pytest.raises(UserError, match=r"lacking ClassId \(GT-final_test\.test\.csv has no ClassId"):
        load(reg, "gtsrb", tmp_path)
    (tmp_path / "gt.csv").rename(gt)
    (tmp_path / "gtsrb" / "GTSRB" / "Final_Training" / "Images" / "00042" / "GT-00042.csv").unlink()
    with pytest.raises(UserError, match=r"GT-00042\.csv does not exist"):
        load(reg, "gtsrb", tmp_path)


def test_gtsrb_documented_archive_checksums():
    """The two md5 sums torchvision documents (torchvision/datasets/gtsrb.py), written out here."""
    assert traffic_signs.GTSRB_MD5 == {"GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
                                       "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5"}


# --------------------------------------------------------------------------- MNIST 32x32 RGB
def test_mnist_32_rgb_is_mnist_resized_bilinearly_in_three_channels(reg, tmp_path):
    arrays = write_idx_set(tmp_path / "mnist", n_train=30, n_test=10)
    ds = load(reg, "mnist_32_rgb", tmp_path)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.equal(ds.train_x[:, 0], ds.train_x[:, 1]) and torch.equal(ds.train_x[:, 0], ds.train_x[:, 2])
    for k in (0, 7):
        grey = arrays["train-images-idx3-ubyte"][k]
        expected = np.asarray(Image.fromarray(grey).resize((32, 32), Image.BILINEAR))
        np.testing.assert_array_equal(ds.train_x[k, 0].numpy(), expected)
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert_stats(ds, ds.train_x.numpy())
    assert "32x32" in ds.description
    with pytest.raises(UserError, match="'mnist'"):
        load(reg, "mnist_32_rgb", tmp_path / "elsewhere")


# --------------------------------------------------------------------------- the pairs fit together
def test_each_pair_has_one_image_shape_and_class_count(reg, tmp_path):
    write_idx_set(tmp_path / "mnist", n_train=20, n_test=10)
    write_synth_digits(tmp_path / "synth_digits")
    write_synth_signs(tmp_path / "synth_signs", per_class=1)
    write_gtsrb(tmp_path / "gtsrb", train_per_class=1, n_test=2)
    write_bsds500(tmp_path / "bsds500")
    from test_datasets import write_svhn

    write_svhn(tmp_path / "svhn")
    loaded = {name: load(reg, name, tmp_path) for name in
              ("mnist_rgb", "mnist_m", "synth_digits", "svhn", "mnist_32_rgb", "synth_signs", "gtsrb")}
    for source, target, shape, classes in (("mnist_rgb", "mnist_m", (3, 28, 28), 10),
                                           ("synth_digits", "svhn", (3, 32, 32), 10),
                                           ("svhn", "mnist_32_rgb", (3, 32, 32), 10),
                                           ("synth_signs", "gtsrb", (3, 40, 40), 43)):
        for name in (source, target):
            assert loaded[name].input_shape == shape and loaded[name].num_classes == classes, name
