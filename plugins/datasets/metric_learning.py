"""The deep-metric-learning data sets in their released on-disk formats, with the standard
class-disjoint splits of Song, Xiang, Jegelka and Savarese 2016 ("Deep metric learning via
lifted structured feature embedding", CVPR; used by TAC-CCL and SAN): data sets ``cub200``,
``cars196`` and ``sop``.

How the split maps onto the suite (read with ``plugins/tasks/retrieval.py``)
    ``train_*`` holds every image of the training classes, ``test_*`` every image of the
    held-out classes; labels are the released class ids minus one (0 .. C - 1), so the
    training classes are 0 .. K - 1 and the held-out ones K .. C - 1. The released
    classification splits (CUB's ``train_test_split.txt``, Cars' ``test`` flag / devkit
    train and test folders) are NOT used: metric learning trains on half the classes and
    retrieves the other half, all their images in both cases. The retrieval task takes its
    training images from ``train_*`` restricted to ``train_classes`` and queries the test
    images of the other classes, so:

    - ``cub200`` (K = 100 of 200), ``cars196`` (K = 98 of 196) and ``sop`` (K = 11,318 of
      22,634, by file): the task's default ``train_classes = []`` takes the training split's
      classes when no test image shares one, so it IS the standard split: training on all
      5,864 / 8,054 / 59,551 images of the training classes, retrieval among all 5,924 /
      8,131 / 60,502 images of the others.

    Every image is in exactly one of the two sets and no test image is of a class seen in
    training, so the data sets are for ``task = "retrieval"``, not for classification.

Images
    Decoded with PIL, converted to RGB (CUB and SOP hold a few greyscale JPEGs), optionally
    cropped to the bounding box, then resized to ``size`` x ``size`` with PIL's BILINEAR
    filter (which averages when shrinking), ignoring the aspect ratio, as Song et al.
    normalise every image to 256 x 256. Stored as uint8 N x 3 x size x size. ``size``
    defaults to 64 for CPU use; the papers resize to 256 and train on random 227 x 227 crops
    (224 for the BN-Inception / ResNet variants), testing on the centre crop: ``size = 256``
    with ``augment = true`` is the training side of that, but evaluation here embeds the
    whole 256 x 256 image, not a centre crop. Memory: 3 size^2 bytes per image: SOP's
    120,053 images take 1.5 GB at 64, 23.6 GB at 256. JPEGs are decoded by a thread pool (PIL
    releases the GIL while decoding and resizing); the output does not depend on the number
    of threads.

    ``crop`` (``cub200``, ``cars196``; default false, as Song et al., TAC-CCL and SAN, who do
    not use boxes): crop each image to its bounding box before resizing. CUB's
    ``bounding_boxes.txt`` gives ``x y width height`` in pixels from the top-left corner
    (floats, rounded): PIL box (x, y, x + width, y + height); Cars' ``bbox_x1 .. bbox_y2`` are
    MATLAB's 1-based inclusive pixel indices: PIL box (x1 - 1, y1 - 1, x2, y2). Boxes are
    clipped to the image. SOP has no boxes.

Standard augmentation (``augment = true``): the papers' random crop of 227/256 of each side at
a uniform position (resized back to ``size``) and a horizontal flip with probability 0.5, as
batched tensor ops (``ssl_bench_plugins.augment.ops.random_crop`` + ``pipelines.random_flip``).

``cub200``: CUB-200-2011 (Wah, Branson, Welinder, Perona, Belongie 2011, CNS-TR-2011-001)
    ``CUB_200_2011.tgz`` unpacks to ``CUB_200_2011/`` with ``images.txt`` (``<image_id>
    <image_name>``, the name relative to ``images/``, e.g. ``1
    001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``),
    ``image_class_labels.txt`` (``<image_id> <class_id>``, classes 1..200), ``classes.txt``
    (``<class_id> <class_name>``: C = its number of lines), ``bounding_boxes.txt`` (``<image_id>
    <x> <y> <width> <height>``, read only with ``crop = true``) and ``images/NNN.name/*.jpg``.
    Read from ``DATA_DIR/cub200/CUB_200_2011/`` or ``DATA_DIR/cub200/``. Images in
    ``images.txt`` order. Split: classes 1 .. C/2 train (1-100: 5,864 images), the rest test
    (101-200: 5,924). Archive checksum: md5 ``97eceeb196236b17998738112f37df78`` of
    ``CUB_200_2011.tgz`` (not published by Caltech's page itself; the value every public
    loader checks: pytorch-metric-learning's ``CUB200.md5``, TDeVries's ``cub2011.py``).

``cars196``: Stanford Cars (Krause, Stark, Deng, Fei-Fei 2013, "3D object representations for
fine-grained categorization", 3dRR)
    Two released layouts, read with ``scipy.io.loadmat``:

    - the full set, as Song et al. use it: ``cars_annos.mat`` (variable ``annotations``, a
      1 x 16,185 struct array with fields ``relative_im_path`` (``car_ims/000001.jpg``),
      ``bbox_x1``, ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class`` (1..196) and ``test``
      (the classification split, ignored); ``class_names``, 1 x 196) beside the ``car_ims/``
      of ``car_ims.tgz``. Images in annotation order.
    - the devkit: ``devkit/cars_train_annos.mat`` (fields ``bbox_*``, ``class``, ``fname``)
      with ``cars_train/``, ``cars_test_annos_withlabels.mat`` (in the root or ``devkit/``;
      the devkit's own ``cars_test_annos.mat`` has no classes) with ``cars_test/``, and
      ``devkit/cars_meta.mat`` (``class_names``). The same 16,185 photos, other file names:
      the devkit's training annotations, then its test annotations.

    Read from ``DATA_DIR/cars196/`` or ``DATA_DIR/cars196/stanford_cars/`` (torchvision's
    layout), ``cars_annos.mat`` first. C = the number of class names (196; the largest class
    id if there are none). Split: classes 1 .. C/2 train (1-98: 8,054 images), the rest test
    (99-196: 8,131). No checksum is published for ``car_ims.tgz`` / ``cars_annos.mat`` or the
    devkit files (torchvision's ``StanfordCars`` records none; the Stanford site has been down
    since 2023, pytorch/vision#7545).

``sop``: Stanford Online Products (Song et al. 2016)
    ``Stanford_Online_Products.zip`` unpacks to ``Stanford_Online_Products/`` with
    ``Ebay_train.txt`` and ``Ebay_test.txt``: a header ``image_id class_id super_class_id
    path``, then one line per image, the path relative to that folder
    (``bicycle_final/111085122871_0.JPG``), images in the twelve ``*_final/`` category
    folders. Read from ``DATA_DIR/sop/Stanford_Online_Products/`` or ``DATA_DIR/sop/``. Split:
    the files' (11,318 classes, 59,551 images / 11,316 classes, 60,502 images); a class in
    both files is an error. C = the largest class id (22,634). ``super_class_id`` (the 12
    categories) is not used. Archive checksum: md5 ``7f73d41a2f44250d4779881525aea32e`` of
    ``Stanford_Online_Products.zip`` (pytorch-metric-learning's; none published by Stanford).

Checksums: the loaders read the unpacked files, which have no published checksums, so each
description carries the sha256 of the arrays read (training images and labels, then test),
as ``frgc`` and ``gtsrb`` do; the archive md5 sums above (``ARCHIVE_MD5``) are for checking a
download by hand (``files.verify``). No ``ssl-bench data download``: the sites need a browser
or are gone; the missing-files error says where the files come from.

Cache (``ssl-bench data build NAME [--set size=S] [--set crop=true]``): decoding SOP's 120,053
JPEGs takes minutes, so the decoded arrays of one ``size``/``crop`` can be written once to
``DATA_DIR/NAME/built/sizeS`` (``sizeS-crop`` with crop): ``train_x.npy``, ``train_y.npy``,
``test_x.npy``, ``test_y.npy`` (NumPy's format, no pickles) and ``manifest.json`` (data set,
parameters, description, each file's shape and sha256), written into a temporary folder renamed
into place. ``load`` reads a build when its manifest exists, after checking every file's sha256
(a missing or changed file is a UserError naming it and how to rebuild); the arrays are the
ones decoding gives (tested), so results do not depend on which path loaded them. A build is
not refreshed when the source files change: rebuild, or delete it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.datasets import files

#: default side of the stored square images (CPU-sized; the papers use 256, cropped to 227)
DEFAULT_SIZE = 64
#: the papers' training crop: 227 of 256 pixels per side
CROP_FRACTION = 227 / 256
#: md5 of the released archives where one is recorded (see the module docstring); Cars: none
ARCHIVE_MD5 = {
    "CUB_200_2011.tgz": "97eceeb196236b17998738112f37df78",
    "Stanford_Online_Products.zip": "7f73d41a2f44250d4779881525aea32e",
}
CUB_URL = "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)"
CARS_URL = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (often down; pytorch/vision#7545 names mirrors)"
SOP_URL = "https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip)"
BUILT_FILES = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")
#: threads decoding JPEGs
THREADS = max(1, min(8, os.cpu_count() or 1))

Box = tuple[int, int, int, int]


def dml_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The papers' training augmentation: a random square crop of 227/256 of each side at a
    uniform position, resized back to the image size (bilinear), then a horizontal flip with
    probability 0.5. Imported when first called, so loading never depends on the ops."""
    from ssl_bench_plugins.augment.ops import random_crop
    from ssl_bench_plugins.augment.pipelines import random_flip

    return random_flip(random_crop(x, generator, fraction=(CROP_FRACTION, CROP_FRACTION)), generator)


# --------------------------------------------------------------------------- images
def check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"datasets.{name}.size must be a positive whole number of pixels, got {size!r}")


def decode_all(paths: Sequence[Path], size: int, boxes: Sequence[Box] | None = None) -> np.ndarray:
    """Images as uint8 N x 3 x size x size, in the order of ``paths``, decoded by a thread pool:
    RGB, cropped to the box (PIL's (left, upper, right, lower), clipped to the image) if given,
    resized with PIL's BILINEAR filter (``files.pil_rgb``); UserError naming a file PIL cannot read."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = files.pil_rgb(paths[i], size, None if boxes is None else boxes[i], clip=True)

    pool = ThreadPoolExecutor(THREADS)
    try:
        for _ in pool.map(one, range(len(paths))):  # re-raises the first error
            pass
    finally:  # after an error (or Ctrl-C), do not decode the images still queued
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def require_images(name: str, paths: Sequence[Path], listing: Path, archive: str) -> None:
    """UserError if any listed image is missing: how many, the first one, and where they are listed."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"data set {name!r}: {len(missing)} of the {len(paths)} images listed in {listing} are "
                        f"missing, e.g. {missing[0]}; unpack {archive} completely")


def first_half(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Whether each (0-based) label is a training class of the standard split: 0 .. C/2 - 1."""
    return labels < num_classes // 2


def make_dataset(name: str, paths: Sequence[Path], labels: np.ndarray, train: np.ndarray, num_classes: int,
                 size: int, boxes: Sequence[Box] | None, origin: str) -> ImageDataset:
    """Decode the training images (``train`` True) and the test images, in the given order."""
    train_idx, test_idx = np.flatnonzero(train), np.flatnonzero(~train)
    pick = lambda idx: None if boxes is None else [boxes[i] for i in idx]  # noqa: E731
    train_x = decode_all([paths[i] for i in train_idx], size, pick(train_idx))
    test_x = decode_all([paths[i] for i in test_idx], size, pick(test_idx))
    train_y, test_y = labels[train_idx].astype(np.int64), labels[test_idx].astype(np.int64)
    digest = files.arrays_sha256(train_x, train_y, test_x, test_y)
    k = len(np.unique(train_y))
    description = (f"{origin}; class-disjoint split (Song et al. 2016): {len(train_y)} train images of {k} classes / "
                   f"{len(test_y)} test images of {len(np.unique(test_y))} classes, {num_classes} classes in all, "
                   f"3x{size}x{size} (bilinear{', cropped to the bounding boxes' if boxes is not None else ''}); "
                   f"no published checksum of the files: sha256 of the arrays read {digest[:16]}")
    return _image_dataset(name, train_x, train_y, test_x, test_y, num_classes, description)


def _image_dataset(name, train_x, train_y, test_x, test_y, num_classes, description) -> ImageDataset:
    mean, std = files.channel_stats(train_x) if len(train_x) else ((0.5,) * 3, (0.25,) * 3)
    return ImageDataset(
        name=name, train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y), num_classes=num_classes,
        mean=mean, std=std, augment=dml_augment, description=description)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a text file as (line number, fields); UserError if unreadable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{where}: {what} {text!r} is not a whole number") from None


# --------------------------------------------------------------------------- built (cached) arrays
def built_dir(name: str, data_dir, size: int, crop: bool = False) -> Path:
    """Where ``ssl-bench data build NAME`` writes: ``DATA_DIR/NAME/built/sizeS[-crop]``."""
    return files.search_dirs(name, data_dir)[0] / "built" / (f"size{size}" + ("-crop" if crop else ""))


def _params(size: int, crop: bool | None) -> dict:
    return {"size": size} if crop is None else {"size": size, "crop": crop}


def write_built(ds: ImageDataset, data_dir, size: int, crop: bool | None) -> str:
    """Write a decoded data set's arrays and manifest to :func:`built_dir` (atomically); returns
    the report the build command prints (the folder and each file's sha256, sha256sum style)."""
    target = built_dir(ds.name, data_dir, size, bool(crop))
    arrays = {file: tensor.numpy() for file, tensor in zip(BUILT_FILES, (ds.train_x, ds.train_y, ds.test_x, ds.test_y))}
    given = ", ".join(f"{k}={json.dumps(v)}" for k, v in _params(size, crop).items())
    return files.write_with_manifest(
        target, arrays, lambda path, array: np.save(path, array, allow_pickle=False),
        {"dataset": ds.name, "params": _params(size, crop), "num_classes": ds.num_classes,
         "description": ds.description},
        f"{ds.name} ({given}): {len(ds.train_y)} train / {len(ds.test_y)} test images written to {target}",
        entry_fields=("dtype",))


def load_built(name: str, data_dir, size: int, crop: bool | None) -> ImageDataset | None:
    """The built arrays of these parameters, every file's sha256 checked against the manifest;
    None if there is no manifest (then the images are decoded on load)."""
    folder = built_dir(name, data_dir, size, bool(crop))
    sets = " ".join(f"--set {k}={str(v).lower()}" for k, v in _params(size, crop).items())
    rebuild = (f"rebuild it with `ssl-bench data build {name} {sets} --data-dir {Path(data_dir).expanduser()}`, "
               f"or delete {folder} to decode the images on load")
    manifest = files.verify_manifest(folder, name, BUILT_FILES, rebuild, {"params": _params(size, crop)},
                                     lambda m: str(m.get("params")), {"description": str, "num_classes": int})
    if manifest is None:
        return None
    description, num_classes = manifest["description"], manifest["num_classes"]
    arrays = []
    for file in BUILT_FILES:
        path = folder / file
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise UserError(f"built {name}: cannot read {path} ({exc}); {rebuild}") from None
    train_x, train_y, test_x, test_y = arrays
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.dtype != np.uint8 or x.shape[1:] != (3, size, size) or y.dtype != np.int64 or y.shape != (len(x),):
            raise UserError(f"built {name}: {folder}/{split}_*.npy hold {x.dtype} {x.shape} images and {y.dtype} "
                            f"{y.shape} labels, expected N x 3 x {size} x {size} uint8 and N int64; {rebuild}")
    return _image_dataset(name, train_x, train_y, test_x, test_y, num_classes,
                          f"{description}; read from {folder} (`ssl-bench data build`)")


def _cached(name: str, data_dir, size: int, crop: bool | None, make: Callable[[], ImageDataset]) -> ImageDataset:
    check_size(name, size)
    return load_built(name, data_dir, size, crop) or make()


# --------------------------------------------------------------------------- CUB-200-2011
CUB_FILES = ("images.txt", "image_class_labels.txt", "classes.txt")


def _cub_table(path: Path, columns: int, what: str) -> dict[int, list[str]]:
    """``<image_id> <value> ...`` lines as {id: values}; UserError on malformed or repeated ids."""
    table: dict[int, list[str]] = {}
    for number, fields in _lines(path):
        where = f"{path}, line {number}"
        if len(fields) != columns:
            raise UserError(f"{where}: expected {columns} fields ({what}), got {' '.join(fields)!r}")
        key = _int(fields[0], where, "id")
        if key in table:
            raise UserError(f"{where}: id {key} listed twice")
        table[key] = fields[1:]
    if not table:
        raise UserError(f"{path}: no lines")
    return table


def read_cub(root: Path, crop: bool = False) -> tuple[list[Path], np.ndarray, int, list[Box] | None]:
    """CUB_200_2011/: (image paths in images.txt order, labels 0..C-1, C, boxes or None)."""
    images = _cub_table(root / "images.txt", 2, "<image_id> <image_name>")
    labels_of = _cub_table(root / "image_class_labels.txt", 2, "<image_id> <class_id>")
    classes = _cub_table(root / "classes.txt", 2, "<class_id> <class_name>")
    num_classes = len(classes)
    if sorted(classes) != list(range(1, num_classes + 1)):
        raise UserError(f"{root / 'classes.txt'}: class ids must be 1..{num_classes}")
    unlabelled = [i for i in images if i not in labels_of]
    if unlabelled:
        raise UserError(f"{root / 'image_class_labels.txt'}: no class for image id {unlabelled[0]} of images.txt "
                        f"({len(unlabelled)} such)")
    labels = []
    for i in images:
        c = _int(labels_of[i][0], f"{root / 'image_class_labels.txt'}, image {i}", "class")
        if not 1 <= c <= num_classes:
            raise UserError(f"{root / 'image_class_labels.txt'}, image {i}: class {c} outside 1..{num_classes} "
                            f"of classes.txt")
        labels.append(c - 1)
    boxes = None
    if crop:
        path = root / "bounding_boxes.txt"
        if not path.is_file():
            raise UserError(f"data set 'cub200': crop = true needs {path} (in CUB_200_2011.tgz)")
        table = _cub_table(path, 5, "<image_id> <x> <y> <width> <height>")
        boxes = []
        for i in images:
            if i not in table:
                raise UserError(f"{path}: no box for image id {i}")
            try:
                x, y, w, h = (float(v) for v in table[i])
            except ValueError:
                raise UserError(f"{path}, image {i}: box {table[i]} is not numeric") from None
            boxes.append((round(x), round(y), round(x + w), round(y + h)))
    paths = [root / "images" / images[i][0] for i in images]
    require_images("cub200", paths, root / "images.txt", "CUB_200_2011.tgz")
    return paths, np.array(labels, dtype=np.int64), num_classes, boxes


def cub_root(data_dir) -> Path:
    base = files.search_dirs("cub200", data_dir)[0]
    how = (f"Get CUB_200_2011.tgz from {CUB_URL} (md5 {ARCHIVE_MD5['CUB_200_2011.tgz']}) and unpack it in {base} "
           f"(it holds CUB_200_2011/).")
    return files.find_files("cub200", [base / "CUB_200_2011", base], CUB_FILES, how)[0].parent


def make_cub200(data_dir, size: int = DEFAULT_SIZE, crop: bool = False) -> ImageDataset:
    root = cub_root(data_dir)
    paths, labels, num_classes, boxes = read_cub(root, crop)
    return make_dataset("cub200", paths, labels, first_half(labels, num_classes), num_classes, size, boxes,
                        f"CUB-200-2011 (Wah et al. 2011) from {root}")


def load_cub200(data_dir, size: int = DEFAULT_SIZE, crop: bool = False) -> ImageDataset:
    return _cached("cub200", data_dir, size, crop, lambda: make_cub200(data_dir, size, crop))


def build_cub200(data_dir, size: int = DEFAULT_SIZE, crop: bool = False) -> str:
    check_size("cub200", size)
    return write_built(make_cub200(data_dir, size, crop), data_dir, size, crop)


# --------------------------------------------------------------------------- Stanford Cars
def _loadmat(path: Path) -> dict:
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError) as exc:  # v7.3 (HDF5): NotImplemented
        raise UserError(f"{path}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc})") from exc


def _annotations(path: Path, fields: Sequence[str]) -> dict[str, list]:
    """The ``annotations`` struct array of a Cars .mat file as {field: list of values}."""
    mat = _loadmat(path)
    if "annotations" not in mat:
        raise UserError(f"{path}: no variable 'annotations'; found {sorted(k for k in mat if not k.startswith('__'))}")
    ann = np.atleast_1d(mat["annotations"])
    names = ann.dtype.names or ()
    lacking = [f for f in fields if f not in names]
    if lacking:
        hint = (" (the devkit's cars_test_annos.mat has no classes: use cars_test_annos_withlabels.mat)"
                if lacking == ["class"] else "")
        raise UserError(f"{path}: the annotations lack the field(s) {', '.join(lacking)}; they have "
                        f"{', '.join(names)}{hint}")
    return {f: [ann[f][i] for i in range(len(ann))] for f in fields}


def _class_count(path: Path) -> int | None:
    mat = _loadmat(path)
    return len(np.atleast_1d(mat["class_names"])) if "class_names" in mat else None


def _cars_labels(values: list, path: Path, num_classes: int | None) -> tuple[np.ndarray, int]:
    try:
        ids = np.array([int(v) for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: the 'class' fields are not whole numbers") from None
    num_classes = num_classes or int(ids.max(initial=0))
    bad = ids[(ids < 1) | (ids > num_classes)]
    if len(bad):
        raise UserError(f"{path}: class {int(bad[0])} outside 1..{num_classes}")
    return ids - 1, num_classes


def _cars_boxes(ann: dict, path: Path) -> list[Box]:
    try:
        return [(int(x1) - 1, int(y1) - 1, int(x2), int(y2))  # MATLAB 1-based inclusive -> PIL's box
                for x1, y1, x2, y2 in zip(ann["bbox_x1"], ann["bbox_y1"], ann["bbox_x2"], ann["bbox_y2"])]
    except (TypeError, ValueError):
        raise UserError(f"{path}: the bbox_* fields are not whole numbers") from None


BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def read_cars_annos(path: Path, crop: bool = False) -> tuple[list[Path], np.ndarray, int, list[Box] | None]:
    """``cars_annos.mat`` (+ ``car_ims/``): (paths, labels 0..C-1, C, boxes or None), annotation order."""
    ann = _annotations(path, ("relative_im_path", "class") + (BOX_FIELDS if crop else ()))
    labels, num_classes = _cars_labels(ann["class"], path, _class_count(path))
    paths = [path.parent / str(p) for p in ann["relative_im_path"]]
    require_images("cars196", paths, path, "car_ims.tgz")
    return paths, labels, num_classes, _cars_boxes(ann, path) if crop else None


def read_cars_devkit(root: Path, crop: bool = False) -> tuple[list[Path], np.ndarray, int, list[Box] | None]:
    """The devkit layout: training annotations then test annotations (with labels)."""
    devkit = root / "devkit"
    test_annos = files.find_files(
        "cars196", [root, devkit], ["cars_test_annos_withlabels.mat"],
        "The devkit's cars_test_annos.mat has no classes; cars_test_annos_withlabels.mat (released beside "
        f"cars_test.tgz) has. From {CARS_URL}.")[0]
    meta = devkit / "cars_meta.mat"
    num_classes = _class_count(meta) if meta.is_file() else None
    paths, ids, boxes = [], [], []
    for annos, folder, archive in ((devkit / "cars_train_annos.mat", root / "cars_train", "cars_train.tgz"),
                                   (test_annos, root / "cars_test", "cars_test.tgz")):
        ann = _annotations(annos, ("fname", "class") + (BOX_FIELDS if crop else ()))
        split_paths = [folder / str(f) for f in ann["fname"]]
        require_images("cars196", split_paths, annos, archive)
        paths += split_paths
        ids += list(ann["class"])
        boxes += _cars_boxes(ann, annos) if crop else []
    labels, num_classes = _cars_labels(ids, devkit / "cars_train_annos.mat", num_classes)
    return paths, labels, num_classes, boxes if crop else None


def read_cars(data_dir, crop: bool = False) -> tuple[list[Path], np.ndarray, int, list[Box] | None, Path]:
    base = files.search_dirs("cars196", data_dir)[0]
    roots = [base, base / "stanford_cars"]
    for root in roots:
        if (root / "cars_annos.mat").is_file():
            return (*read_cars_annos(root / "cars_annos.mat", crop), root / "cars_annos.mat")
    for root in roots:
        if (root / "devkit" / "cars_train_annos.mat").is_file():
            return (*read_cars_devkit(root, crop), root / "devkit")
    files.missing_files("cars196", {r: ["cars_annos.mat (or devkit/cars_train_annos.mat)"] for r in roots},
                        f"Get car_ims.tgz and cars_annos.mat from {CARS_URL}, put cars_annos.mat in {base} and "
                        f"unpack car_ims.tgz there (car_ims/*.jpg); or the devkit layout: devkit/ "
                        f"(car_devkit.tgz), cars_train/, cars_test/ and cars_test_annos_withlabels.mat. No published "
                        f"checksums.")


def make_cars196(data_dir, size: int = DEFAULT_SIZE, crop: bool = False) -> ImageDataset:
    paths, labels, num_classes, boxes, source = read_cars(data_dir, crop)
    return make_dataset("cars196", paths, labels, first_half(labels, num_classes), num_classes, size, boxes,
                        f"Stanford Cars (Krause et al. 2013) from {source}")


def load_cars196(data_dir, size: int = DEFAULT_SIZE, crop: bool = False) -> ImageDataset:
    return _cached("cars196", data_dir, size, crop, lambda: make_cars196(data_dir, size, crop))


def build_cars196(data_dir, size: int = DEFAULT_SIZE, crop: bool = False) -> str:
    check_size("cars196", size)
    return write_built(make_cars196(data_dir, size, crop), data_dir, size, crop)


# --------------------------------------------------------------------------- Stanford Online Products
SOP_FILES = ("Ebay_train.txt", "Ebay_test.txt")
SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_ebay(path: Path) -> list[tuple[str, int]]:
    """``Ebay_train.txt`` / ``Ebay_test.txt``: (path relative to the folder, class id) per image."""
    lines = _lines(path)
    if not lines or lines[0][1] != SOP_HEADER:
        raise UserError(f"{path}: expected the header {' '.join(SOP_HEADER)!r}, got "
                        f"{' '.join(lines[0][1]) if lines else 'an empty file'!r}")
    entries = []
    for number, fields in lines[1:]:
        where = f"{path}, line {number}"
        if len(fields) != 4:
            raise UserError(f"{where}: expected 'image_id class_id super_class_id path', got {' '.join(fields)!r}")
        c = _int(fields[1], where, "class_id")
        if c < 1:
            raise UserError(f"{where}: class_id {c} is not positive")
        entries.append((fields[3], c))
    if not entries:
        raise UserError(f"{path}: no images listed")
    return entries


def make_sop(data_dir, size: int = DEFAULT_SIZE) -> ImageDataset:
    base = files.search_dirs("sop", data_dir)[0]
    how = (f"Get Stanford_Online_Products.zip from {SOP_URL} (md5 {ARCHIVE_MD5['Stanford_Online_Products.zip']}) and "
           f"unzip it in {base} (it holds Stanford_Online_Products/).")
    train_txt, test_txt = files.find_files("sop", [base / "Stanford_Online_Products", base], SOP_FILES, how)
    root = train_txt.parent
    train, test = read_ebay(train_txt), read_ebay(test_txt)
    shared = sorted({c for _, c in train} & {c for _, c in test})
    if shared:
        raise UserError(f"data set 'sop': {len(shared)} classes are in both {train_txt} and {test_txt}, e.g. "
                        f"class_id {shared[0]}; the standard split is class-disjoint")
    entries = train + test
    paths = [root / p for p, _ in entries]
    require_images("sop", paths, root / "Ebay_*.txt", "Stanford_Online_Products.zip")
    labels = np.array([c - 1 for _, c in entries], dtype=np.int64)
    is_train = np.arange(len(entries)) < len(train)
    return make_dataset("sop", paths, labels, is_train, int(labels.max()) + 1, size, None,
                        f"Stanford Online Products (Song et al. 2016) from {root}, split by Ebay_train.txt / "
                        f"Ebay_test.txt")


def load_sop(data_dir, size: int = DEFAULT_SIZE) -> ImageDataset:
    return _cached("sop", data_dir, size, None, lambda: make_sop(data_dir, size))


def build_sop(data_dir, size: int = DEFAULT_SIZE) -> str:
    check_size("sop", size)
    return write_built(make_sop(data_dir, size), data_dir, size, None)


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec("cub200", load_cub200,
                    "CUB-200-2011 from CUB_200_2011/ (images.txt, image_class_labels.txt, JPEGs), 200 bird species; "
                    "class-disjoint metric-learning split: classes 1-100 train (5,864) / 101-200 test (5,924); "
                    "size = 64 (RGB, resized), crop = false (bounding boxes); `ssl-bench data build` caches",
                    build=build_cub200),
        DatasetSpec("cars196", load_cars196,
                    "Stanford Cars from cars_annos.mat + car_ims/ (or the devkit), 196 models; class-disjoint "
                    "metric-learning split: classes 1-98 train (8,054) / 99-196 test (8,131); size = 64, crop = false",
                    build=build_cars196),
        DatasetSpec("sop", load_sop,
                    "Stanford Online Products from Ebay_train.txt / Ebay_test.txt + JPEGs: 11,318 train classes "
                    "(59,551) / 11,316 test classes (60,502); size = 64; `ssl-bench data build sop` caches",
                    build=build_sop),
    ]
