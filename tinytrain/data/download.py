"""md5 of dataset files, and atomic downloads verified by md5 (the hash CIFAR-10 is published with)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import ChecksumMismatchError, DownloadError

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


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
    """Fetch `url` to `target`; `target` only ever appears complete and with the expected md5.

    The bytes go to a temp file beside `target` (same file system, so os.replace is atomic), hashed on the way; a
    failure or a wrong md5 removes the temp file and raises DownloadError naming the URL and the target.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as error:
        raise DownloadError(target, f"cannot write the download of {url} here ({error})") from error
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}", disable=not progress)
            with bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != md5.lower():
            raise DownloadError(target, f"download of {url} has md5 {actual}, expected {md5}")
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; a public dataset is no secret
        os.replace(temp_name, target)
        return target
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors too
        raise DownloadError(target, f"download of {url} failed ({error})") from error
    finally:
        Path(temp_name).unlink(missing_ok=True)
