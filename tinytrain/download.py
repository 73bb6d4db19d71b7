"""Atomic downloads: bytes stream into a temp file beside the target, hashed on the way, renamed once verified."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from tinytrain.atomic import atomic_path

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60

# verify(hex digest, byte count) -> what is wrong with the download, or None when it is right
Verifier = Callable[[str, int], "str | None"]


def download(url: str, target: str | Path, algorithm: str, verify: Verifier, error_type: type[Exception],
             progress: bool = True) -> str:
    """Fetch `url` to `target` and return its digest; `target` only ever appears complete and verified.

    The bytes go through atomic_path; any failure leaves no file and raises `error_type(target, problem)` naming
    the URL.
    """
    target = Path(target)
    try:
        with atomic_path(target) as temporary:
            digest = hashlib.new(algorithm, usedforsecurity=False)
            nbytes = 0
            with open(temporary, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}",
                          disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        nbytes += len(chunk)
                        bar.update(len(chunk))
            actual = digest.hexdigest()
            problem = verify(actual, nbytes)
            if problem is not None:
                raise error_type(target, f"download of {url} {problem}")
        return actual
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors too
        raise error_type(target, f"download of {url} failed ({error})") from error
