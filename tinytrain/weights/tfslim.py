"""Import the TF-slim MobileNetV2-1.0 checkpoint stored as one .npy per variable, after verifying its SHA256SUMS."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import numpy as np

from .canonical import check_tensors
from .checksum import sha256_file
from .errors import ChecksumMismatchError, WeightsFormatError, WeightsTensorError
from .layout import BN_STATS, UNITS, torch_weight_from_tf
from .types import TF_PREPROCESSING, PretrainedWeights

NAME = "mobilenet_v2_1.0_224"
SUMS_FILE = "SHA256SUMS"
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")  # sha256sum's output: "<hex>  <name>" or "<hex> *<name>"
# What np.load raises on a damaged .npy: a short read, a header it cannot parse (tokenize.TokenError comes from NumPy's
# second try, which re-tokenizes the header as a Python 2 one) or a shape too large to allocate.
NPY_READ_ERRORS = (ValueError, OSError, EOFError, tokenize.TokenError, MemoryError)
REFETCH = "copy the folder again from its source (weights/manifest.json)"


def import_tfslim_npy(folder: str | Path) -> PretrainedWeights:
    """Read `folder` (261 TF-slim .npy files + SHA256SUMS, PROVENANCE.md section 1) into the canonical form.

    Every line of SHA256SUMS is checked before any array is read, and every file read must be listed there.
    Kernels are transposed to torch layouts; BatchNorm gamma/beta/moving statistics become weight/bias/running_*.
    """
    folder = Path(folder)
    verified = verify_sha256sums(folder)
    tensors: dict[str, np.ndarray] = {}
    for unit in UNITS:
        key = f"{unit.torch_conv}.weight"
        kernel = _load_npy(folder, unit.tfslim_weight_file, key, unit.tf_weight_shape, verified)
        tensors[key] = torch_weight_from_tf(kernel, unit.depthwise)
        for torch_stat, tf_stat in BN_STATS.items():
            key = f"{unit.torch_bn}.{torch_stat}"
            file_name = f"{unit.tfslim_scope}_BatchNorm_{tf_stat}.npy"
            tensors[key] = _load_npy(folder, file_name, key, (unit.out_channels,), verified)
    check_tensors(tensors, folder)
    return PretrainedWeights(NAME, "tfslim-npy", TF_PREPROCESSING, tensors, sha256_file(folder / SUMS_FILE))


def verify_sha256sums(folder: Path) -> set[str]:
    """Check every file listed in folder/SHA256SUMS; return the names verified. Raises naming the first bad file."""
    sums_path = folder / SUMS_FILE
    if not sums_path.is_file():
        raise WeightsFormatError(folder, f"no {SUMS_FILE} in the folder, so its files cannot be verified")
    try:
        lines = sums_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise WeightsFormatError(sums_path, f"not UTF-8 text, so damaged ({error}); {REFETCH}") from error
    verified = set()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _SUMS_LINE.match(line)
        if match is None:
            raise WeightsFormatError(sums_path, f"line {line_number} is not '<sha256>  <file name>': {line!r}")
        expected, file_name = match.group(1).lower(), match.group(2)
        file_path = folder / file_name
        if not file_path.is_file():
            raise WeightsFormatError(file_path, f"listed in {SUMS_FILE} but missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise ChecksumMismatchError(file_path, f"sha256 {actual} differs from {expected} listed in {SUMS_FILE}")
        verified.add(file_name)
    return verified


def _load_npy(folder: Path, file_name: str, key: str, shape: tuple[int, ...], verified: set[str]) -> np.ndarray:
    path = folder / file_name
    if not path.is_file():
        raise WeightsTensorError(path, key, "missing: the file does not exist")
    if file_name not in verified:
        raise WeightsFormatError(path, f"not listed in {SUMS_FILE}, so it cannot be verified")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle: these files are plain arrays
    except NPY_READ_ERRORS as error:
        raise WeightsFormatError(
            path, f"not a readable .npy file, truncated or corrupt ({type(error).__name__}: {error}); {REFETCH}"
        ) from error
    if array.shape != shape:
        raise WeightsTensorError(path, key, f"shape {array.shape}, expected {shape} (TF layout)")
    if array.dtype != np.float32:
        raise WeightsTensorError(path, key, f"dtype {array.dtype}, expected float32")
    if not np.isfinite(array).all():  # check_tensors would too, but could name only the folder
        raise WeightsTensorError(path, key, f"holds NaN or infinite values; {REFETCH}")
    return array
