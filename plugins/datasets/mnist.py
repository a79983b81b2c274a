"""MNIST and Fashion-MNIST from their original idx files: data sets ``mnist`` and ``fashion_mnist``.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): a 4-byte
magic number ``00 00 TYPE NDIM`` (TYPE 0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), then NDIM big-endian uint32 dimensions, then the data,
big-endian, row-major (C order). Images: ``train-images-idx3-ubyte`` (60000 x 28 x 28 ubyte),
labels: ``train-labels-idx1-ubyte`` (60000 ubyte), and the ``t10k-*`` test files (10,000). Each
file may be gzipped (``.gz``, as distributed) or not; gzip is recognised by its magic bytes.
:func:`read_idx` checks the magic number, the type, and that the data is exactly as long as the
dimensions say; anything else (truncated, corrupt gzip, trailing bytes) is a UserError naming
the file. Pixel (0, 0) is the top-left pixel (rows are stored top to bottom).

Where the files are looked for: ``DATA_DIR/mnist/`` and ``DATA_DIR/fashion_mnist/`` (see
``files.py``); Fashion-MNIST also at ``/usr/share/datasets/fashion-mnist/``, where Debian's
package ``dataset-fashion-mnist`` installs the upstream .gz files.

Downloads and checksums: the md5 sums of the .gz files are torchvision's
(``torchvision/datasets/mnist.py``, classes ``MNIST`` and ``FashionMNIST``), which are those
the data sets' authors publish (the Fashion-MNIST README lists the same four). MNIST comes from
PyTorch's S3 mirror first (yann.lecun.com often refuses downloads), then the original site;
Fashion-MNIST from Zalando's S3 bucket. Debian's .gz files do not have the official md5: Debian
normalised their gzip headers (file name dropped, modification time set to the build date);
the compressed data is byte-identical, which :func:`upstream_gzip_md5` checks by putting the
upstream header back (name and mtime, ``DEBIAN_UPSTREAM_MTIME``) and hashing the result.

Data set: 1 x 28 x 28 uint8 images, 10 classes, 60,000 train / 10,000 test (the official
split); mean/std per channel from the training images (0-1 scale, population std). No
standard augmentation (the LbA paper uses none for MNIST).
"""
from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.augment.pipelines import weak_without_flip
from ssl_bench_plugins.datasets import files

#: idx type code -> numpy dtype (big-endian)
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: per data set: download URL prefixes (tried in order) and md5 of each .gz file, from
#: torchvision/datasets/mnist.py (MNIST.mirrors/resources, FashionMNIST.mirrors/resources)
SOURCES = {
    "mnist": {
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion_mnist": {
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

#: Debian's dataset-fashion-mnist
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: gzip modification times (Unix seconds, 2017-08-31 10:50 UTC) in the headers of the upstream
#: Fashion-MNIST .gz files; with them and the file names, Debian's header-normalised files hash
#: to the official md5 sums (found by searching the seconds around the release for the
#: official md5 of each file; see upstream_gzip_md5)
DEBIAN_UPSTREAM_MTIME = {
    "train-images-idx3-ubyte.gz": 1504176606,
    "train-labels-idx1-ubyte.gz": 1504176606,
    "t10k-images-idx3-ubyte.gz": 1504176627,
    "t10k-labels-idx1-ubyte.gz": 1504176627,
}

DESCRIPTIONS = {
    "mnist": "MNIST handwritten digits (LeCun et al. 1998)",
    "fashion_mnist": "Fashion-MNIST, Zalando article images (Xiao et al. 2017)",
}


# --------------------------------------------------------------------------- idx
def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array in native byte order; UserError if malformed."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; EOFError: truncated
            raise UserError(f"{path}: corrupt gzip file ({type(exc).__name__}: {exc}); delete it and download "
                            f"it again") from exc
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, where: str = "idx data") -> np.ndarray:
    """Parse the bytes of an (uncompressed) idx file; see the module docstring for the format."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise UserError(f"{where}: not an idx file (magic number {raw[:4].hex() or 'missing'}, expected "
                        f"00 00 <type {'/'.join(f'{t:02x}' for t in IDX_TYPES)}> <ndim >= 1>)")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{where}: truncated idx header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise UserError(f"{where}: idx file {what}: dimensions {'x'.join(map(str, dims))} of {dtype.name} need "
                        f"{expected} bytes, the file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def _read_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path}: expected N x H x W unsigned bytes, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise UserError(f"{labels_path}: expected N unsigned bytes, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        raise UserError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return images[:, None], labels.astype(np.int64)  # N x 1 x H x W


def load_idx_dataset(name: str, data_dir, extra_dirs=(), alternative: str = "") -> ImageDataset:
    """Load an MNIST-format data set ``name`` (the four idx files) from the first directory holding them."""
    dirs = files.search_dirs(name, data_dir, extra_dirs)
    paths = files.find_files(name, dirs, [(f, f + ".gz") for f in FILES],
                             files.how_to_get(name, data_dir, alternative))
    train_x, train_y = _read_split(paths[0], paths[1], 10)
    test_x, test_y = _read_split(paths[2], paths[3], 10)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{name}: training images are {train_x.shape[1:]} but test images {test_x.shape[1:]}")
    mean, std = files.channel_stats(train_x)
    c, h, w = train_x.shape[1:]
    return ImageDataset(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)), train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)), test_y=torch.from_numpy(test_y),
        num_classes=10, mean=mean, std=std,
        pipelines={"weak": weak_without_flip} if name == "mnist" else {},  # a mirrored digit is another symbol
        description=f"{DESCRIPTIONS[name]}, {len(train_y)} train / {len(test_y)} test, {c}x{h}x{w}, "
                    f"from {paths[0].parent}",
    )


def load_mnist(data_dir) -> ImageDataset:
    return load_idx_dataset("mnist", data_dir)


def load_fashion_mnist(data_dir) -> ImageDataset:
    return load_idx_dataset("fashion_mnist", data_dir, [DEBIAN_DIR],
                            "or install Debian's package `apt-get install dataset-fashion-mnist` "
                            f"(files in {DEBIAN_DIR})")


# --------------------------------------------------------------------------- downloads
def download(name: str, data_dir) -> None:
    """Fetch the four .gz files of ``name`` into ``data_dir/name/``, each md5-verified."""
    source = SOURCES[name]
    target = files.search_dirs(name, data_dir)[0]
    for filename, md5 in source["md5"].items():
        files.download_file([m + filename for m in source["mirrors"]], target / filename, md5=md5)


def download_mnist(data_dir) -> None:
    download("mnist", data_dir)


def download_fashion_mnist(data_dir) -> None:
    download("fashion_mnist", data_dir)


def upstream_gzip_md5(path: str | Path, original_name: str, mtime: int) -> str:
    """md5 of a .gz file after restoring the gzip header the upstream file had.

    Tools such as Debian's strip-nondeterminism rewrite a gzip header (RFC 1952: magic 1f 8b,
    method, flags, 4-byte little-endian mtime, extra flags, OS, then optional fields) to drop the
    stored file name and fix the mtime, leaving the deflate data and trailer untouched. This
    rebuilds ``1f 8b 08 FNAME mtime XFL OS name\\0`` + the original compressed data and returns its
    md5, to compare with the official checksum."""
    raw = Path(path).read_bytes()
    if len(raw) < 18 or raw[:3] != b"\x1f\x8b\x08":
        raise UserError(f"{path}: not a gzip file")
    flags, pos = raw[3], 10
    if flags & 0x04:  # FEXTRA
        pos += 2 + struct.unpack("<H", raw[pos:pos + 2])[0]
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            pos = raw.index(b"\0", pos) + 1
    if flags & 0x02:  # FHCRC
        pos += 2
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + raw[8:10] + original_name.encode("latin-1") + b"\0"
    return hashlib.md5(header + raw[pos:]).hexdigest()


@hookimpl
def ssl_bench_datasets():
    return [
        DatasetSpec("mnist", load_mnist, "MNIST digits from idx files (1x28x28, 60k/10k; `ssl-bench data download "
                                          "mnist`)", download=download_mnist),
        DatasetSpec("fashion_mnist", load_fashion_mnist,
                    "Fashion-MNIST from idx files (1x28x28, 60k/10k; Debian dataset-fashion-mnist or download)",
                    download=download_fashion_mnist),
    ]


