"""Exceptions of the weight importers: each one names the file and, where there is one, the tensor."""

from __future__ import annotations

from pathlib import Path

# What h5py raises on a damaged file: OSError mostly, RuntimeError from some metadata lookups, KeyError for an object
# that is not there, ValueError or TypeError for a malformed name, type or attribute (UnicodeDecodeError among them);
# and hdf5_heap.check_global_heaps raises ValueError.
HDF5_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


class WeightsError(Exception):
    """Base class: something is wrong with a weights file or folder; `path` says which."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class WeightsFormatError(WeightsError):
    """The file cannot be read as the format it claims to be (truncated, corrupt, wrong layout)."""


class WeightsTensorError(WeightsError):
    """One tensor is missing, has the wrong shape or dtype, or holds non-finite values."""

    def __init__(self, path: str | Path, tensor: str, problem: str):
        self.tensor = tensor
        super().__init__(path, f"tensor {tensor!r}: {problem}")


class ChecksumMismatchError(WeightsError):
    """A file's sha256 differs from the one it was published or listed with."""


class UnsafeCheckpointError(WeightsError):
    """A pickle asked for a global outside the tensor-rebuild allow-list; nothing from it was run."""


class DownloadError(WeightsError):
    """A download failed or produced a file that does not verify; nothing was left at the target."""


class WeightsNotFoundError(WeightsError):
    """No weights found, and none could be (or were allowed to be) downloaded; the message says what to put where."""
