"""Import keras.applications' MobileNetV2-1.0 ImageNet weights (HDF5, read with h5py; no TensorFlow or Keras needed).

Layout of mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 (Keras 2 `save_weights`, HDF5 legacy format):
  root attrs: layer_names (bytes, every layer in order; split into layer_names0, layer_names1, ... when long),
              backend (b"tensorflow"), keras_version
  /<layer>/   one group per layer, attr weight_names (bytes, e.g. b"Conv1/kernel:0"); layers without weights
              have an empty list
  /<layer>/<weight name>   the datasets, so a weight name's "/" makes a sub-group: /Conv1/Conv1/kernel:0
Variables: Conv2D "kernel" (kh, kw, C, K); DepthwiseConv2D "depthwise_kernel" (kh, kw, C, 1);
BatchNormalization "gamma", "beta", "moving_mean", "moving_variance". The classifier ("Logits") is ignored.
Files saved as a whole model nest all of this under /model_weights.
Keras restores these weights by layer order, not name, so two namings are found in the wild; both are accepted
(layout.ConvUnit.keras_conv / keras_bn).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from tinytrain.hdf5_attributes import read_attribute

from .canonical import check_tensors, read_hdf5
from .checksum import sha256_file
from .errors import HDF5_READ_ERRORS, WeightsFormatError, WeightsTensorError
from .layout import BN_STATS, UNITS, torch_weight_from_tf
from .tfslim import NAME
from .types import TF_PREPROCESSING, PretrainedWeights


def import_keras_h5(path: str | Path) -> PretrainedWeights:
    """Read the Keras .h5 at `path` into the canonical form (same values and preprocessing as the TF-slim import)."""
    path = Path(path)
    tensors = read_hdf5(path, lambda f: _read_tensors(path, f), "delete it and download it again")
    check_tensors(tensors, path)
    return PretrainedWeights(NAME, "keras-h5", TF_PREPROCESSING, tensors, sha256_file(path))


def _read_tensors(path: Path, f: h5py.File) -> dict[str, np.ndarray]:
    """Every backbone tensor of the open file, by canonical key, kernels already in torch layouts."""
    root = f["model_weights"] if "model_weights" in f else f
    layer_names = set(_string_list_attribute(root, "layer_names"))
    if not layer_names:
        raise WeightsFormatError(path, "no layer_names attribute: not a Keras weights file")
    backend = _decode(read_attribute(root, "backend", str)) if "backend" in root.attrs else "tensorflow"
    if backend != "tensorflow":  # Theano-saved kernels are flipped; these weights never existed in that form
        raise WeightsFormatError(path, f"saved by the {backend!r} backend; only 'tensorflow' files are supported")
    tensors: dict[str, np.ndarray] = {}
    for unit in UNITS:
        key = f"{unit.torch_conv}.weight"
        variables = _read_layer(path, root, layer_names, unit.keras_conv, key)
        variable = "depthwise_kernel" if unit.depthwise else "kernel"
        kernel = _take(path, variables, variable, key, unit.tf_weight_shape)
        tensors[key] = torch_weight_from_tf(kernel, unit.depthwise)
        variables = _read_layer(path, root, layer_names, unit.keras_bn, f"{unit.torch_bn}.*")
        for torch_stat, keras_stat in BN_STATS.items():
            key = f"{unit.torch_bn}.{torch_stat}"
            tensors[key] = _take(path, variables, keras_stat, key, (unit.out_channels,))
    return tensors


def _read_layer(
    path: Path, root: h5py.Group, layer_names: set[str], candidates: tuple[str, ...], key: str
) -> dict[str, tuple[str, np.ndarray]]:
    """Variable name ("kernel", "gamma", ...) -> (full HDF5 name, value) of the first candidate layer present."""
    layer = next((name for name in candidates if name in layer_names and name in root), None)
    if layer is None:
        raise WeightsTensorError(path, key, f"missing: no Keras layer named {' or '.join(map(repr, candidates))}")
    group = root[layer]
    variables = {}
    for weight_name in _string_list_attribute(group, "weight_names"):
        full_name = f"{layer}/{weight_name}"
        variable = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]  # "Conv1/kernel:0" -> "kernel"
        try:
            variables[variable] = (full_name, np.asarray(group[weight_name][()]))
        except HDF5_READ_ERRORS as error:  # listed but absent, or in a damaged part of the file
            raise WeightsTensorError(path, full_name, f"unreadable ({error})") from error
    return variables


def _take(
    path: Path, variables: dict[str, tuple[str, np.ndarray]], variable: str, key: str, shape: tuple[int, ...]
) -> np.ndarray:
    if variable not in variables:
        names = ", ".join(name for name, _ in variables.values()) or "none"
        raise WeightsTensorError(path, key, f"missing: no {variable!r} weight in the layer (it has: {names})")
    full_name, value = variables[variable]
    if value.shape != shape:
        raise WeightsTensorError(path, full_name, f"shape {value.shape}, expected {shape} (for {key})")
    if value.dtype != np.float32:
        raise WeightsTensorError(path, full_name, f"dtype {value.dtype}, expected float32 (for {key})")
    return value


def _string_list_attribute(group: h5py.Group, name: str) -> list[str]:
    """A Keras list-of-strings attribute, including the chunked form Keras uses past HDF5's 64 KiB header limit."""
    if name in group.attrs:
        return [_decode(value) for value in np.atleast_1d(read_attribute(group, name, str))]
    values: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(_decode(value) for value in np.atleast_1d(read_attribute(group, f"{name}{chunk}", str)))
        chunk += 1
    return values


def _decode(value: bytes | str) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
