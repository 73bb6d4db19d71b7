"""Read a torch.save checkpoint (zip or legacy format) into NumPy with a restricted unpickler; never imports torch.

Unpickling runs whatever globals a pickle names, so find_class here maps only the tensor-rebuild globals to NumPy
builders and refuses every other one before anything from the file is called.

Zip format (torch >= 1.6): <prefix>/data.pkl is the pickle; each storage is the raw file <prefix>/data/<key>;
    <prefix>/byteorder says "little" or "big" (absent means little). Persistent ids are
    ("storage", storage type, key, location, numel).
Legacy format (torch < 1.6, e.g. torchvision's mobilenet_v2-b0353104.pth): five things back to back in one file:
    pickle(magic number), pickle(protocol 1001), pickle(sys info), the main pickle, pickle(list of storage keys),
    then for each key in that order: int64 element count, raw bytes. Persistent ids are
    ("storage", storage type, root key, location, numel, view metadata (view key, offset, numel) or None).
Tensors are rebuilt by torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tinytrain.pickle_memo import check_memo_indices

from .errors import UnsafeCheckpointError, WeightsError, WeightsFormatError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class StorageType:
    """Stands in for torch.<Name>Storage: only its element type matters here."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class StorageRef:
    """A storage named by a persistent id; its bytes are read after unpickling (legacy files store them after it)."""

    key: str  # root storage key
    dtype: np.dtype
    offset: int  # elements into the root storage (non-zero only for legacy storage views)
    numel: int  # elements this storage (or view) spans


@dataclass(frozen=True)
class TensorRef:
    """What _rebuild_tensor_v2 returns here: where a tensor's elements are, resolved to an array at the end."""

    storage: StorageRef
    offset: int  # elements into the storage
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, StorageRef):
        raise TypeError(f"_rebuild_tensor_v2 got {type(storage).__name__} where a storage belongs")
    if not (
        _is_index(storage_offset) and _is_index_tuple(size) and _is_index_tuple(stride) and len(size) == len(stride)
    ):
        raise TypeError(f"_rebuild_tensor_v2 got offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    return TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, TensorRef):
        raise TypeError(f"_rebuild_parameter got {type(data).__name__} where a tensor belongs")
    return data


def _is_index(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_index_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(_is_index(v) for v in value)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # state dicts and empty hook dicts
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): StorageType(name, np.dtype(dtype)) for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose globals are ALLOWED_GLOBALS only and whose persistent ids become StorageRefs."""

    def __init__(self, file: BinaryIO, path: Path, legacy: bool):
        super().__init__(file)
        self.file = file
        self.path = path
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}  # root key -> whole root storage, for reading the bytes

    def load(self) -> Any:
        check_memo_indices(self.file)  # first: a damaged memo index would cost the unpickler gigabytes
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            raise WeightsFormatError(self.path, f"storage type torch.{name} has no NumPy equivalent")
        raise UnsafeCheckpointError(
            self.path,
            f"the pickle asks for the global {module}.{name}, which is not a tensor-rebuild function; "
            "refusing to load it (nothing from the file was run)",
        )

    def persistent_load(self, saved_id: Any) -> StorageRef:
        fields = 6 if self.legacy else 5
        if not (isinstance(saved_id, tuple) and len(saved_id) == fields and saved_id[0] == "storage"):
            raise WeightsFormatError(self.path, f"unexpected persistent id {saved_id!r}")
        storage_type, key, _location, numel = saved_id[1:5]  # location is where torch kept it; NumPy has one place
        if not (isinstance(storage_type, StorageType) and isinstance(key, str) and _is_index(numel)):
            raise WeightsFormatError(self.path, f"malformed storage id {saved_id!r}")
        root = StorageRef(key, storage_type.dtype, 0, numel)
        if self.storages.setdefault(key, root) != root:
            raise WeightsFormatError(self.path, f"storage {key!r} is described twice, differently")
        view = saved_id[5] if self.legacy else None
        if view is None:
            return root
        view_key, offset, view_numel = view
        if not (_is_index(offset) and _is_index(view_numel) and offset + view_numel <= numel):
            raise WeightsFormatError(self.path, f"storage view {view_key!r} lies outside storage {key!r}")
        return StorageRef(key, storage_type.dtype, offset, view_numel)


def read_torch_checkpoint(path: str | Path) -> Any:
    """Unpickle the checkpoint at `path`, every tensor turned into a NumPy array (native byte order, a copy)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        if head.startswith(b"PK\x03\x04"):
            return _read_zip(path)
        if head[257:262] == b"ustar":
            raise WeightsFormatError(
                path, "the pre-1.0 tar checkpoint format is not supported; re-save it with torch.save"
            )
        return _read_legacy(path)
    except WeightsError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        struct.error,
        OSError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
        OverflowError,
        MemoryError,
    ) as error:
        # Truncated or corrupt files surface as any of these, from deep inside pickle or zipfile; the last two from a
        # damaged length that asks for more bytes than there are.
        raise WeightsFormatError(
            path, f"not a readable torch checkpoint, truncated or corrupt ({error!r}); delete it and download it again"
        ) from error


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise WeightsFormatError(path, f"a zip checkpoint holds exactly one data.pkl; found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in archive.namelist() else b"little"
        if byteorder not in (b"little", b"big"):
            raise WeightsFormatError(path, f"byteorder record is {byteorder!r}")
        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, legacy=False)
        obj = unpickler.load()
        storages = {}
        for key, ref in unpickler.storages.items():
            record = f"{prefix}data/{key}"
            if record not in archive.namelist():
                raise WeightsFormatError(path, f"storage record {record} is missing")
            storages[key] = _storage_array(path, key, archive.read(record), ref, byteorder.decode())
    return _materialize(obj, storages, path)


def _read_legacy(path: Path) -> Any:
    # From memory, not the file: a damaged length then asks for at most the bytes there are, and fails at once,
    # instead of the unpickler asking the file for gigabytes.
    with io.BytesIO(path.read_bytes()) as f:
        header = [RestrictedUnpickler(f, path, legacy=True).load() for _ in range(3)]
        magic, protocol, sys_info = header
        if magic != LEGACY_MAGIC_NUMBER:
            raise WeightsFormatError(path, "neither a zip checkpoint nor torch's legacy format (bad magic number)")
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise WeightsFormatError(path, f"legacy protocol version {protocol!r}, expected {LEGACY_PROTOCOL_VERSION}")
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        unpickler = RestrictedUnpickler(f, path, legacy=True)
        obj = unpickler.load()
        keys = RestrictedUnpickler(f, path, legacy=True).load()
        if not (isinstance(keys, list) and set(keys) == set(unpickler.storages)):
            raise WeightsFormatError(path, "the storage key list does not match the storages the pickle uses")
        storages = {}
        for key in keys:
            ref = unpickler.storages[key]
            (numel,) = struct.unpack("<q", _read_exactly(f, 8, path, key))
            if numel != ref.numel:
                raise WeightsFormatError(path, f"storage {key!r} holds {numel} elements, the pickle says {ref.numel}")
            raw = _read_exactly(f, numel * ref.dtype.itemsize, path, key)
            storages[key] = _storage_array(path, key, raw, ref, byteorder)
    return _materialize(obj, storages, path)


def _read_exactly(f: BinaryIO, nbytes: int, path: Path, key: str) -> bytes:
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise WeightsFormatError(
            path, f"truncated: storage {key!r} needs {nbytes} bytes, the file has {len(data)} left"
        )
    return data


def _storage_array(path: Path, key: str, raw: bytes, ref: StorageRef, byteorder: str) -> np.ndarray:
    dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) != ref.numel * dtype.itemsize:
        raise WeightsFormatError(path, f"storage {key!r} has {len(raw)} bytes, expected {ref.numel * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype)


def _materialize(obj: Any, storages: dict[str, np.ndarray], path: Path) -> Any:
    """Replace every TensorRef inside dicts, lists and tuples by an array copied out of its storage."""
    if isinstance(obj, TensorRef):
        return _tensor_array(obj, storages[obj.storage.key], path)
    if isinstance(obj, dict):
        return type(obj)((key, _materialize(value, storages, path)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(value, storages, path) for value in obj)
    return obj


def _tensor_array(ref: TensorRef, storage: np.ndarray, path: Path) -> np.ndarray:
    start = ref.storage.offset + ref.offset
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=storage.dtype.newbyteorder("="))
    # Overlapping strides (torch's expand) let a few stored values stand for any number of elements; a state dict has
    # none, and refusing them keeps a damaged size from making one tensor larger than the file.
    if math.prod(ref.shape) > ref.storage.numel:
        raise WeightsFormatError(
            path, f"a tensor of shape {ref.shape} has more elements than storage {ref.storage.key!r} "
            f"({ref.storage.numel}); overlapping (expanded) tensors are not supported"
        )
    last = start + sum((size - 1) * stride for size, stride in zip(ref.shape, ref.stride))
    # as_strided trusts its arguments, so a crafted file must not be able to point it outside the storage.
    if last >= ref.storage.offset + ref.storage.numel:
        raise WeightsFormatError(
            path, f"a tensor of shape {ref.shape} reaches past the end of storage {ref.storage.key!r}"
        )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[start:], ref.shape, [s * itemsize for s in ref.stride], writeable=False
    )
    return view.astype(storage.dtype.newbyteorder("="), copy=True)
