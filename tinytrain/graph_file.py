"""A graph in an HDF5 file, rebuilt at any resolution: layers, blocks and preprocessing as attributes, parameters as
datasets. Pruned-model files and training checkpoints both store their model this way."""

from __future__ import annotations

import json

import h5py
import numpy as np

from tinytrain.graph import Graph
from tinytrain.hdf5_attributes import read_attribute
from tinytrain.layers import (Add, Conv2d, Depthwise, GlobalAvgPool, Layer, Linear, Pointwise, Shape, SpatialConv,
                              conv_padding)
from tinytrain.preprocessing import Preprocessing

LAYER_TYPES = {cls.__name__: cls for cls in (Conv2d, Depthwise, Pointwise, Linear, Add, GlobalAvgPool)}
# The root attributes write_graph writes, with the kind each is stored as (see read_attribute)
GRAPH_ATTRIBUTES = {"layers": str, "blocks": str, "input_name": str, "input_channels": int, "bn_eps": float,
                    "padding": str}


def write_graph(file: h5py.File, graph: Graph) -> None:
    """The layer list as JSON (type, name, inputs, output, relu6, stride), the blocks, the input, the preprocessing of
    the weights, and every folded weight and bias under parameters/<layer>/weight and bias. Conv padding is not
    stored: it follows from the resolution (see conv_padding)."""
    file.attrs["layers"] = json.dumps([_layer_record(graph, layer) for layer in graph.layers])
    file.attrs["blocks"] = json.dumps(graph.blocks)
    file.attrs["input_name"] = graph.input_name
    file.attrs["input_channels"] = graph.input_shape[0]
    file.attrs["input_mean"] = np.asarray(graph.preprocessing.mean, dtype=np.float64)
    file.attrs["input_std"] = np.asarray(graph.preprocessing.std, dtype=np.float64)
    file.attrs["bn_eps"] = graph.preprocessing.bn_eps
    file.attrs["padding"] = graph.preprocessing.padding
    for layer in graph.weighted_layers:
        file.create_dataset(f"parameters/{layer.name}/weight", data=layer.weight)
        file.create_dataset(f"parameters/{layer.name}/bias", data=layer.bias)


def read_graph(file: h5py.File, resolution: int) -> Graph:
    """The graph write_graph stored, for square inputs of side `resolution`. A damaged or inconsistent file raises
    KeyError, TypeError or ValueError (the callers name the file)."""
    attrs = {name: read_attribute(file, name, kind) for name, kind in GRAPH_ATTRIBUTES.items()}
    records = json.loads(attrs["layers"])
    blocks = json.loads(attrs["blocks"])
    input_name = str(attrs["input_name"])
    input_shape = (int(attrs["input_channels"]), resolution, resolution)
    preprocessing = Preprocessing(mean=tuple(float(v) for v in file.attrs["input_mean"]),
                                  std=tuple(float(v) for v in file.attrs["input_std"]),
                                  bn_eps=float(attrs["bn_eps"]), padding=str(attrs["padding"]))
    shapes: dict[str, Shape] = {input_name: input_shape}
    layers = []
    for record in records:
        cls = LAYER_TYPES[record["type"]]
        parameters = None
        if cls.has_weight:
            parameters = tuple(file[f"parameters/{record['name']}/{name}"][()] for name in ("weight", "bias"))
        layer = _layer_from_record(record, parameters, shapes, preprocessing)
        _check_parameters(layer, [shapes[name] for name in layer.inputs])
        shapes[layer.output] = layer.output_shape([shapes[name] for name in layer.inputs])
        if min(shapes[layer.output]) < 1:
            raise ValueError(f"{layer.name}: output shape {shapes[layer.output]} at {resolution}x{resolution} input")
        layers.append(layer)
    return Graph(layers, input_name, input_shape, preprocessing, blocks)


def _check_parameters(layer: Layer, input_shapes: list[Shape]) -> None:
    """ValueError unless the layer's parameters fit its input: the kernels trust their shapes and do not check them."""
    if not layer.has_weight:
        return
    weight_dims = {Conv2d: 4, Depthwise: 3, Pointwise: 2, Linear: 2}[type(layer)]
    input_dims = 1 if isinstance(layer, Linear) else 3
    fits = layer.weight.ndim == weight_dims and len(input_shapes[0]) == input_dims
    if fits:
        channels = layer.out_channels if isinstance(layer, Depthwise) else layer.in_channels
        fits = layer.bias.shape == (layer.out_channels,) and input_shapes[0][0] == channels
    if not fits:
        raise ValueError(f"{layer.name}: weight {layer.weight.shape} and bias {layer.bias.shape} do not fit its input "
                         f"{input_shapes[0]}; the parameters belong to another model")


def _layer_record(graph: Graph, layer: Layer) -> dict:
    if type(layer).__name__ not in LAYER_TYPES:
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
    cls = LAYER_TYPES[record["type"]]
    name, inputs, output = record["name"], tuple(record["inputs"]), record["output"]
    if not cls.has_weight:
        return cls(name, inputs, output)
    weight, bias = parameters
    if issubclass(cls, SpatialConv):
        stride = record["stride"]
        if not (isinstance(stride, int) and stride >= 1):
            raise ValueError(f"{name}: stride {stride!r} is not a positive integer")
        padding = conv_padding(preprocessing.padding, shapes[inputs[0]][1], weight.shape[-1], stride)
        return cls(name, inputs, output, weight, bias, stride=stride, padding=padding, relu6=record["relu6"])
    return cls(name, inputs, output, weight, bias, relu6=record["relu6"])
