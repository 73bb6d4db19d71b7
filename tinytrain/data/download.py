"""md5 of dataset files, and atomic downloads verified by md5 (the hash CIFAR-10 is published with)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..download import CHUNK_BYTES, download
from .errors import ChecksumMismatchError, DownloadError


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | Path) -> str:
    """Streamed, so a 163 MB archive never sits in memory whole just to be hashed."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str, actual: str | None = None) -> None:
    """Raise ChecksumMismatchError naming `path` unless its md5 (or the given `actual`) is `expected`."""
    actual = md5_file(path) if actual is None else actual
    if actual != expected.lower():
        raise ChecksumMismatchError(path, expected, actual)


def download_file(url: str, target: str | Path, md5: str, progress: bool = True) -> Path:
    """Fetch `url` to `target`, atomically, accepted only with the expected md5 (DownloadError otherwise)."""

    def verify(actual: str, nbytes: int) -> str | None:
        return None if actual == md5.lower() else f"has md5 {actual}, expected {md5}"

    download(url, target, "md5", verify, DownloadError, progress)
    return Path(target)
