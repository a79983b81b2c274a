"""Shared helpers of the file-based data-set plugins (no hooks here): where files are looked
for, a checksummed download, archive extraction, per-channel statistics, image decoding and
bilinear resizing with PIL (with a sha256 of the arrays read, for releases without checksums), and
the folders ``ssl-bench data build`` writes: arrays plus a sha256 manifest, written atomically and
checked on load.

Where a data set's files are looked for
    ``data_dir / NAME`` first, where ``data_dir`` is what ``load`` receives (the core resolves it:
    ``--data-dir``, else ``$SSL_BENCH_DATA``, else ``~/.cache/ssl-bench``; see
    :func:`ssl_bench.data.default_data_dir`), then any system locations the data set names (e.g.
    ``/usr/share/datasets/fashion-mnist`` of Debian's ``dataset-fashion-mnist``). All of a data
    set's files come from ONE directory: the first that holds every required file. If none does,
    :func:`missing_files` raises one :class:`ssl_bench.UserError` naming the data set, every
    directory looked in (with what each lacks) and how to get the files.

Downloads (:func:`download_file`)
    ``urllib`` streams the file into a temporary file beside the destination
    (``.NAME.PID.part``), hashing as it goes; only a file whose checksum (md5 or sha256) matches
    is renamed into place (``os.replace``, atomic on one file system), so an interrupted or
    corrupted download never leaves a file that looks complete. A mismatch deletes the temporary
    file and raises; an unreachable server (no network) raises a UserError saying which URL(s)
    failed and where to put the file by hand. A destination that already holds the right
    checksum is not downloaded again. Loaders do not re-hash files on every load (SVHN's extra
    set is 1.3 GB): checksums are verified when downloading.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ssl_bench import UserError

#: seconds without data before a download gives up
TIMEOUT_S = 60
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- where files are
def search_dirs(name: str, data_dir: str | os.PathLike, extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The directories data set ``name`` is looked for in, in order: ``data_dir/name``, then ``extra``."""
    return [Path(data_dir).expanduser() / name, *(Path(p) for p in extra)]


def find_files(name: str, dirs: Sequence[Path], files: Sequence[str | Sequence[str]], how: str) -> list[Path]:
    """Paths of ``files`` in the first of ``dirs`` that holds all of them.

    Each entry of ``files`` is a file name or a sequence of alternative names (e.g.
    ``("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")``), the first present one wins.
    Raises :func:`missing_files`'s UserError if no directory holds every file; ``how`` says how
    to get them (see :func:`how_to_get`)."""
    alternatives = [(f,) if isinstance(f, str) else tuple(f) for f in files]
    lacking: dict[Path, list[str]] = {}
    for d in dirs:
        found, missing = [], []
        for names in alternatives:
            hit = next((d / n for n in names if (d / n).is_file()), None)
            if hit is None:
                missing.append(" or ".join(names))
            else:
                found.append(hit)
        if not missing:
            return found
        lacking[d] = missing
    missing_files(name, lacking, how)


def missing_files(name: str, lacking: dict[Path, list[str]], how: str):
    """Raise the one UserError for data files that are not there: the data set, each directory
    looked in with the files it lacks (or that it does not exist), and how to get them."""
    places = []
    for d, missing in lacking.items():
        if not d.is_dir():
            places.append(f"{d} (no such directory)")
        else:
            places.append(f"{d} (missing {', '.join(missing)})")
    raise UserError(f"data set {name!r}: files not found; looked in {'; '.join(places)}. {how}")


def how_to_get(name: str, data_dir: str | os.PathLike, alternative: str = "") -> str:
    """The 'how to get the files' sentence of the missing-files message."""
    text = (f"Get them with `ssl-bench data download {name} --data-dir {Path(data_dir).expanduser()}` "
            f"(needs a network; without --data-dir it uses $SSL_BENCH_DATA, then ~/.cache/ssl-bench)")
    return text + (f", {alternative}" if alternative else "") + "."


# --------------------------------------------------------------------------- checksums and downloads
def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(md5: str | None, sha256: str | None) -> tuple[str, str]:
    if (md5 is None) == (sha256 is None):
        raise ValueError("give exactly one of md5= and sha256=")
    return ("md5", md5.lower()) if md5 is not None else ("sha256", sha256.lower())


def verify(path: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None) -> bool:
    """Whether the file at ``path`` exists and has the given checksum."""
    algorithm, digest = _expected(md5, sha256)
    return Path(path).is_file() and file_digest(path, algorithm) == digest


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def download_file(urls: str | Sequence[str], dest: str | os.PathLike, *, md5: str | None = None,
                  sha256: str | None = None, quiet: bool = False) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves the file with the right checksum.

    Skips the download if ``dest`` already has the checksum. Otherwise streams each URL in turn
    (any urllib URL: http(s), ftp, file) into ``dest``'s directory as ``.NAME.PID.part``, hashing
    on the way; a matching file is renamed to ``dest``, a mismatching one is deleted and the next
    URL tried. Raises UserError naming every URL and what went wrong with it when none succeeds
    (an unreachable host: "no network?"; a mismatch: expected and actual checksums); no
    partial or mismatching file is left behind."""
    algorithm, digest = _expected(md5, sha256)
    dest = Path(dest)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if verify(dest, **{algorithm: digest}):
        if not quiet:
            say(f"{dest}: present, {algorithm} verified")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    failures = []
    for url in urls:
        try:
            if not quiet:
                say(f"downloading {url} -> {dest}")
            h = hashlib.new(algorithm)
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
            got = h.hexdigest()
            if got != digest:
                tmp.unlink(missing_ok=True)
                failures.append(f"{url}: {algorithm} mismatch (expected {digest}, got {got}; file deleted)")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError; ValueError: bad URL
            tmp.unlink(missing_ok=True)
            reason = getattr(exc, "reason", exc)
            failures.append(f"{url}: {type(exc).__name__}: {reason}")
        except BaseException:  # KeyboardInterrupt: leave nothing behind
            tmp.unlink(missing_ok=True)
            raise
    network = any("mismatch" not in f for f in failures)
    raise UserError(f"could not download {dest.name}: " + "; ".join(failures)
                    + (". No network? Fetch the file elsewhere and put it at " + str(dest) if network else ""))


def extract_tar(archive: str | os.PathLike, into: str | os.PathLike, member_dir: str) -> Path:
    """Extract ``member_dir/`` of a (gzipped) tar archive into ``into/member_dir``, atomically.

    The archive is unpacked into a temporary directory beside the target, which is then renamed
    into place (replacing an older copy), so an interrupted extraction leaves no half directory.
    Uses tarfile's ``data`` filter where Python has it (no absolute paths, links out, devices)."""
    into = Path(into)
    target = into / member_dir
    tmp = into / f".extract-{member_dir}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.name == member_dir or m.name.startswith(member_dir + "/")]
            if not members:
                raise UserError(f"{archive} holds no {member_dir}/ directory: not the expected archive")
            unsafe = [m.name for m in members if not (m.isfile() or m.isdir()) or ".." in Path(m.name).parts]
            if unsafe:  # also checked here for Pythons without tarfile's data filter (< 3.10.12)
                raise UserError(f"{archive}: unexpected members (links, devices or '..' paths): {unsafe[:5]}")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / member_dir, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot extract {archive}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- statistics
def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N x C x H x W images on the 0-1 scale.

    Exact: sums of values and squares are accumulated as integers over chunks of ``chunk``
    images (no float copy of a whole data set; SVHN with its extra set is 1.9 GB of uint8)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 N x C x H x W, got {images.dtype} {images.shape}")
    channels = images.shape[1]
    s1 = [0] * channels
    s2 = [0] * channels
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        ones = part.sum(axis=(0, 2, 3), dtype=np.uint64)
        squares = np.square(part, dtype=np.uint32).sum(axis=(0, 2, 3), dtype=np.uint64)
        for c in range(channels):
            s1[c] += int(ones[c])
            s2[c] += int(squares[c])
    n = images.shape[0] * images.shape[2] * images.shape[3]
    if n == 0:
        raise ValueError("no images")
    mean = tuple(s / (n * 255.0) for s in s1)
    std = tuple(((n * q - s * s) ** 0.5) / (n * 255.0) for s, q in zip(s1, s2))  # exact integer variance
    return mean, std


# --------------------------------------------------------------------------- images
def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 N x C x H x W (C = 1 or 3) -> uint8 N x C x size[0] x size[1], each image resized by
    PIL's ``Image.resize(..., BILINEAR)`` (a triangle filter whose support grows with the
    downscaling factor, so shrinking averages rather than skips pixels; enlarging is plain
    bilinear interpolation between pixel centres), as the LbA authors' preprocessing does."""
    from PIL import Image

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 N x 1|3 x H x W, got {images.dtype} {images.shape}")
    h, w = size
    out = np.empty((len(images), images.shape[1], h, w), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        resized = np.asarray(pil.resize((w, h), Image.BILINEAR))  # PIL sizes are (width, height)
        out[i] = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    return out


def pil_rgb(path: str | os.PathLike, size: int | tuple[int, int], box: tuple[int, int, int, int] | None = None,
            clip: bool = False) -> np.ndarray:
    """An image file (any format PIL reads: PNG, PPM, JPEG, ...) as uint8 3 x size[0] x size[1]
    (3 x size x size for a whole number): converted to RGB, cropped to ``box`` = (left, upper,
    right, lower) in PIL's convention (right and lower exclusive) if given, then resized with PIL's
    BILINEAR filter. With ``clip`` the box is first clipped to the image (a box with nothing
    inside it is a UserError); without, PIL pads a box reaching outside with black. UserError
    naming the file if PIL cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    if box is not None:
        if clip:
            w, h = image.size
            clipped = (max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3]))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise UserError(f"{path}: bounding box {box} lies outside the {w}x{h} image")
            box = clipped
        image = image.crop(box)
    h, w = (size, size) if isinstance(size, int) else size
    return np.asarray(image.resize((w, h), Image.BILINEAR)).transpose(2, 0, 1)


def arrays_sha256(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' bytes in order (C order; dtype and shape are not hashed): the
    fingerprint of what a loader read, for data sets whose released files have no published
    checksum."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)  # the buffer itself: no copy of a large array
    return h.hexdigest()


# --------------------------------------------------------------------------- built (cached) folders
#: the manifest of a folder written by ``ssl-bench data build`` (:func:`write_with_manifest`)
MANIFEST = "manifest.json"


def write_with_manifest(target: Path, arrays: Mapping[str, np.ndarray], save: Callable[[Path, np.ndarray], None],
                        manifest: dict, heading: str, entry_fields: Sequence[str] = ()) -> str:
    """Write ``arrays`` (file name -> array, each file written by ``save(path, array)``) and a
    :data:`MANIFEST` to the folder ``target``, atomically: into a temporary folder beside it,
    then renamed into place, replacing an older one. The manifest is ``manifest`` plus ``files``:
    per file its ``shape``, the ``entry_fields`` asked for (``dtype``: the array's; ``bytes``: the
    file's size) and its ``sha256``. Returns the report the build command prints: ``heading``,
    each file's sha256 (``sha256sum`` style) and the manifest's path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    old = target.parent / f".{target.name}.{os.getpid()}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        entries = {}
        for file, array in arrays.items():
            save(tmp / file, array)
            entry = {"shape": list(array.shape)}
            if "dtype" in entry_fields:
                entry["dtype"] = str(array.dtype)
            if "bytes" in entry_fields:
                entry["bytes"] = (tmp / file).stat().st_size
            entries[file] = {**entry, "sha256": file_digest(tmp / file, "sha256")}
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "files": entries}, indent=2) + "\n")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    lines = [heading]
    lines += [f"{e['sha256']}  {target / file}" for file, e in entries.items()]
    lines.append(f"manifest: {target / MANIFEST}")
    return "\n".join(lines)


def verify_manifest(folder: Path, name: str, file_names: Sequence[str], rebuild: str, expect: Mapping[str, object],
                    show: Callable[[Mapping], str], fields: Mapping[str, Callable[[object], object]]) -> dict | None:
    """A built folder checked against its :data:`MANIFEST`: None if it has none; else the
    manifest, with each of its ``fields`` converted by its function (e.g. ``{"description": str}``),
    once it names data set ``name`` with the values of ``expect`` (e.g. ``{"seed": 0}``) and every
    file of ``file_names`` is there with the sha256 it lists. Each failure is a UserError ending in
    ``rebuild`` (how to rebuild the folder): a manifest that cannot be read or lacks a file or
    field, one describing another data set or other values (both written as ``show`` writes them),
    a missing file, or a file whose sha256 differs."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        wanted = {f: manifest["files"][f]["sha256"] for f in file_names}
        for key, convert in fields.items():
            manifest[key] = convert(manifest[key])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{manifest_path}: not a manifest of a built {name} ({type(exc).__name__}: {exc}); "
                        f"{rebuild}") from None
    if manifest.get("dataset") != name or any(manifest.get(k) != v for k, v in expect.items()):
        raise UserError(f"{manifest_path} describes {manifest.get('dataset')!r} {show(manifest)}, not {name!r} "
                        f"{show(expect)}; {rebuild}")
    for file, want in wanted.items():
        path = folder / file
        if not path.is_file():
            raise UserError(f"built {name}: {path} is missing (listed in {manifest_path}); {rebuild}")
        got = file_digest(path, "sha256")
        if got != want:
            raise UserError(f"built {name}: {path} has sha256 {got}, but {manifest_path} says {want}: the file is "
                            f"corrupt or was changed since it was built; {rebuild}")
    return manifest
