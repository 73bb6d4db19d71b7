"""The canonical weights HDF5 file: one float32 dataset per torchvision key, written atomically, validated on load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from tinytrain.atomic import atomic_path
from tinytrain.hdf5_attributes import read_attribute
from tinytrain.hdf5_heap import check_global_heaps

from .errors import HDF5_READ_ERRORS, WeightsFormatError, WeightsTensorError
from .layout import expected_shapes
from .types import SOURCES, Preprocessing, PretrainedWeights

T = TypeVar("T")

FORMAT = "tinytrain-weights"
FORMAT_VERSION = 1
# The root attributes save_canonical writes, and what each holds.
ATTRIBUTE_KINDS = {"format": str, "format_version": int, "name": str, "source": str, "source_sha256": str,
                   "bn_eps": float, "input_mean": float, "input_std": float, "padding": str}


def check_tensors(tensors: dict[str, np.ndarray], path: str | Path) -> None:
    """Raise WeightsTensorError (naming `path` and the tensor) unless `tensors` is exactly the canonical backbone.

    Every expected key must be there with its shape, as finite float32; no other key may be.
    """
    expected = expected_shapes()
    for key, shape in expected.items():
        if key not in tensors:
            raise WeightsTensorError(path, key, "missing")
        value = tensors[key]
        if value.shape != shape:
            raise WeightsTensorError(path, key, f"shape {value.shape}, expected {shape}")
        if value.dtype != np.float32:
            raise WeightsTensorError(path, key, f"dtype {value.dtype}, expected float32")
        if not np.isfinite(value).all():
            raise WeightsTensorError(path, key, "holds NaN or infinite values")
    for key in tensors:
        if key not in expected:
            raise WeightsTensorError(path, key, "not a MobileNetV2-1.0 backbone tensor")


def save_canonical(weights: PretrainedWeights, path: str | Path) -> None:
    """Write `weights` to `path` atomically (see atomic_path): a failure leaves `path` as it was."""
    path = Path(path)
    check_tensors(weights.tensors, path)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["name"] = weights.name
        f.attrs["source"] = weights.source
        f.attrs["source_sha256"] = weights.source_sha256
        f.attrs["bn_eps"] = weights.preprocessing.bn_eps
        f.attrs["input_mean"] = np.asarray(weights.preprocessing.mean, dtype=np.float64)
        f.attrs["input_std"] = np.asarray(weights.preprocessing.std, dtype=np.float64)
        f.attrs["padding"] = weights.preprocessing.padding
        for key in sorted(weights.tensors):
            f.create_dataset(key, data=weights.tensors[key])


def load_canonical(path: str | Path) -> PretrainedWeights:
    """Read a file written by save_canonical; any problem raises a WeightsError naming the file (and tensor)."""
    path = Path(path)
    weights = read_hdf5(path, lambda f: _read_weights(path, f),
                        "delete it, and load_pretrained imports the published weights again")
    check_tensors(weights.tensors, path)
    return weights


def read_hdf5(path: Path, read: Callable[[h5py.File], T], fix: str) -> T:
    """read(the open file), after the global-heap check; any HDF5 failure becomes a WeightsFormatError naming
    `path` and saying `fix`."""
    try:
        check_global_heaps(path)  # first: one kind of damage would hang h5py for good
        with h5py.File(path, "r") as f:
            return read(f)
    except HDF5_READ_ERRORS as error:
        raise WeightsFormatError(
            path, f"not a readable HDF5 file, truncated or corrupt ({type(error).__name__}: {error}); {fix}"
        ) from error


def _read_weights(path: Path, f: h5py.File) -> PretrainedWeights:
    """The weights in the open file, with its format, attributes and set of tensors checked (not their values)."""
    attrs = {name: read_attribute(f, name, kind) for name, kind in ATTRIBUTE_KINDS.items() if name in f.attrs}
    if attrs.get("format") != FORMAT:
        raise WeightsFormatError(path, f"format attribute is {attrs.get('format')!r}, expected {FORMAT!r}")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise WeightsFormatError(path, f"format_version {attrs.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        preprocessing = Preprocessing(
            mean=tuple(float(v) for v in attrs["input_mean"]),
            std=tuple(float(v) for v in attrs["input_std"]),
            bn_eps=float(attrs["bn_eps"]),
            padding=str(attrs["padding"]),
        )
        name, source, source_sha256 = str(attrs["name"]), str(attrs["source"]), str(attrs["source_sha256"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsFormatError(path, f"bad or missing root attribute ({error!r})") from error
    if source not in SOURCES:
        raise WeightsFormatError(path, f"source {source!r} is not one of {SOURCES}")
    tensors = {}
    for key in expected_shapes():
        if key not in f:
            raise WeightsTensorError(path, key, "missing")
        try:
            tensors[key] = f[key][()]
        except HDF5_READ_ERRORS as error:  # a truncated file fails here, on the first chunk it cannot read
            raise WeightsTensorError(path, key, f"unreadable ({error})") from error
    extra = sorted(set(_dataset_names(f)) - set(tensors))
    if extra:
        raise WeightsTensorError(path, extra[0], "not a MobileNetV2-1.0 backbone tensor")
    return PretrainedWeights(name, source, preprocessing, tensors, source_sha256)


def _dataset_names(group: h5py.Group) -> list[str]:
    names: list[str] = []

    def collect(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Dataset):
            names.append(name)

    group.visititems(collect)
    return names
