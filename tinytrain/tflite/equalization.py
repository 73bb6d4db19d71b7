"""Cross-layer equalization of MobileNetV2's linear bottlenecks, so that one int8 scale per tensor fits every channel.

The residual stream of a stage (projection outputs and the adds that join them) is linear: nothing clips it. So
its channel c can be carried divided by s_c, if every layer writing it divides its output row c (weight and bias) by
s_c and every layer reading it multiplies its input column c by s_c; the float function is unchanged. A few
channels of these streams span a range tens of times wider than the rest, and one per-tensor int8 scale sized for
them leaves the others a handful of levels. With s_c = sqrt(r_c / w_c), r_c the channel's calibrated range and w_c
the largest weight reading it, the two ranges meet at sqrt(r_c * w_c) (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.1): weights are quantized per output channel, so the
producers lose nothing and the readers' rows gain at most what the activations save.
"""

from __future__ import annotations

import copy

import numpy as np

from tinytrain.graph import Graph
from tinytrain.layers import Add, Linear, Pointwise, WeightedLayer


def linear_streams(graph: Graph) -> list[set[str]]:
    """Sets of tensors joined by residual adds whose every writer is a layer without activation (or one of the
    adds) and whose every reader is a 1x1 convolution, a classifier or one of the adds: the streams that can be
    equalized."""
    group = {name: {name} for name in graph.shapes}
    for layer in graph.layers:
        if isinstance(layer, Add):
            joined = set().union(*(group[name] for name in (*layer.inputs, layer.output)))
            for name in joined:
                group[name] = joined
    streams = []
    for tensors in {id(tensors): tensors for tensors in group.values()}.values():
        writers = [layer for layer in graph.layers if layer.output in tensors and not isinstance(layer, Add)]
        readers = [layer for layer in graph.layers if set(layer.inputs) & tensors and not isinstance(layer, Add)]
        linear = all(isinstance(layer, WeightedLayer) and not layer.relu6 for layer in writers)
        absorbable = all(isinstance(layer, (Pointwise, Linear)) for layer in readers)
        if writers and readers and linear and absorbable and graph.output_name not in tensors:
            streams.append(tensors)
    return streams


def equalize(graph: Graph, channel_ranges: dict[str, np.ndarray]) -> Graph:
    """A copy of `graph` computing the same function, with every linear stream's channels rescaled as the module
    says; `channel_ranges` holds each stream tensor's largest |value| per channel (C,), from calibration."""
    equalized = copy.deepcopy(graph)
    for tensors in linear_streams(equalized):
        writers = [layer for layer in equalized.layers if layer.output in tensors and not isinstance(layer, Add)]
        readers = [layer for layer in equalized.layers if set(layer.inputs) & tensors and not isinstance(layer, Add)]
        activation_range = np.max([channel_ranges[name] for name in tensors], axis=0).astype(np.float64)  # (C,)
        weight_range = np.max([np.abs(layer.weight).max(axis=0) for layer in readers], axis=0).astype(np.float64)
        scale = np.ones_like(activation_range)
        usable = (activation_range > 0) & (weight_range > 0)
        scale[usable] = np.sqrt(activation_range[usable] / weight_range[usable])
        for layer in writers:  # (K, C) rows of the output channels
            layer.weight /= scale.astype(np.float32).reshape((-1,) + (1,) * (layer.weight.ndim - 1))
            layer.bias /= scale.astype(np.float32)
        for layer in readers:  # (K, C) columns of the input channels
            layer.weight *= scale.astype(np.float32)
    return equalized
