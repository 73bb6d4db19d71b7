"""Refuse an HDF5 file whose global heap would hang the HDF5 library, before h5py reads anything from it.

HDF5 (2.0.0, which h5py 3.16 bundles, included) decodes a global heap collection by stepping from object to object
by each object's stored size. One damaged byte can make a step zero, and the library then loops forever inside a
single h5py call, where no Python signal handler can interrupt it. Variable-length strings live in these collections,
so every file with str attributes (the canonical weights, training checkpoints) has one.
Layout (HDF5 file format specification, "Global Heap"): "GCOL", version 1, 3 reserved bytes, collection size (a
length); then objects: index (2 bytes), reference count (2), reserved (4), size (a length), data padded to 8 bytes.
Index 0 is the free space, always last, whose size includes its own header and is not padded. The superblock says
how many bytes a length takes.
"""

from __future__ import annotations

import struct
from pathlib import Path

SUPERBLOCK_SIGNATURE = b"\x89HDF\r\n\x1a\n"
COLLECTION_SIGNATURE = b"GCOL"
ALIGNMENT = 8
LENGTH_FORMATS = {2: "<H", 4: "<I", 8: "<Q"}  # bytes per length -> struct format
SIZE_T_RANGE = 1 << 64


def check_global_heaps(path: str | Path) -> None:
    """Raise ValueError, naming the byte, if a global heap collection in the file would loop HDF5 forever."""
    data = Path(path).read_bytes()
    length_bytes = _length_bytes(data)
    if length_bytes not in LENGTH_FORMATS:
        return  # no superblock, or a damaged one: h5py refuses the file by itself
    start = data.find(COLLECTION_SIGNATURE)
    while start != -1:
        _check_collection(data, start, length_bytes)
        start = data.find(COLLECTION_SIGNATURE, start + 1)


def _length_bytes(data: bytes) -> int | None:
    """Bytes per length field, from the superblock, found where HDF5 looks: at byte 0, 512, 1024, 2048, ..."""
    offset = 0
    while offset + 16 <= len(data):
        if data.startswith(SUPERBLOCK_SIGNATURE, offset):
            version = data[offset + 8]
            return data[offset + (14 if version < 2 else 10)]
        offset = 512 if offset == 0 else 2 * offset
    return None


def _check_collection(data: bytes, start: int, length_bytes: int) -> None:
    length_format = LENGTH_FORMATS[length_bytes]
    header_bytes = 8 + length_bytes  # of the collection, and of each object
    if start + header_bytes > len(data) or data[start + 4] != 1:
        return  # not a collection HDF5 would decode: the signature is part of some data
    (size,) = struct.unpack_from(length_format, data, start + 8)
    end = start + size
    if end > len(data):
        return  # HDF5 cannot read the collection whole, and says so
    position = start + header_bytes
    while position + header_bytes <= end:  # a shorter tail is free space
        index = int.from_bytes(data[position : position + 2], "little")
        (object_size,) = struct.unpack_from(length_format, data, position + 8)
        # in size_t arithmetic, as HDF5 adds it to its position: a huge size wraps to a small step, or to none
        step = (object_size if index == 0 else header_bytes + -(-object_size // ALIGNMENT) * ALIGNMENT) % SIZE_T_RANGE
        if step == 0:
            raise ValueError(
                f"damaged global heap at byte {start}: object {index} at byte {position} claims {object_size} bytes, "
                "on which the HDF5 library would loop forever"
            )
        if position + step > end:
            return  # HDF5 reports an object running off its collection by itself
        position += step
