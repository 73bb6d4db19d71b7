"""Image files in a folder or a .tar/.tar.gz archive: listed, decoded once into uint8 arrays, and cached.

load_image_folder reads <split>/<class>/<n>.jpg with known class names (the JPEG copy of CIFAR-10); list_images and
load_image_files serve a user's own folder (folder_dataset.py), whose images of any size are fitted to one square
size. Decoding tens of thousands of small files takes seconds, so the decoded arrays go to
<cache_dir>/data/<name>-<split>-<key>.npz; the key hashes everything the arrays depend on (the archive bytes or the
folder listing, the files and their order, the class names, the size, the Pillow version), so a stale cache is never
read, only left behind.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from tinytrain.atomic import atomic_path

from .errors import DataFormatError, DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CACHE_FORMAT = 1  # bump when the cached arrays change meaning, so older cache files are no longer matched
HASH_CHUNK_BYTES = 1 << 20
MAX_CLASSES = 1 << 16  # labels are uint16 at most


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned type that holds every label: uint8 up to 256 classes, else uint16."""
    if num_classes > MAX_CLASSES:
        raise ValueError(f"at most {MAX_CLASSES:,} classes are supported, got {num_classes:,}")
    return np.dtype(np.uint8 if num_classes <= 1 << 8 else np.uint16)


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
    arrangement = b"class-major" if order_labels is None else np.ascontiguousarray(order_labels, np.int64).tobytes()
    cache_file = _cache_file(cache_dir, path, split, split, label_names, image_size, arrangement)
    cached = _read_cache(cache_file, image_size, len(label_names))
    if cached is not None:
        return cached
    members = _read_members(path, split, label_names, progress)
    return _decode_all(path, split, _arrange(path, split, members, label_names, order_labels), len(label_names),
                       image_size, False, cache_file, progress)


def list_images(path: str | Path, progress: bool = True) -> tuple[list[str], list[str]]:
    """(image files, folders) in the folder or archive at `path`, as sorted POSIX paths inside it. Images are
    .jpg/.jpeg/.png files; anything under a hidden folder (.git, __MACOSX) is left out. Archives need not list
    their folders: each image's folders are included. Raises DataNotFoundError or DataFormatError."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(path, "no such image folder or archive")
    images, folders = [], set()

    def add(name: str, read) -> None:
        parts = PurePosixPath(name).parts
        if not _hidden(parts):
            images.append(name)
            folders.update("/".join(parts[:end]) for end in range(1, len(parts)))

    _visit_images(path, "", add, progress, folders.add)
    return sorted(images), sorted(folder for folder in folders if not _hidden(PurePosixPath(folder).parts))


def load_image_files(
    path: str | Path,
    split: str,
    files: Sequence[tuple[str, int]],
    label_names: Sequence[str],
    image_size: tuple[int, int],
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 RGB and labels (N,) (see label_dtype) of `files`, (name inside `path`, label)
    pairs in dataset order, each image centre-cropped to a square and resized to `image_size` (see fit_image).
    `split` names the cache file. Raises DataNotFoundError, or DataFormatError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(path, "no such image folder or archive")
    listing = "".join(f"{name}\0{label}\n" for name, label in files).encode()
    cache_file = _cache_file(cache_dir, path, "", split, label_names, image_size, b"centre-crop\0" + listing)
    cached = _read_cache(cache_file, image_size, len(label_names))
    if cached is not None:
        return cached
    wanted = {name: position for position, (name, _) in enumerate(files)}
    found: list[Member | None] = [None] * len(files)

    def add(name: str, read) -> None:
        position = wanted.get(name)
        if position is not None:
            found[position] = Member(files[position][1], None, name, read())

    _visit_images(path, "", add, progress)
    missing = [name for (name, _), member in zip(files, found) if member is None]
    if missing:
        raise DataNotFoundError(path, f"{missing[0]} was listed but is gone; run again once the folder stops changing")
    return _decode_all(path, split, found, len(label_names), image_size, True, cache_file, progress)


def read_image(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB, fitted to `image_size` as load_image_files fits its images;
    DataNotFoundError or DataFormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(path, "no such image file")
    out = np.empty((*image_size, 3), dtype=np.uint8)  # (H, W, 3)
    _decode(out, path, Member(0, None, "", path.read_bytes()), fit=True)  # no member name: the path says it all
    return out


def _hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _decode_all(path: Path, split: str, members: list[Member], num_classes: int, image_size: tuple[int, int],
                fit: bool, cache_file: Path | None, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    height, width = image_size
    images = np.empty((len(members), height, width, 3), dtype=np.uint8)  # (N, H, W, 3)
    labels = np.empty(len(members), dtype=label_dtype(num_classes))  # (N,)
    bar = tqdm(members, desc=f"decode {path.name} {split}", unit="img", disable=not progress)
    for index, member in enumerate(bar):
        _decode(images[index], path, member, fit)
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
        if len(parts) < 3 or parts[-3] != split:
            return
        if parts[-2] not in classes:
            raise DataFormatError(
                path, f"{name}: class folder {parts[-2]!r} is not one of the expected classes {list(label_names)}"
            )
        stem = PurePosixPath(parts[-1]).stem
        members.append(Member(classes[parts[-2]], int(stem) if stem.isdigit() else None, name, read()))

    _visit_images(path, split, add, progress)
    if not members:
        raise DataNotFoundError(
            path, f"no images <...>/{split}/<class>/<n>.jpg in it (classes: {', '.join(label_names)})"
        )
    return members


def _visit_images(path: Path, scope: str, visit: Callable[[str, Callable[[], bytes]], None], progress: bool,
                  visit_folder: Callable[[str], None] | None = None) -> None:
    """visit(name, read) for every image file (by suffix; hidden files skipped) of the folder (below <scope>/ only)
    or archive at `path`: name is its POSIX path inside, read() returns its bytes. visit_folder(name) for folders."""
    bar = tqdm(desc=f"read {path.name}", unit="file", disable=not progress)

    def offer(name: str, read) -> None:
        file_name = PurePosixPath(name).name
        if not file_name.startswith(".") and PurePosixPath(file_name).suffix.lower() in IMAGE_SUFFIXES:
            visit(name, read)

    if path.is_dir():
        for file in sorted((path / scope).rglob("*")):
            if file.is_file():
                offer(file.relative_to(path).as_posix(), file.read_bytes)
                bar.update()
            elif visit_folder is not None and file.is_dir():
                visit_folder(file.relative_to(path).as_posix())
    elif path.name.endswith(ARCHIVE_SUFFIXES):
        try:
            # "r|*": one sequential pass over the (compressed) stream, the fast way through a .tar.gz
            with tarfile.open(path, mode="r|*") as archive:
                for info in archive:
                    if info.isfile():
                        offer(info.name, archive.extractfile(info).read)
                        bar.update()
                    elif visit_folder is not None and info.isdir():
                        visit_folder(info.name.rstrip("/"))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise DataFormatError(
                path, f"corrupt or truncated archive ({type(error).__name__}: {error}); get a fresh copy"
            ) from error
    else:
        raise DataFormatError(path, f"neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    bar.close()


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


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The largest centred square of `image`, resized bilinearly (as CIFAR-10 images are resized to the model's
    resolution) to `size` (H, W); a square image is only resized."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image if width == height else image.crop((left, top, left + side, top + side))
    return square if square.size == size[::-1] else square.resize(size[::-1], Image.BILINEAR)


def _decode(out: np.ndarray, path: Path, member: Member, fit: bool = False) -> None:
    """Decode one image into out (H, W, 3) uint8, fitted to that size (fit_image) or required to have it; a corrupt,
    truncated or (without `fit`) wrongly sized one raises DataFormatError naming `path` and the member."""
    height, width, _ = out.shape
    where = f"{member.name}: " if member.name else ""
    try:
        with Image.open(io.BytesIO(member.data)) as image:
            image.load()  # decode now: a truncated file raises here, not later
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if fit:
                rgb = fit_image(rgb, (height, width))
            if rgb.size != (width, height):
                raise DataFormatError(path, f"{member.name} is {rgb.size[0]}x{rgb.size[1]}, expected {width}x{height}")
            out[...] = np.asarray(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = ("not an image format Pillow knows" if isinstance(error, UnidentifiedImageError)
                  else f"{type(error).__name__}: {error}")
        raise DataFormatError(
            path, f"{where}corrupt or truncated image ({reason}); replace it with a good copy, or remove it"
        ) from error


# ---------------------------------------------------------------- cache --------------------------------------------


def _cache_file(cache_dir: str | Path | None, path: Path, scope: str, split: str, label_names: Sequence[str],
                image_size: tuple[int, int], arrangement: bytes) -> Path | None:
    """<cache_dir>/data/<name>-<split>-<key>.npz, or None without a cache dir. The key hashes the archive's bytes, or
    the names, sizes and times of the folder's files below <scope>/, and `arrangement`: which files, in which order."""
    if cache_dir is None:
        return None
    digest = hashlib.sha256()
    # the decoder's version too: libjpeg builds may round differently, and cached pixels must match a fresh decode
    digest.update(repr((CACHE_FORMAT, split, tuple(label_names), tuple(image_size), PIL.__version__)).encode())
    if path.is_dir():  # hashing 60,000 files would cost as much as decoding them; names, sizes and times suffice
        for file in sorted(file for file in (path / scope).rglob("*") if file.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    digest.update(arrangement)
    return Path(cache_dir) / "data" / f"{_stem(path)}-{split}-{digest.hexdigest()[:16]}.npz"


def _read_cache(file: Path | None, image_size: tuple[int, int],
                num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images, labels), or None when there is no cache; an unreadable one is warned about and rebuilt."""
    if file is None or not file.is_file():
        return None
    try:
        with np.load(file) as arrays:
            images, labels = arrays["images"], arrays["labels"]
        if not (
            images.dtype == np.uint8
            and images.shape[1:] == (*image_size, 3)
            and labels.dtype == label_dtype(num_classes)
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
