"""Traffic signs for the Synthetic Signs -> GTSRB domain pair as released: data sets
``synth_signs`` and ``gtsrb`` (43 classes, 3 x 40 x 40 RGB).

The pair of associative domain adaptation (Haeusser et al. ICCV 2017 = the dissertation's
chapter 4, §3.1 and Table 2): "The Synthetic Signs dataset [Moiseev et al. 2013] ... consists of
100,000 images ... The German Traffic Signs Recognition Benchmark (GTSRB) provides 39,209
(training set) and 12,630 (test set) cropped images ... resized with bilinear interpolation to
match the Synthetic Signs images' size of 40 x 40 pixels. Both datasets contain images from 43
different classes." Where the chapter is silent, the LbA authors' preprocessing
(``semisup/tools/synth_signs.py`` and ``semisup/tools/gtsrb.py`` of
github.com/haeusser/learning_by_association, read, not copied) decides; each such choice is
marked "authors' code" below. Images are decoded, cropped and resized with PIL (``BILINEAR``,
which averages over the source pixels when shrinking), converted to RGB first.

``synth_signs`` (Moiseev, Konev, Chigorin, Konushin, "Evaluation of traffic sign recognition
methods trained on synthetically generated data", ACIVS 2013)
    Released as ``synthetic_data.zip``: ``synthetic_data/train/*.png`` and
    ``synthetic_data/train_labelling.txt``, one line per image, space-separated: the image path
    relative to that folder, its class 0..42, then more fields (ignored), e.g.
    ``train/00001.png 21 0``. Read: ``DATA_DIR/synth_signs/train_labelling.txt`` or
    ``DATA_DIR/synth_signs/synthetic_data/train_labelling.txt`` (the zip unpacked there), paths
    relative to the labelling file. Every image resized to 40 x 40.
    Split (the release has one set; authors' code): lines in file order, permuted by NumPy's
    legacy ``RandomState(314).permutation``, the first ``int(0.9 n)`` the training set (90,000 of
    100,000), the rest the held-out test set -- the same images as the authors'
    ``synth_signs_train.p`` / ``synth_signs_test.p``. The domain-adaptation source trains on the
    training part, as the authors' code does.

``gtsrb`` (Stallkamp, Schlipsing, Salmen, Igel, IJCNN 2011 / Neural Networks 2012)
    Released as ``GTSRB_Final_Training_Images.zip`` (``GTSRB/Final_Training/Images/000NN/*.ppm``
    with ``GT-000NN.csv`` per class NN = 00000..00042), ``GTSRB_Final_Test_Images.zip``
    (``GTSRB/Final_Test/Images/*.ppm``) and ``GTSRB_Final_Test_GT.zip`` (``GT-final_test.csv``,
    the test annotations WITH class ids; the test-images zip has only ``GT-final_test.test.csv``
    without them). Annotations are semicolon-separated with a header:
    ``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``. Read from ``DATA_DIR/gtsrb/``
    holding ``Final_Training/`` and ``Final_Test/`` (or ``GTSRB/`` as unzipped);
    ``GT-final_test.csv`` in ``Final_Test/Images/`` or in ``DATA_DIR/gtsrb/`` (where it unzips).
    Every image is cropped to its ROI and then resized to 40 x 40 (authors' code: PIL
    ``crop((X1, Y1, X2, Y2))``, whose right and lower bounds are exclusive, so the ROI's last
    column and row are left out as there). Training images in class order, each class in its
    file's order; test images in ``GT-final_test.csv`` order. Official split: 39,209 / 12,630.

Checksums: the md5 sums of ``GTSRB_Final_Test_Images.zip`` and ``GTSRB_Final_Test_GT.zip`` are
documented (torchvision, ``torchvision/datasets/gtsrb.py``) and listed here (``GTSRB_MD5``) for
checking a download by hand (``files.verify``); NO checksum is published for
``GTSRB_Final_Training_Images.zip`` (torchvision downloads a different archive,
``GTSRB-Training_fixed.zip``) nor for ``synthetic_data.zip``. The data sets are read from the
unpacked files, so each description carries the sha256 of the arrays read (images then labels,
training then test). No ``ssl-bench data download``: the files are fetched by hand (the error
when they are missing says from where).

Neither set has a standard augmentation (the chapter augments only MNIST); the ``weak`` view
never flips (a mirrored "turn left" sign is "turn right").
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.augment.pipelines import weak_without_flip
from ssl_bench_plugins.datasets import files

NUM_CLASSES = 43
SIZE = (40, 40)
#: the authors' Synthetic Signs split: seed of NumPy's legacy RandomState, training fraction
SIGNS_SPLIT_SEED, SIGNS_TRAIN_FRACTION = 314, 0.9
SIGNS_URL = "http://graphics.cs.msu.ru/en/node/1337"
GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
#: md5 of the GTSRB archives where one is documented (torchvision/datasets/gtsrb.py)
GTSRB_MD5 = {
    "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
    "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
GTSRB_COLUMNS = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")


def _dataset(name: str, train_x, train_y, test_x, test_y, origin: str, where: Path) -> ImageDataset:
    digest = files.arrays_sha256(train_x, train_y, test_x, test_y)
    mean, std = files.channel_stats(train_x)
    return ImageDataset(
        name=name, train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y), num_classes=NUM_CLASSES,
        mean=mean, std=std, pipelines={"weak": weak_without_flip},
        description=f"{origin}, {len(train_y)} train / {len(test_y)} test, 3x{SIZE[0]}x{SIZE[1]} (bilinear), "
                    f"43 classes, from {where}; no published checksum: sha256 of the arrays read {digest[:16]}")


def _stack(images: list[np.ndarray]) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, 3, *SIZE), dtype=np.uint8)


def _class_id(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise UserError(f"{where}: class {text!r} is not a whole number") from None
    if not 0 <= label < NUM_CLASSES:
        raise UserError(f"{where}: class {label} outside 0..{NUM_CLASSES - 1}")
    return label


# --------------------------------------------------------------------------- Synthetic Signs
def read_labelling(path: Path) -> list[tuple[str, int]]:
    """``train_labelling.txt``: (image path relative to its folder, class) per non-blank line."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise UserError(f"{path}, line {number}: expected 'IMAGE_PATH CLASS ...', got {line!r}")
        entries.append((fields[0], _class_id(fields[1], f"{path}, line {number}")))
    if not entries:
        raise UserError(f"{path}: no images listed")
    return entries


def signs_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The authors' split of n images: (training indices, test indices) in permuted order."""
    order = np.random.RandomState(SIGNS_SPLIT_SEED).permutation(n)
    cut = int(n * SIGNS_TRAIN_FRACTION)
    return order[:cut], order[cut:]


def load_synth_signs(data_dir) -> ImageDataset:
    name = "synth_signs"
    roots = files.search_dirs(name, data_dir)
    dirs = [roots[0], roots[0] / "synthetic_data"]
    how = (f"Get synthetic_data.zip (Synthetic Signs, Moiseev et al. 2013: synthetic_data/train/*.png and "
           f"synthetic_data/train_labelling.txt) from {SIGNS_URL} and unpack it in {roots[0]} (no published checksum).")
    labelling = files.find_files(name, dirs, ["train_labelling.txt"], how)[0]
    entries = read_labelling(labelling)
    folder = labelling.parent
    missing = [p for p, _ in entries if not (folder / p).is_file()]
    if missing:
        raise UserError(f"data set {name!r}: {len(missing)} of the {len(entries)} images listed in {labelling} "
                        f"are missing, e.g. {folder / missing[0]}; unpack synthetic_data.zip completely")
    images = _stack([files.pil_rgb(folder / p, SIZE) for p, _ in entries])
    labels = np.array([c for _, c in entries], dtype=np.int64)
    train, test = signs_split(len(labels))
    return _dataset(name, images[train], labels[train], images[test], labels[test],
                    f"Synthetic Signs (Moiseev et al. 2013), the LbA authors' split (RandomState({SIGNS_SPLIT_SEED}), "
                    f"{SIGNS_TRAIN_FRACTION:.0%} train)", labelling)


# --------------------------------------------------------------------------- GTSRB
def read_gtsrb_csv(path: Path) -> list[tuple[str, tuple[int, int, int, int], int]]:
    """A GTSRB annotation file: (file name, ROI box (x1, y1, x2, y2), class) per row."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter=";", skipinitialspace=True)
            lacking = [c for c in GTSRB_COLUMNS if c not in (reader.fieldnames or [])]
            if lacking:
                hint = (" (GT-final_test.test.csv has no ClassId: use GT-final_test.csv from GTSRB_Final_Test_GT.zip)"
                        if lacking == ["ClassId"] else "")
                raise UserError(f"{path}: expected the columns {';'.join(GTSRB_COLUMNS)}, lacking "
                                f"{', '.join(lacking)}{hint}")
            rows = []
            for number, row in enumerate(reader, 2):
                where = f"{path}, line {number}"
                try:
                    box = tuple(int(float(row[k])) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
                except (TypeError, ValueError):
                    raise UserError(f"{where}: ROI {[row.get(k) for k in GTSRB_COLUMNS[1:5]]} is not numeric") from None
                rows.append((row["Filename"], box, _class_id(row["ClassId"], where)))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    return rows


def _gtsrb_images(folder: Path, rows, csv_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = []
    for filename, box, _ in rows:
        path = folder / filename
        if not path.is_file():
            raise UserError(f"{path} (listed in {csv_path}) does not exist")
        images.append(files.pil_rgb(path, SIZE, box))
    return _stack(images), np.array([c for _, _, c in rows], dtype=np.int64)


def gtsrb_root(data_dir) -> Path:
    """The folder holding ``Final_Training/Images`` and ``Final_Test/Images``."""
    base = files.search_dirs("gtsrb", data_dir)[0]
    for root in (base, base / "GTSRB"):
        if (root / "Final_Training" / "Images").is_dir() and (root / "Final_Test" / "Images").is_dir():
            return root
    raise UserError(f"data set 'gtsrb': files not found; looked for Final_Training/Images/ and Final_Test/Images/ "
                    f"in {base} and {base / 'GTSRB'}. Get GTSRB_Final_Training_Images.zip, "
                    f"GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip from {GTSRB_URL} and unzip all three "
                    f"in {base}.")


def load_gtsrb(data_dir) -> ImageDataset:
    root = gtsrb_root(data_dir)
    train_dir = root / "Final_Training" / "Images"
    train_x, train_y = [], []
    for c in range(NUM_CLASSES):
        csv_path = train_dir / f"{c:05d}" / f"GT-{c:05d}.csv"
        if not csv_path.is_file():
            raise UserError(f"data set 'gtsrb': {csv_path} does not exist (GTSRB_Final_Training_Images.zip holds "
                            f"one folder per class, 00000..00042, each with its GT-000NN.csv)")
        x, y = _gtsrb_images(csv_path.parent, read_gtsrb_csv(csv_path), csv_path)
        train_x.append(x)
        train_y.append(y)
    test_dir = root / "Final_Test" / "Images"
    places = list(dict.fromkeys([test_dir, files.search_dirs("gtsrb", data_dir)[0], root]))
    gt = files.find_files("gtsrb", places, ["GT-final_test.csv"],
                          f"It is in GTSRB_Final_Test_GT.zip from {GTSRB_URL} (md5 "
                          f"{GTSRB_MD5['GTSRB_Final_Test_GT.zip']}): the test annotations with class ids.")[0]
    test_x, test_y = _gtsrb_images(test_dir, read_gtsrb_csv(gt), gt)
    return _dataset("gtsrb", np.concatenate(train_x), np.concatenate(train_y), test_x, test_y,
                    "GTSRB (Stallkamp et al. 2011), cropped to the ROI", root)


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec("synth_signs", load_synth_signs,
                    "Synthetic Signs (Moiseev et al. 2013) from synthetic_data/ (PNGs + train_labelling.txt), 40x40 "
                    "RGB, 43 classes, the LbA authors' 90/10 split; the SynthSigns -> GTSRB source"),
        DatasetSpec("gtsrb", load_gtsrb,
                    "GTSRB from the released Final_Training / Final_Test ppm folders + GT csv files, ROI-cropped, "
                    "40x40 RGB, 43 classes (39,209/12,630)"),
    ]
