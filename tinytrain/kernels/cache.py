"""Numba's on-disk kernel cache, kept in step with every source file of the kernels.

Numba keys a kernel's cache by its own file alone. The kernels inline functions from other files of this package
(rows3x3.py, conv2d.py, blas.py), so after one of those changes, an edit or an upgrade, the cached machine code
would still run the old version. The cache directory therefore carries a digest of all the package's sources, and
its compiled kernels are dropped whenever that digest changes. (With NUMBA_CACHE_DIR set, Numba caches elsewhere
and this does not apply.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tinytrain.atomic import atomic_path

DIGEST_FILE = "tinytrain-kernel-sources.sha256"


def sources_digest(package: Path) -> str:
    """sha256 over the names and bytes of the package's .py files, in name order."""
    digest = hashlib.sha256()
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def drop_stale_kernels(package: Path) -> None:
    """Remove Numba's cached kernels (*.nbi, *.nbc) from package/__pycache__ unless the digest stored beside them is
    the package's current one; then store it. A cache directory that cannot be written is left alone: Numba cannot
    cache there either."""
    cache = package / "__pycache__"
    current = sources_digest(package)
    stamp = cache / DIGEST_FILE
    try:
        if stamp.read_text() == current:
            return
    except OSError:
        pass
    try:
        for compiled in (*cache.glob("*.nbi"), *cache.glob("*.nbc")):
            compiled.unlink(missing_ok=True)
        with atomic_path(stamp) as temporary:
            temporary.write_text(current)
    except OSError:
        pass
