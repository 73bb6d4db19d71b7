"""Exceptions of the dataset loaders: each one names the file and says what to do about it."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Base class: something is wrong with a dataset file or folder; `path` says which."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataNotFoundError(DataError):
    """No usable copy of the dataset, and none could be (or was allowed to be) downloaded; says what to put where."""


class DataFormatError(DataError):
    """A file cannot be read as what it claims to be (truncated or corrupt archive, image, pickle or cache)."""


class ChecksumMismatchError(DataError):
    """A file's md5 differs from the published one."""

    def __init__(self, path: str | Path, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(
            path,
            f"md5 is {actual}, expected {expected}; the file is corrupt, truncated or not the original: "
            "delete it and download it again",
        )


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list; nothing from it was run."""


class DownloadError(DataError):
    """A download failed or did not verify; nothing was left at the target."""
