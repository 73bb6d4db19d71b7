"""Import torchvision's mobilenet_v2 ImageNet state dict (.pth, zip or legacy format) without importing torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .canonical import check_tensors
from .checksum import sha256_file
from .errors import WeightsFormatError, WeightsTensorError
from .layout import expected_shapes
from .tfslim import NAME
from .torch_checkpoint import read_torch_checkpoint
from .types import TORCHVISION_PREPROCESSING, PretrainedWeights

# In a torchvision state dict but not in the canonical backbone: the ImageNet head is replaced for the new task, and
# BatchNorm's step counter only matters to momentum=None training.
IGNORED_PREFIXES = ("classifier.",)
IGNORED_SUFFIXES = (".num_batches_tracked",)


def import_torchvision_pth(path: str | Path) -> PretrainedWeights:
    """Read torchvision's mobilenet_v2 state dict at `path`; the tensors are already in canonical keys and layouts.

    The pickle is read by a restricted unpickler (torch_checkpoint.py): a file naming any global other than the
    tensor-rebuild ones raises UnsafeCheckpointError and nothing in it runs.
    """
    path = Path(path)
    state = read_torch_checkpoint(path)
    if not isinstance(state, Mapping):
        raise WeightsFormatError(path, f"holds a {type(state).__name__}, expected a state dict")
    expected = expected_shapes()
    tensors: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise WeightsFormatError(path, f"state dict key {key!r} is not a string")
        if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
            continue
        if key not in expected:
            raise WeightsTensorError(path, key, "not a torchvision mobilenet_v2 (width 1.0) backbone tensor")
        if not isinstance(value, np.ndarray):
            raise WeightsTensorError(path, key, f"is a {type(value).__name__}, not a tensor")
        tensors[key] = value
    check_tensors(tensors, path)
    return PretrainedWeights(NAME, "torchvision-pth", TORCHVISION_PREPROCESSING, tensors, sha256_file(path))
