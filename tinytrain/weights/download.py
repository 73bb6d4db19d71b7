"""Download one file atomically, with a tqdm progress bar, verified by sha256 (or the hash prefix / size published)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .checksum import CHUNK_BYTES
from .errors import DownloadError

TIMEOUT_SECONDS = 60


def download_file(
    url: str,
    target: str | Path,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size_bytes: int | None = None,
    progress: bool = True,
) -> str:
    """Fetch `url` to `target` and return the file's sha256; `target` only ever appears complete and verified.

    The bytes go to a temp file beside `target`, are hashed on the way, and are renamed onto `target` only when
    every check given (full sha256, published sha256 prefix, size) passes. Any failure removes the temp file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        nbytes = 0
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    nbytes += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DownloadError(target, f"download of {url} has sha256 {actual}, expected {sha256}")
        if sha256_prefix is not None and not actual.startswith(sha256_prefix.lower()):
            raise DownloadError(
                target, f"download of {url} has sha256 {actual}, expected it to start with {sha256_prefix}"
            )
        if size_bytes is not None and nbytes != size_bytes:
            raise DownloadError(target, f"download of {url} is {nbytes} bytes, expected {size_bytes}")
        os.replace(temp_name, target)
        return actual
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors too
        raise DownloadError(target, f"download of {url} failed ({error})") from error
    finally:
        Path(temp_name).unlink(missing_ok=True)
