"""Download weights atomically, verified by sha256, or by the hash prefix or size where only that is published."""

from __future__ import annotations

from pathlib import Path

from ..download import download
from .errors import DownloadError


def download_file(
    url: str,
    target: str | Path,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size_bytes: int | None = None,
    progress: bool = True,
) -> str:
    """Fetch `url` to `target` and return the file's sha256; `target` appears only once every check given (full
    sha256, published sha256 prefix, size) passes."""

    def verify(actual: str, nbytes: int) -> str | None:
        if sha256 is not None and actual != sha256.lower():
            return f"has sha256 {actual}, expected {sha256}"
        if sha256_prefix is not None and not actual.startswith(sha256_prefix.lower()):
            return f"has sha256 {actual}, expected it to start with {sha256_prefix}"
        if size_bytes is not None and nbytes != size_bytes:
            return f"is {nbytes} bytes, expected {size_bytes}"
        return None

    return download(url, target, "sha256", verify, DownloadError, progress)
