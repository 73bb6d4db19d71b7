"""Atomic file writes: write beside the target, then rename, so a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a new, empty temporary file beside `path` (same file system, so the rename is atomic) to write to.

    Its name is unique, so processes filling the same cache never write into each other's file. On success its
    bytes are flushed to disk, it is made readable by all (as a normally created file would be) and renamed onto
    `path`; on any failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; results, caches and downloads are no secret
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_writable(path: str | Path) -> None:
    """Raise now the OSError that atomic_path(`path`) would raise at the end of long work: `path`'s folder is
    created, and a temporary file is made and removed beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    os.unlink(name)
