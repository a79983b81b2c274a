"""FRGC as clustered by JULE (Yang, Parikh and Batra 2016, "Joint Unsupervised Learning of Deep
Representations and Image Clusters", CVPR): data set ``frgc``. Used by associative deep
clustering (Haeusser et al. 2018, §3.5: "For FRGC, we follow the protocol introduced in [JULE],
and use the 20 selected subsets, providing a total of 2,462 face images. They have been cropped to
32 x 32 px images.").

The file: ``datasets/FRGC/data4torch.h5`` of JULE's code (github.com/jwyang/JULE.torch, added in
commit aad4c752 of 2016-05-24 and unchanged since; git blob id
91e200768b454a6c238c5cb4abf16e756e6e9649, which ``git hash-object data4torch.h5`` reproduces).
An HDF5 file with two data sets, read by name with ``h5py``:

- ``data``: the images. JULE's author wrote his files from MATLAB arrays of Height x Width x
  Channel x N (jwyang/JULE.torch issue #6); MATLAB writes column-major, so a row-major reader
  (h5py, torch-hdf5) sees N x C x W x H. Both public readers of this file treat it so: ADC's own
  (jplapp/associative_deep_clustering, ``semisup/tools/frgc.py``: ``np.swapaxes(data, 1, 3)`` for
  channels-last) and dti-clustering's (monniert/dti-clustering, ``src/dataset/hdf5.py``: the
  same swap, FRGC not marked ``transposed``). We swap the last two axes: N x C x H x W. Expected
  2,462 x 3 x 32 x 32. Pixel values 0..255 (dti-clustering casts them to uint8 unchanged); any
  numeric type is accepted if every value lies in [0, 255] (rounded to the nearest integer);
  anything else is a UserError, since it would not be this file.
- ``labels``: one subject id per image (MATLAB 1 x N, so N x 1 here; any shape with N entries is
  accepted). Ids need not be 0..19: they are mapped to 0..K-1 in sorted order of the distinct
  values, as both readers above do (ADC: ``unique.index(l)``). ``num_classes`` = K (20 for FRGC).

Split: the protocol clusters the whole set and scores the clustering on the same images (JULE's
``train.lua`` copies its training data as the test data; ADC's ``semisup/tools/frgc.py`` returns
the same images for "train" and "test"), so train = test = all images: ``test_x`` is ``train_x`` (the same tensor). A clustering
run (``task = "clustering"``, ``n_unlabeled = "all"``) then trains on all 2,462 images and its
``test_*`` and ``train_*`` metrics are the same numbers. Not for a classification (ssl) run: its
test error would be measured on its own training images.

Normalisation: per-channel mean/std (0-1 scale, population std) over all images. No augmentation
of its own (``augment = true`` keeps the images as they are; methods' views, e.g. ADC's crop, flip,
noise and colour changes, come from the view pipelines).

Where the file is looked for: ``DATA_DIR/frgc/``, then ``DATA_DIR/FRGC/`` (JULE's folder name, so
``--data-dir`` may point at a JULE checkout's ``datasets/``). ``ssl-bench data download frgc``
fetches it from JULE's repository (pinned commit) and checks the git blob id. Reading needs
``h5py`` (a dependency of ssl-bench).
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ssl_bench import DatasetSpec, ImageDataset, UserError, hookimpl
from ssl_bench_plugins.datasets import files

NAME = "frgc"
FILE = "data4torch.h5"
#: JULE's repository at a pinned commit, then its default branch (the file is unchanged since 2016)
URLS = (
    "https://raw.githubusercontent.com/jwyang/JULE.torch/69bdfd82f9dfd431619a8ee25ac832da76a827e2/datasets/FRGC/"
    + FILE,
    "https://github.com/jwyang/JULE.torch/raw/master/datasets/FRGC/" + FILE,
)
#: git's object id of the released file: sha1 of b"blob <size>\0" + its bytes
GIT_BLOB_ID = "91e200768b454a6c238c5cb4abf16e756e6e9649"
SOURCE = "datasets/FRGC/data4torch.h5 of https://github.com/jwyang/JULE.torch"


def git_blob_id(path: str | os.PathLike) -> str:
    """The id git gives the file's contents (``git hash-object``): sha1 of ``blob <size>\\0`` + bytes."""
    path = Path(path)
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """JULE's ``data4torch.h5`` as (uint8 N x C x H x W images, int64 labels 0..K-1, K); UserError if malformed."""
    try:
        import h5py
    except ImportError:
        raise UserError(f"data set {NAME!r} needs h5py to read {path}: pip install h5py") from None
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("data", "labels") if k not in f]
            if missing:
                raise UserError(f"{path}: expected HDF5 data sets 'data' and 'labels' (JULE's format), "
                                f"missing {', '.join(missing)}; found {sorted(f.keys())}")
            data, labels = np.asarray(f["data"]), np.asarray(f["labels"])
    except OSError as exc:  # h5py raises OSError for a file that is not HDF5 or is truncated
        raise UserError(f"{path}: cannot read as an HDF5 file ({exc}); get {SOURCE} again") from None
    if data.ndim != 4 or data.dtype.kind not in "uif":
        raise UserError(f"{path}: 'data' must be numeric N x C x W x H (as JULE's MATLAB-written file), "
                        f"got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise UserError(f"{path}: 'data' holds no images")
    if data.dtype != np.uint8:
        low, high = data.min(), data.max()
        if not (0 <= low and high <= 255):  # also false for nan
            raise UserError(f"{path}: pixel values must lie in 0..255, found {low}..{high} "
                            f"(whitened or rescaled data is not the released file)")
        data = np.rint(data).astype(np.uint8)
    labels = labels.reshape(-1)
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels")
    if labels.dtype.kind not in "uif" or (labels.dtype.kind == "f" and not np.isfinite(labels).all()):
        raise UserError(f"{path}: 'labels' must be numeric subject ids, got {labels.dtype}")
    classes, y = np.unique(labels, return_inverse=True)
    images = np.ascontiguousarray(data.transpose(0, 1, 3, 2))  # N x C x W x H -> N x C x H x W
    return images, y.astype(np.int64).reshape(-1), len(classes)


def _dirs(data_dir) -> list[Path]:
    base = files.search_dirs(NAME, data_dir)[0]
    return [base, base.parent / "FRGC"]


def load_frgc(data_dir) -> ImageDataset:
    dirs = _dirs(data_dir)
    how = (f"Get it with `ssl-bench data download {NAME} --data-dir {Path(data_dir).expanduser()}` (needs a network), "
           f"or copy {SOURCE} to {dirs[0] / FILE}.")
    (path,) = files.find_files(NAME, dirs, [FILE], how)
    x, y, k = read_h5(path)
    mean, std = files.channel_stats(x)
    images, labels = torch.from_numpy(x), torch.from_numpy(y)
    c, h, w = x.shape[1:]
    return ImageDataset(
        name=NAME, train_x=images, train_y=labels, test_x=images, test_y=labels, num_classes=k, mean=mean, std=std,
        description=f"FRGC (JULE protocol), {len(y)} faces of {k} subjects, {c}x{h}x{w}; train = test = all images "
                    f"(clustering protocol), from {path}",
    )


def download_frgc(data_dir) -> None:
    """Fetch ``data4torch.h5`` from JULE's repository into ``DATA_DIR/frgc/``, checked by its git blob id.

    Nothing is fetched if the file is already there with that id. Each URL is tried in turn,
    streamed into a temporary file beside the target; only a file with the right id is renamed
    into place."""
    dest = files.search_dirs(NAME, data_dir)[0] / FILE
    if dest.is_file() and git_blob_id(dest) == GIT_BLOB_ID:
        files.say(f"{dest}: present, git blob id verified")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    failures = []
    try:
        for url in URLS:
            files.say(f"downloading {url} -> {dest}")
            try:
                with urllib.request.urlopen(url, timeout=files.TIMEOUT_S) as response, open(tmp, "wb") as out:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
            except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: bad URL
                failures.append(f"{url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}")
                continue
            got = git_blob_id(tmp)
            if got == GIT_BLOB_ID:
                os.replace(tmp, dest)
                return
            failures.append(f"{url}: git blob id mismatch (expected {GIT_BLOB_ID}, got {got}; file deleted)")
    finally:
        tmp.unlink(missing_ok=True)
    raise UserError(f"could not download {FILE}: " + "; ".join(failures)
                    + f". Without a network, copy {SOURCE} to {dest}")


@hookimpl
def ssl_bench_datasets():
    return [DatasetSpec(NAME, load_frgc, "FRGC faces, JULE protocol (3x32x32, 2,462 images of 20 subjects; "
                                         "train = test = all, for clustering); `ssl-bench data download frgc`",
                        download=download_frgc)]
