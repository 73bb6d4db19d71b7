"""Image-folder datasets (<split>/<class>/<n>.jpg, a plain folder or a .tar/.tar.gz): decoded once, cached as uint8.

This is the layout of the JPEG copy of CIFAR-10 here and how users bring their own images. Decoding tens of
thousands of small files takes seconds, so the decoded arrays go to <cache_dir>/data/<name>-<split>-<key>.npz; the key
hashes everything the arrays depend on (the archive bytes or the folder listing, the order, the class names, the
Pillow version), so a stale cache is never read, only left behind.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from tinytrain.atomic import atomic_path

from .errors import DataFormatError, DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CACHE_FORMAT = 1  # bump when the cached arrays change meaning, so older cache files are no longer matched
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Member:
    """One image file of the split: its class, its number within the class folder, where it is, and its bytes."""

    label: int
    number: int | None  # the file stem as an integer (0042.jpg -> 42); None when the stem is not a number
    name: str  # path inside the archive or folder, for messages
    data: bytes


def load_image_folder(
    path: str | Path,
    split: str,
    label_names: Sequence[str],
    order_labels: np.ndarray | None = None,
    image_size: tuple[int, int] = (32, 32),
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 RGB and labels (N,) uint8 of `split` from the folder or archive at `path`.

    Class c's images are <split>/<label_names[c]>/<n>.<jpg|jpeg|png>. With `order_labels` ((N,) labels in the wanted
    order), the files of class c must be numbered 0..count-1 and file k goes where label c occurs for the k-th time:
    this restores a dataset's original order from its labels alone. Without it the order is class-major, and files
    sorted by number (by name if the stems are not all numbers). With `cache_dir`, arrays are read from and written
    to <cache_dir>/data/. Raises DataNotFoundError, or DataFormatError naming the archive member or file.
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(path, "no such image folder or archive")
    if order_labels is not None and order_labels.size and (
        order_labels.min() < 0 or order_labels.max() >= len(label_names)
    ):
        raise ValueError(f"order_labels must lie in 0..{len(label_names) - 1} (one per class in label_names)")
    height, width = image_size
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(path, split, label_names, order_labels, image_size)
        cache_file = Path(cache_dir) / "data" / f"{_stem(path)}-{split}-{key}.npz"
        cached = _read_cache(cache_file, height, width, len(label_names))
        if cached is not None:
            return cached
    members = _read_members(path, split, label_names, progress)
    arranged = _arrange(path, split, members, label_names, order_labels)
    images = np.empty((len(arranged), height, width, 3), dtype=np.uint8)  # (N, H, W, 3)
    labels = np.empty(len(arranged), dtype=np.uint8)  # (N,)
    bar = tqdm(arranged, desc=f"decode {path.name} {split}", unit="img", disable=not progress)
    for index, member in enumerate(bar):
        _decode(images[index], path, member)
        labels[index] = member.label
    if cache_file is not None:
        _write_cache(cache_file, images, labels)
    return images, labels


def _stem(path: Path) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


# ---------------------------------------------------------------- reading members ----------------------------------


def _read_members(path: Path, split: str, label_names: Sequence[str], progress: bool) -> list[Member]:
    """Every image file under <split>/<class>/ with its bytes; other splits and non-image files are skipped."""
    classes = {name: label for label, name in enumerate(label_names)}
    members = []

    def add(name: str, read) -> None:
        parts = PurePosixPath(name).parts
        # <anything>/<split>/<class>/<file>: an archive may wrap the split folders in a top-level folder
        if len(parts) < 3 or parts[-3] != split or parts[-1].startswith("."):
            return
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            return
        if parts[-2] not in classes:
            raise DataFormatError(
                path, f"{name}: class folder {parts[-2]!r} is not one of the expected classes {list(label_names)}"
            )
        stem = PurePosixPath(parts[-1]).stem
        members.append(Member(classes[parts[-2]], int(stem) if stem.isdigit() else None, name, read()))

    bar = tqdm(desc=f"read {path.name}", unit="file", disable=not progress)
    if path.is_dir():
        for file in sorted((path / split).rglob("*")):
            if file.is_file():
                add(file.relative_to(path).as_posix(), file.read_bytes)
                bar.update()
    elif path.name.endswith(ARCHIVE_SUFFIXES):
        try:
            # "r|*": one sequential pass over the (compressed) stream, the fast way through a .tar.gz
            with tarfile.open(path, mode="r|*") as archive:
                for info in archive:
                    if info.isfile():
                        add(info.name, archive.extractfile(info).read)
                        bar.update()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise DataFormatError(
                path, f"corrupt or truncated archive ({type(error).__name__}: {error}); get a fresh copy"
            ) from error
    else:
        raise DataFormatError(path, f"neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    bar.close()
    if not members:
        raise DataNotFoundError(
            path, f"no images <...>/{split}/<class>/<n>.jpg in it (classes: {', '.join(label_names)})"
        )
    return members


def _arrange(
    path: Path,
    split: str,
    members: list[Member],
    label_names: Sequence[str],
    order_labels: np.ndarray | None,
) -> list[Member]:
    """The members in dataset order: by `order_labels` when given, else class-major."""
    by_class: list[list[Member]] = [[] for _ in label_names]
    for member in members:
        by_class[member.label].append(member)
    if order_labels is None:
        for files in by_class:
            numbered = all(member.number is not None for member in files)
            files.sort(key=(lambda m: (m.number, m.name)) if numbered else (lambda m: m.name))
        return [member for files in by_class for member in files]

    arranged: list[Member | None] = [None] * len(order_labels)
    for label, files in enumerate(by_class):
        positions = np.flatnonzero(order_labels == label)  # where label c occurs, in order
        folder = f"{split}/{label_names[label]}/"
        by_number = {member.number: member for member in files if member.number is not None}
        unnumbered = [member.name for member in files if member.number is None]
        if unnumbered:
            raise DataFormatError(path, f"{unnumbered[0]}: file names must be numbers to restore the original order")
        if len(by_number) != len(files):
            raise DataFormatError(path, f"{folder}: two files have the same number")
        for rank, position in enumerate(positions):
            if rank not in by_number:
                raise DataFormatError(
                    path, f"{folder}{rank:04d}.jpg is missing: the labels say class {label_names[label]!r} has "
                          f"{len(positions)} images in {split}, numbered 0..{len(positions) - 1}"
                )
            arranged[position] = by_number.pop(rank)
        if by_number:
            extra = by_number[min(by_number)]
            raise DataFormatError(
                path, f"{extra.name}: the labels say class {label_names[label]!r} has only {len(positions)} images "
                      f"in {split}; the labels file and the images do not belong together"
            )
    return arranged


def _decode(out: np.ndarray, path: Path, member: Member) -> None:
    """Decode one image into out (H, W, 3) uint8; a corrupt, truncated or wrongly sized one names the member."""
    height, width, _ = out.shape
    try:
        with Image.open(io.BytesIO(member.data)) as image:
            image.load()  # decode now: a truncated file raises here, not later
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if rgb.size != (width, height):
                raise DataFormatError(path, f"{member.name} is {rgb.size[0]}x{rgb.size[1]}, expected {width}x{height}")
            out[...] = np.asarray(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataFormatError(
            path, f"{member.name}: corrupt or truncated image ({type(error).__name__}: {error}); get a fresh copy"
        ) from error


# ---------------------------------------------------------------- cache --------------------------------------------


def _cache_key(
    path: Path,
    split: str,
    label_names: Sequence[str],
    order_labels: np.ndarray | None,
    image_size: tuple[int, int],
) -> str:
    digest = hashlib.sha256()
    # the decoder's version too: libjpeg builds may round differently, and cached pixels must match a fresh decode
    digest.update(repr((CACHE_FORMAT, split, tuple(label_names), tuple(image_size), PIL.__version__)).encode())
    if path.is_dir():  # hashing 60,000 files would cost as much as decoding them; names, sizes and times suffice
        for file in sorted(file for file in (path / split).rglob("*") if file.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    digest.update(b"class-major" if order_labels is None else np.ascontiguousarray(order_labels, np.int64).tobytes())
    return digest.hexdigest()[:16]


def _read_cache(file: Path, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images, labels), or None when there is no cache; an unreadable one is warned about and rebuilt."""
    if not file.is_file():
        return None
    try:
        with np.load(file) as arrays:
            images, labels = arrays["images"], arrays["labels"]
        if not (
            images.dtype == np.uint8
            and images.shape[1:] == (height, width, 3)
            and labels.dtype == np.uint8
            and labels.shape == images.shape[:1]
            and (labels.size == 0 or labels.max() < num_classes)
        ):
            found = f"images {images.dtype} {images.shape}, labels {labels.dtype} {labels.shape}"
            raise DataFormatError(file, f"holds {found}")
    except Exception as error:  # a damaged .npz fails in zipfile, a decompressor or NumPy's parser: decode again
        warnings.warn(f"ignoring the unreadable cache {file} and decoding again: {error}", stacklevel=3)
        return None
    return images, labels


def _write_cache(file: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Atomic (see atomic_path), so a reader never sees half a cache; a read-only cache costs a decode."""
    try:
        with atomic_path(file) as temporary, open(temporary, "wb") as out:
            np.savez(out, images=images, labels=labels)  # uncompressed: loading it is a memory copy
    except OSError as error:
        warnings.warn(f"could not cache the decoded images in {file}: {error}", stacklevel=3)
