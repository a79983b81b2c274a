"""STL-10 (Coates, Lee and Ng 2011), binary format: data set ``stl10``.

Format (https://cs.stanford.edu/~acoates/stl10/, the ``stl10_binary`` directory of
``stl10_binary.tar.gz``): ``train_X.bin`` (5,000 images), ``test_X.bin`` (8,000),
``unlabeled_X.bin`` (100,000) are raw uint8, 3 x 96 x 96 per image, channels R, G, B, each
channel stored column-major (MATLAB order), so an image read as C-order 3 x 96 x 96 is
transposed: the loader reshapes the file to N x 3 x 96 x 96 and swaps the last two axes (as the
official reader and torchvision do), giving N x C x H x W with pixel (0, 0) top-left.
``train_y.bin`` / ``test_y.bin`` hold one uint8 label per image, 1..10, mapped to 0..9. The
official 10 training folds (``fold_indices.txt``) are not used: the training set is all 5,000
labeled images, and runs draw their labeled subsets from it by the protocol's seed.

Parameters: ``unlabeled`` (default true) reads the 100,000 unlabeled images into
``ImageDataset.unlabeled_x``, the separate pool a run's unlabeled set is drawn from (they
include classes outside the 10; 2.7 GB in memory, read in chunks so the transpose needs no
second full copy); false skips that file (supervised runs, quick checks). Mean/std per channel
(0-1 scale, population std) come from the 5,000 labeled training images, whatever ``unlabeled``
is, so normalisation does not change with the parameter.
With ``unlabeled = false`` the data set is the 5,000 labeled training images only (and the 8,000
test images): the protocol of associative deep clustering ("We use all 5,000 images of the training
set ... We do not use the unlabeled set, as it contains images of objects of other classes",
Haeusser et al. 2018, §3.5); a clustering run then draws its unlabeled images from those 5,000.

Where the files are looked for: ``DATA_DIR/stl10/stl10_binary/``, then ``DATA_DIR/stl10/``
(see ``files.py``). ``ssl-bench data download stl10`` fetches ``stl10_binary.tar.gz`` (2.6 GB,
md5-verified), extracts ``stl10_binary/`` into ``DATA_DIR/stl10/``, verifies the md5 of each
extracted binary, then deletes the archive. URL and md5 sums are torchvision's
(``torchvision/datasets/stl10.py``: ``STL10.url``, ``tgz_md5``, ``train_list``, ``test_list``).

Standard augmentation (``augment = true``): ``stl10_augment`` of ``ssl_bench_plugins.augment.ops``
(random crop, brightness/saturation/hue, small rotations, as the LbA paper lists for STL-10),
imported when first called so that loading never depends on it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.datasets import files

NAME = "stl10"
SIZE = 96
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
ARCHIVE_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
#: md5 of the extracted files, from torchvision's STL10.train_list / test_list
FILE_MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
#: images per chunk when reading (about 110 MB)
CHUNK = 4096


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """STL-10's standard augmentation: ``ssl_bench_plugins.augment.ops.stl10_augment``, imported at call time."""
    from ssl_bench_plugins.augment.ops import stl10_augment

    return stl10_augment(x, generator)


def read_images(path: Path) -> np.ndarray:
    """An STL-10 ``*_X.bin`` file as uint8 N x 3 x 96 x 96 (row-major pixels); UserError if its size is
    not a whole number of images. Read through a memory map in chunks of CHUNK images."""
    per_image = 3 * SIZE * SIZE
    size = path.stat().st_size
    if size % per_image:
        raise UserError(f"{path}: {size} bytes is not a whole number of 3x{SIZE}x{SIZE} images "
                        f"({per_image} bytes each): truncated or not an STL-10 file; delete it and download again")
    n = size // per_image
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    if n == 0:
        return out
    stored = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, SIZE, SIZE))  # each channel column-major
    for start in range(0, n, CHUNK):
        np.copyto(out[start:start + CHUNK], stored[start:start + CHUNK].transpose(0, 1, 3, 2))
    del stored
    return out


def read_labels(path: Path, n: int) -> np.ndarray:
    """An STL-10 ``*_y.bin`` file (uint8 labels 1..10) as int64 0..9, checked against ``n`` images."""
    y = np.fromfile(path, dtype=np.uint8)
    if len(y) != n:
        raise UserError(f"{path}: {len(y)} labels for {n} images")
    if n and (y.min() < 1 or y.max() > 10):
        raise UserError(f"{path}: labels must be 1..10, found {y.min()}..{y.max()}")
    return y.astype(np.int64) - 1


def _dirs(data_dir) -> list[Path]:
    base = files.search_dirs(NAME, data_dir)[0]
    return [base / "stl10_binary", base]


def load_stl10(data_dir, unlabeled: bool = True) -> ImageDataset:
    needed = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"] + (["unlabeled_X.bin"] if unlabeled else [])
    how = files.how_to_get(NAME, data_dir, f"or extract stl10_binary/ of {URL} into {_dirs(data_dir)[1]}")
    paths = files.find_files(NAME, _dirs(data_dir), needed, how)
    train_x = read_images(paths[0])
    train_y = read_labels(paths[1], len(train_x))
    test_x = read_images(paths[2])
    test_y = read_labels(paths[3], len(test_x))
    pool = torch.from_numpy(read_images(paths[4])) if unlabeled else None
    mean, std = files.channel_stats(train_x)
    pool_text = f" + {len(pool)} unlabeled" if pool is not None else " (unlabeled pool not loaded)"
    return ImageDataset(
        name=NAME,
        train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y),
        num_classes=10, mean=mean, std=std, unlabeled_x=pool, augment=augment,
        description=f"STL-10, {len(train_y)} train{pool_text} / {len(test_y)} test, 3x{SIZE}x{SIZE}, "
                    f"from {paths[0].parent}",
    )


def download_stl10(data_dir) -> None:
    """Fetch and verify the archive, extract ``stl10_binary/``, verify each file, delete the archive.

    Nothing is fetched if every binary is already there with its md5."""
    base = files.search_dirs(NAME, data_dir)[0]
    target = base / "stl10_binary"
    if all(files.verify(target / f, md5=m) for f, m in FILE_MD5.items()):
        files.say(f"{target}: present, md5 verified")
        return
    archive = files.download_file(URL, base / "stl10_binary.tar.gz", md5=ARCHIVE_MD5)
    files.extract_tar(archive, base, "stl10_binary")
    bad = [f for f, m in FILE_MD5.items() if not files.verify(target / f, md5=m)]
    if bad:
        raise UserError(f"{NAME}: after extracting {archive}, these files are missing or have the wrong md5: "
                        f"{', '.join(bad)}")
    archive.unlink()


@hookimpl
def ssl_bench_datasets():
    return [DatasetSpec(NAME, load_stl10, "STL-10 (3x96x96, 5,000/8,000 + 100,000 unlabeled pool); "
                                          "`ssl-bench data download stl10`", download=download_stl10)]
