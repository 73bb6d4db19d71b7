"""The pruned-model file: a smaller dense graph in HDF5 that load_pruned rebuilds at any resolution."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tinytrain.atomic import atomic_path
from tinytrain.checkpoint import write_parameters
from tinytrain.graph import Graph
from tinytrain.layers import (Add, Conv2d, Depthwise, GlobalAvgPool, Layer, Linear, Pointwise, Shape, SpatialConv,
                              conv_padding)
from tinytrain.preprocessing import Preprocessing

FORMAT = "tinytrain-pruned-model"
FORMAT_VERSION = 2  # 2 added the block of each layer
_LAYER_TYPES = {cls.__name__: cls for cls in (Conv2d, Depthwise, Pointwise, Linear, Add, GlobalAvgPool)}


class PrunedModelError(Exception):
    """A pruned-model file that is missing, unreadable or not one."""


def save_pruned(path: str | Path, graph: Graph, kept: dict[str, np.ndarray], description: dict) -> None:
    """Write `graph` so that load_pruned can rebuild it at any resolution; atomically (see atomic_path).

    Layout: the layer list as JSON (type, name, inputs, output, relu6, stride), folded parameters under
    parameters/<layer>/weight and bias (as in training checkpoints), the weights' preprocessing as in the canonical
    weights file, the original indices of the kept channels under kept_channels/<group>, and `description` (how the
    pruning was done) as JSON. Conv padding is not stored: it follows from the resolution (see conv_padding).
    """
    records = [_layer_record(graph, layer) for layer in graph.layers]
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.attrs["format"] = FORMAT
        file.attrs["format_version"] = FORMAT_VERSION
        file.attrs["layers"] = json.dumps(records)
        file.attrs["blocks"] = json.dumps(graph.blocks)
        file.attrs["input_name"] = graph.input_name
        file.attrs["input_channels"] = graph.input_shape[0]
        file.attrs["input_mean"] = np.asarray(graph.preprocessing.mean, dtype=np.float64)
        file.attrs["input_std"] = np.asarray(graph.preprocessing.std, dtype=np.float64)
        file.attrs["bn_eps"] = graph.preprocessing.bn_eps
        file.attrs["padding"] = graph.preprocessing.padding
        file.attrs["description"] = json.dumps(description)
        write_parameters(file, graph)
        for name, channels in kept.items():
            file.create_dataset(f"kept_channels/{name}", data=channels)


def load_pruned(path: str | Path, resolution: int) -> Graph:
    """The graph saved by save_pruned, for square inputs of side `resolution`."""
    path = Path(path)
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if not path.is_file():
        raise PrunedModelError(f"no pruned model at {path}; write one with scripts/prune_model.py")
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != FORMAT:
                raise PrunedModelError(f"{path} is not a tinytrain pruned model (format {file.attrs.get('format')!r})")
            if file.attrs.get("format_version") != FORMAT_VERSION:
                raise PrunedModelError(f"{path}: format_version {file.attrs.get('format_version')!r}, expected "
                                       f"{FORMAT_VERSION}; prune the model again with scripts/prune_model.py")
            records = json.loads(file.attrs["layers"])
            blocks = json.loads(file.attrs["blocks"])
            input_name = str(file.attrs["input_name"])
            input_shape = (int(file.attrs["input_channels"]), resolution, resolution)
            preprocessing = Preprocessing(mean=tuple(float(v) for v in file.attrs["input_mean"]),
                                          std=tuple(float(v) for v in file.attrs["input_std"]),
                                          bn_eps=float(file.attrs["bn_eps"]), padding=str(file.attrs["padding"]))
            parameters = {record["name"]: (file[f"parameters/{record['name']}/weight"][()],
                                           file[f"parameters/{record['name']}/bias"][()])
                          for record in records if _LAYER_TYPES[record["type"]].has_weight}
    except (OSError, KeyError, ValueError) as error:
        raise PrunedModelError(f"cannot read pruned model {path}: {error!r}") from error
    shapes: dict[str, Shape] = {input_name: input_shape}
    layers = []
    for record in records:
        layer = _layer_from_record(record, parameters.get(record["name"]), shapes, preprocessing)
        shapes[layer.output] = layer.output_shape([shapes[name] for name in layer.inputs])
        layers.append(layer)
    return Graph(layers, input_name, input_shape, preprocessing, blocks)


def _layer_record(graph: Graph, layer: Layer) -> dict:
    if type(layer).__name__ not in _LAYER_TYPES:
        raise TypeError(f"{layer.name}: cannot save {type(layer).__name__} layers")
    record = {"type": type(layer).__name__, "name": layer.name, "inputs": list(layer.inputs), "output": layer.output}
    if layer.has_weight:
        record["relu6"] = bool(layer.relu6)
    if isinstance(layer, SpatialConv):
        size = graph.shapes[layer.inputs[0]][1]
        if layer.padding != conv_padding(graph.preprocessing.padding, size, layer.weight.shape[-1], layer.stride):
            raise ValueError(f"{layer.name}: padding {layer.padding} does not follow the {graph.preprocessing.padding} "
                             "rule, so the graph could not be rebuilt at another resolution")
        record["stride"] = layer.stride
    return record


def _layer_from_record(record: dict, parameters: tuple[np.ndarray, np.ndarray] | None, shapes: dict[str, Shape],
                       preprocessing: Preprocessing) -> Layer:
    cls = _LAYER_TYPES[record["type"]]
    name, inputs, output = record["name"], tuple(record["inputs"]), record["output"]
    if not cls.has_weight:
        return cls(name, inputs, output)
    weight, bias = parameters
    if issubclass(cls, SpatialConv):
        stride = record["stride"]
        padding = conv_padding(preprocessing.padding, shapes[inputs[0]][1], weight.shape[-1], stride)
        return cls(name, inputs, output, weight, bias, stride=stride, padding=padding, relu6=record["relu6"])
    return cls(name, inputs, output, weight, bias, relu6=record["relu6"])
