"""The deep-metric-learning data sets in their released formats (plugins/datasets/metric_learning.py):
``cub200`` (CUB_200_2011/ text files + JPEG folders), ``cars196`` (cars_annos.mat + car_ims/, or
the devkit layout) and ``sop`` (Stanford_Online_Products/Ebay_{train,test}.txt + JPEG folders).

No network here: each test writes a tiny data set in the genuine on-disk layout (6 classes x 3
JPEGs of about 12 x 10 pixels, of varying sizes; MATLAB structs via scipy.io.savemat with the
released field names) and loads it through the registry's DatasetSpec, the path a run takes.
Each image is one flat colour per class (white outside the bounding box where there is one), so a
wrong label, order, crop or channel order fails. Also: the split fits the retrieval task
(plugins/tasks/retrieval.py), the cache of ``ssl-bench data build`` gives the same arrays, and
missing or malformed files are UserErrors naming the file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from ssl_bench import UserError
from ssl_bench.params import validate
from ssl_bench.registry import registry
from ssl_bench_plugins.datasets import metric_learning as ml
from ssl_bench_plugins.tasks.retrieval import Retrieval, split_classes

CLASSES, PER_CLASS = 6, 3
#: JPEG noise allowed on a flat colour (quality 100, no chroma subsampling)
TOL = 6


@pytest.fixture(scope="module")
def reg():
    return registry()


def load(reg, name: str, data_dir: Path, **params):
    spec = reg.dataset(name)
    return spec.load(data_dir, **validate(spec.params, params, f"datasets.{name}."))


def colour(c: int) -> tuple[int, int, int]:
    """A distinct colour per 0-based class, far from white."""
    return (20 + 35 * c, 200 - 30 * c, (60 + 70 * c) % 200)


def save_jpeg(path: Path, c: int, k: int, box: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
    """A JPEG of class ``c`` (k-th of its class; sizes vary so every image is resized): the class
    colour, or, with ``box`` (PIL's left, upper, right, lower), the colour inside it and white
    outside. Returns (width, height)."""
    w, h = 12 + k, 10 + (c % 2)
    a = np.full((h, w, 3), 255 if box else 0, np.uint8)
    left, upper, right, lower = box or (0, 0, w, h)
    a[upper:lower, left:right] = colour(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, "JPEG", quality=100, subsampling=0)
    return w, h


def order() -> list[tuple[int, int]]:
    """(class, k) of each image in file order: classes interleaved, not sorted."""
    return [(c, k) for k in range(PER_CLASS) for c in range(CLASSES)]


def assert_colours(x: torch.Tensor, y: torch.Tensor) -> None:
    want = torch.tensor([colour(int(c)) for c in y], dtype=torch.float32)[:, :, None, None]
    assert (x.float() - want).abs().max() <= TOL


def assert_split(ds, num_classes: int = CLASSES, train_classes: int | None = None) -> None:
    """Class-disjoint: the first ``train_classes`` (default half) in train_*, the rest in test_*."""
    k = num_classes // 2 if train_classes is None else train_classes
    assert ds.num_classes == num_classes
    train, test = set(ds.train_y.tolist()), set(ds.test_y.tolist())
    assert train == set(range(k)) and test == set(range(k, num_classes)) and not train & test
    assert np.bincount(ds.train_y.numpy()).tolist() == [PER_CLASS] * k
    assert np.bincount(ds.test_y.numpy(), minlength=num_classes)[k:].tolist() == [PER_CLASS] * (num_classes - k)


# --------------------------------------------------------------------------- writers of the released formats
CUB_BOX = (2, 1, 9, 8)  # x, y, width, height: PIL box (2, 1, 11, 9)


def write_cub(folder: Path, nested: bool = True) -> list[int]:
    """CUB_200_2011/: classes.txt, images.txt, image_class_labels.txt, bounding_boxes.txt and
    images/NNN.Name/Name_k_id.jpg (the object inside the box, white outside). Returns the labels
    (0-based) in images.txt order."""
    root = folder / "CUB_200_2011" if nested else folder
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{c + 1:03d}.Bird_{c}" for c in range(CLASSES)]
    (root / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(names)))
    images, labels, boxes = [], [], []
    x, y, w, h = CUB_BOX
    for i, (c, k) in enumerate(order(), 1):
        rel = f"{names[c]}/Bird_{c}_{k:04d}_{1000 + i}.jpg"
        save_jpeg(root / "images" / rel, c, k, (x, y, x + w, y + h))
        images.append(f"{i} {rel}\n")
        labels.append(f"{i} {c + 1}\n")
        boxes.append(f"{i} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n")
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "bounding_boxes.txt").write_text("".join(boxes))
    (root / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, len(images) + 1)))
    return [c for c, _ in order()]


#: Cars' MATLAB box: 1-based inclusive pixel indices -> PIL box (2, 1, 10, 8)
CARS_BOX = (3, 2, 10, 8)
ANNOS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
DEVKIT_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _struct(rows: list[dict], fields) -> np.ndarray:
    """A MATLAB 1 x N struct array as scipy.io.savemat writes it (numbers as uint8/uint16 1 x 1)."""
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        ann[0, i] = tuple(row[f] if isinstance(row[f], str) else np.array([[row[f]]], np.uint16) for f in fields)
    return ann


def _class_names() -> np.ndarray:
    return np.array([f"Make Model {c} 2012" for c in range(CLASSES)], dtype=object)[None, :]


def write_cars_annos(folder: Path) -> list[int]:
    """cars_annos.mat (annotations: relative_im_path, bbox_*, class 1..C, test; class_names) and
    car_ims/NNNNNN.jpg. The ``test`` flag alternates, across classes (the classification split,
    which the metric-learning split ignores). Returns the labels (0-based) in annotation order."""
    x1, y1, x2, y2 = CARS_BOX
    rows = []
    for i, (c, k) in enumerate(order(), 1):
        rel = f"car_ims/{i:06d}.jpg"
        save_jpeg(folder / rel, c, k, (x1 - 1, y1 - 1, x2, y2))
        rows.append({"relative_im_path": rel, "bbox_x1": x1, "bbox_y1": y1, "bbox_x2": x2, "bbox_y2": y2,
                     "class": c + 1, "test": i % 2})
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": _struct(rows, ANNOS_FIELDS),
                                                 "class_names": _class_names()})
    return [c for c, _ in order()]


def write_cars_devkit(folder: Path, with_labels: bool = True) -> list[int]:
    """devkit/{cars_train_annos,cars_test_annos,cars_meta}.mat, cars_train/, cars_test/ and
    cars_test_annos_withlabels.mat: images alternate between the two folders. Returns the
    labels in the loader's order (training annotations, then test)."""
    x1, y1, x2, y2 = CARS_BOX
    splits = {"train": [], "test": []}
    for i, (c, k) in enumerate(order()):
        split = "train" if i % 2 == 0 else "test"
        fname = f"{len(splits[split]) + 1:05d}.jpg"
        save_jpeg(folder / f"cars_{split}" / fname, c, k, (x1 - 1, y1 - 1, x2, y2))
        splits[split].append({"bbox_x1": x1, "bbox_y1": y1, "bbox_x2": x2, "bbox_y2": y2, "class": c + 1,
                              "fname": fname, "c": c})
    devkit = folder / "devkit"
    devkit.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(devkit / "cars_train_annos.mat", {"annotations": _struct(splits["train"], DEVKIT_FIELDS)})
    no_class = tuple(f for f in DEVKIT_FIELDS if f != "class")
    scipy.io.savemat(devkit / "cars_test_annos.mat", {"annotations": _struct(splits["test"], no_class)})
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": _class_names()})
    if with_labels:
        scipy.io.savemat(folder / "cars_test_annos_withlabels.mat",
                         {"annotations": _struct(splits["test"], DEVKIT_FIELDS)})
    return [r["c"] for r in splits["train"] + splits["test"]]


SOP_CATEGORIES = ("bicycle_final", "chair_final")


def write_sop(folder: Path, train_classes: int = CLASSES // 2, nested: bool = True) -> Path:
    """Stanford_Online_Products/Ebay_train.txt and Ebay_test.txt (header ``image_id class_id
    super_class_id path``) and the JPEGs in category folders: class ids 1..train_classes in
    Ebay_train.txt, the rest in Ebay_test.txt, image ids running on across the two files."""
    root = folder / "Stanford_Online_Products" if nested else folder
    root.mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "test": []}
    image_id = 0
    for split in ("train", "test"):
        for c in (range(train_classes) if split == "train" else range(train_classes, CLASSES)):
            super_class = c % len(SOP_CATEGORIES)
            for k in range(PER_CLASS):
                image_id += 1
                rel = f"{SOP_CATEGORIES[super_class]}/{111085122871 + c}_{k}.JPG"
                save_jpeg(root / rel, c, k)
                lines[split].append(f"{image_id} {c + 1} {super_class + 1} {rel}\n")
    for split, body in lines.items():
        (root / f"Ebay_{split}.txt").write_text("image_id class_id super_class_id path\n" + "".join(body))
    (root / "Ebay_info.txt").write_text("image_id class_id super_class_id path\n")
    return root


# --------------------------------------------------------------------------- cub200
@pytest.mark.parametrize("nested", [True, False])
def test_cub200_class_disjoint_split_in_images_txt_order(reg, tmp_path, nested):
    labels = write_cub(tmp_path / "cub200", nested)
    ds = load(reg, "cub200", tmp_path, size=16)
    assert_split(ds)
    assert ds.train_x.shape == (9, 3, 16, 16) and ds.test_x.shape == (9, 3, 16, 16)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == [c for c in labels if c < 3] and ds.test_y.tolist() == [c for c in labels if c >= 3]
    # whole images: the white border around the box is in every image
    assert (ds.train_x.float().amax(dim=(2, 3)) > 240).all()
    assert "sha256 of the arrays read" in ds.description and "CUB-200-2011" in ds.description
    assert ds.augment is ml.dml_augment


def test_cub200_default_size_and_crop_to_the_boxes(reg, tmp_path):
    write_cub(tmp_path / "cub200")
    ds = load(reg, "cub200", tmp_path)
    assert ds.train_x.shape[1:] == (3, ml.DEFAULT_SIZE, ml.DEFAULT_SIZE) == (3, 64, 64)
    cropped = load(reg, "cub200", tmp_path, size=8, crop=True)
    assert_split(cropped)
    assert_colours(cropped.train_x, cropped.train_y)  # only the box: no white left
    assert_colours(cropped.test_x, cropped.test_y)
    assert "cropped to the bounding boxes" in cropped.description


def test_cub200_missing_files_name_them(reg, tmp_path):
    with pytest.raises(UserError, match=r"cub200.*CUB_200_2011.*no such directory.*CUB_200_2011\.tgz"):
        load(reg, "cub200", tmp_path)
    write_cub(tmp_path / "cub200")
    root = tmp_path / "cub200" / "CUB_200_2011"
    (root / "image_class_labels.txt").rename(root / "labels.bak")
    with pytest.raises(UserError, match=r"missing image_class_labels\.txt"):
        load(reg, "cub200", tmp_path)
    (root / "labels.bak").rename(root / "image_class_labels.txt")
    victim = next((root / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(UserError, match=r"1 of the 18 images listed in .*images\.txt are missing, e\.g\. .*"
                                        + victim.name):
        load(reg, "cub200", tmp_path)


def test_cub200_malformed_files_are_user_errors(reg, tmp_path):
    write_cub(tmp_path / "cub200")
    root = tmp_path / "cub200" / "CUB_200_2011"
    labels = root / "image_class_labels.txt"
    good = labels.read_text()
    assert good.startswith("1 1\n")
    labels.write_text("1 7\n" + good.split("\n", 1)[1])
    with pytest.raises(UserError, match=r"class 7 outside 1\.\.6"):
        load(reg, "cub200", tmp_path, size=8)
    labels.write_text(good.split("\n", 1)[1])  # image 1 has no class
    with pytest.raises(UserError, match=r"no class for image id 1"):
        load(reg, "cub200", tmp_path, size=8)
    labels.write_text(good)
    (root / "bounding_boxes.txt").unlink()
    load(reg, "cub200", tmp_path, size=8)  # boxes only needed for crop
    with pytest.raises(UserError, match=r"crop = true needs .*bounding_boxes\.txt"):
        load(reg, "cub200", tmp_path, size=8, crop=True)
    with pytest.raises(UserError, match=r"size must be a positive"):
        load(reg, "cub200", tmp_path, size=0)


# --------------------------------------------------------------------------- cars196
def test_cars196_from_cars_annos_mat_ignores_the_test_flag(reg, tmp_path):
    labels = write_cars_annos(tmp_path / "cars196")
    ds = load(reg, "cars196", tmp_path, size=12)
    assert_split(ds)
    assert ds.train_x.shape == (9, 3, 12, 12) and ds.test_x.shape == (9, 3, 12, 12)
    assert ds.train_y.tolist() == [c for c in labels if c < 3] and ds.test_y.tolist() == [c for c in labels if c >= 3]
    assert "cars_annos.mat" in ds.description
    cropped = load(reg, "cars196", tmp_path, size=8, crop=True)
    assert_colours(cropped.train_x, cropped.train_y)  # the 1-based inclusive box, exactly: no white
    assert_colours(cropped.test_x, cropped.test_y)
    assert (ds.train_x.float().amax(dim=(2, 3)) > 240).all()  # uncropped: the white border is there


def test_cars196_devkit_layout(reg, tmp_path):
    labels = write_cars_devkit(tmp_path / "cars196" / "stanford_cars")
    ds = load(reg, "cars196", tmp_path, size=8, crop=True)
    assert_split(ds)
    assert ds.train_y.tolist() == [c for c in labels if c < 3] and ds.test_y.tolist() == [c for c in labels if c >= 3]
    assert_colours(ds.train_x, ds.train_y)
    assert_colours(ds.test_x, ds.test_y)


def test_cars196_missing_files_name_them(reg, tmp_path):
    with pytest.raises(UserError, match=r"cars196.*cars_annos\.mat.*car_ims\.tgz"):
        load(reg, "cars196", tmp_path)
    write_cars_devkit(tmp_path / "cars196", with_labels=False)
    with pytest.raises(UserError,
                       match=r"missing cars_test_annos_withlabels\.mat.*cars_test_annos\.mat has no classes"):
        load(reg, "cars196", tmp_path)
    no_class = scipy.io.loadmat(tmp_path / "cars196" / "devkit" / "cars_test_annos.mat")
    scipy.io.savemat(tmp_path / "cars196" / "cars_test_annos_withlabels.mat", {"annotations": no_class["annotations"]})
    with pytest.raises(UserError, match=r"lack the field\(s\) class.*use cars_test_annos_withlabels\.mat"):
        load(reg, "cars196", tmp_path)
    other = tmp_path / "other"
    write_cars_annos(other / "cars196")
    next((other / "cars196" / "car_ims").glob("*.jpg")).unlink()
    with pytest.raises(UserError, match=r"1 of the 18 images listed in .*cars_annos\.mat are missing.*car_ims\.tgz"):
        load(reg, "cars196", other)
    (other / "cars196" / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match=r"cars_annos\.mat: cannot read as a MATLAB \.mat file"):
        load(reg, "cars196", other)


# --------------------------------------------------------------------------- sop
@pytest.mark.parametrize("nested", [True, False])
def test_sop_split_by_the_ebay_files(reg, tmp_path, nested):
    write_sop(tmp_path / "sop", nested=nested)
    ds = load(reg, "sop", tmp_path, size=10)
    assert_split(ds)
    assert ds.train_x.shape == (9, 3, 10, 10) and ds.test_x.shape == (9, 3, 10, 10)
    assert_colours(ds.train_x, ds.train_y)
    assert_colours(ds.test_x, ds.test_y)
    assert "Ebay_train.txt" in ds.description


def test_sop_uneven_split_and_the_retrieval_task(reg, tmp_path):
    """SOP's split is 11,318 / 11,316 classes, not halves: here 4 / 2 of 6. The task's default
    is the training file's classes (the splits share no class), not the first half; train_classes
    can still name a different set (here the first half: the last training class is then held out
    of training, and queries exactly the test classes all the same)."""
    write_sop(tmp_path / "sop", train_classes=4)
    ds = load(reg, "sop", tmp_path, size=8)
    assert_split(ds, train_classes=4)
    config = {"dataset": "sop", "train_classes": [], "n_validation": 0, "n_labeled": "all",
              "n_unlabeled": "all", "unlabeled_overlap": False, "seed": 0}
    for given, trained in (([], [0, 1, 2, 3]), ([0, 1, 2], [0, 1, 2])):
        config["train_classes"] = given
        train, held_out = split_classes(config, ds)
        assert train == trained and held_out == [c for c in range(6) if c not in trained]
        Retrieval().check(config, {"source": ds})
        plan = Retrieval().plan(config, {"source": ds})
        assert sorted(ds.train_y[plan.subsets.labeled].tolist()) == sorted(c for c in ds.train_y.tolist() if c in train)
        assert plan.eval_sets[0].indices.tolist() == list(range(len(ds.test_y)))  # every test image is a query


def test_cub200_default_split_is_the_retrieval_task_default(reg, tmp_path):
    write_cub(tmp_path / "cub200")
    ds = load(reg, "cub200", tmp_path, size=8)
    train, held_out = split_classes({"train_classes": []}, ds)
    assert set(train) == set(ds.train_y.tolist()) and set(held_out) == set(ds.test_y.tolist())


def test_sop_errors_name_the_file(reg, tmp_path):
    with pytest.raises(UserError, match=r"sop.*Stanford_Online_Products.*Stanford_Online_Products\.zip"):
        load(reg, "sop", tmp_path)
    root = write_sop(tmp_path / "sop")
    (root / "Ebay_test.txt").rename(root / "test.bak")
    with pytest.raises(UserError, match=r"missing Ebay_test\.txt"):
        load(reg, "sop", tmp_path)
    (root / "test.bak").rename(root / "Ebay_test.txt")
    train_txt = root / "Ebay_train.txt"
    good = train_txt.read_text()
    train_txt.write_text(good.split("\n", 1)[1])  # no header
    with pytest.raises(UserError,
                       match=r"Ebay_train\.txt: expected the header 'image_id class_id super_class_id path'"):
        load(reg, "sop", tmp_path)
    test_line = (root / "Ebay_test.txt").read_text().splitlines()[1].split()
    train_txt.write_text(good + f"99 {test_line[1]} 1 {test_line[3]}\n")  # a test class in the training file
    with pytest.raises(UserError, match=rf"1 classes are in both .*class_id {test_line[1]}"):
        load(reg, "sop", tmp_path)
    train_txt.write_text(good + "99 x 1 bicycle_final/a.JPG\n")
    with pytest.raises(UserError, match=r"Ebay_train\.txt, line 11: class_id 'x' is not a whole number"):
        load(reg, "sop", tmp_path)
    train_txt.write_text(good)
    (root / test_line[3]).write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=rf"{test_line[3]}: cannot read the image"):
        load(reg, "sop", tmp_path)


# --------------------------------------------------------------------------- cache (ssl-bench data build)
def test_build_caches_the_same_arrays_and_checks_them(reg, tmp_path):
    write_cub(tmp_path / "cub200")
    direct = load(reg, "cub200", tmp_path, size=8, crop=True)
    report = reg.dataset("cub200").build(tmp_path, size=8, crop=True)
    folder = tmp_path / "cub200" / "built" / "size8-crop"
    assert str(folder) in report and (folder / "manifest.json").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["params"] == {"size": 8, "crop": True} and manifest["num_classes"] == CLASSES
    for line in report.splitlines()[1:-1]:  # sha256sum lines
        digest, path = line.split("  ")
        assert manifest["files"][Path(path).name]["sha256"] == digest
    shutil.rmtree(tmp_path / "cub200" / "CUB_200_2011")  # the build needs no source files
    cached = load(reg, "cub200", tmp_path, size=8, crop=True)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(cached, key), getattr(direct, key))
    assert cached.num_classes == direct.num_classes and cached.mean == direct.mean and cached.std == direct.std
    assert cached.description.startswith(direct.description) and "ssl-bench data build" in cached.description
    with pytest.raises(UserError, match=r"cub200.*files not found"):  # other parameters: not cached
        load(reg, "cub200", tmp_path, size=8)
    data = bytearray((folder / "test_x.npy").read_bytes())
    data[-1] ^= 1
    (folder / "test_x.npy").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"test_x\.npy has sha256 .* corrupt.*ssl-bench data build cub200 --set size=8 "
                                        r"--set crop=true"):
        load(reg, "cub200", tmp_path, size=8, crop=True)


def test_sop_build_without_crop_parameter(reg, tmp_path):
    write_sop(tmp_path / "sop")
    direct = load(reg, "sop", tmp_path, size=8)
    reg.dataset("sop").build(tmp_path, size=8)
    assert (tmp_path / "sop" / "built" / "size8" / "manifest.json").is_file()
    cached = load(reg, "sop", tmp_path, size=8)
    assert torch.equal(cached.train_x, direct.train_x) and torch.equal(cached.test_y, direct.test_y)


# --------------------------------------------------------------------------- parameters, augmentation
def test_parameters_are_typed(reg):
    for name, keys in (("cub200", {"size", "crop"}), ("cars196", {"size", "crop"}), ("sop", {"size"})):
        spec = reg.dataset(name)
        assert {p.name for p in spec.params} == keys and spec.build is not None and spec.download is None
        assert validate(spec.params, {}, f"datasets.{name}.")["size"] == 64
        with pytest.raises(UserError, match=r"size"):
            validate(spec.params, {"size": "big"}, f"datasets.{name}.")


def test_dml_augment_is_seeded_and_keeps_the_shape():
    x = torch.rand(5, 3, 16, 16)
    a = ml.dml_augment(x, torch.Generator().manual_seed(1))
    b = ml.dml_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert 0 <= a.min() and a.max() <= 1
