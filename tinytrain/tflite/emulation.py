"""An int8 model emulated in float on the host: its weights and biases rounded as the export rounds them, its
activations rounded to their int8 grids (round(x / scale) + zero point, saturated, then back to float), so that
what quantization does can be measured, and corrected, layer by layer without a runtime."""

from __future__ import annotations

import copy

import numpy as np

from tinytrain.graph import Graph
from tinytrain.layers import Layer, Pointwise, SpatialConv, WeightedLayer

from .flatbuffer import Quantization
from .quantization import Calibration, dequantize, quantize, quantize_layer


def round_to_grid(x: np.ndarray, grid: Quantization) -> np.ndarray:
    """`x` on its int8 grid, as float."""
    return dequantize(quantize(x, grid), grid)


def run_layer(graph: Graph, layer: Layer, inputs: list[np.ndarray]) -> np.ndarray:
    """The output of `layer` on `inputs`, computed on the host, its ReLU6 applied."""
    out = np.empty(graph.shapes[layer.output], np.float32)
    if isinstance(layer, (SpatialConv, Pointwise)):
        layer.forward(out, inputs[0], clip=layer.relu6)
    else:
        layer.forward(out, *inputs)
        if layer.relu6:
            np.clip(out, 0.0, 6.0, out=out)
    return out


def rounded_layer(layer: WeightedLayer, input_grid: Quantization, calibration: Calibration) -> WeightedLayer:
    """A copy of `layer` whose weight and bias are the export's int8 and int32 ones, dequantized."""
    quantized = quantize_layer(layer, input_grid, calibration)
    rounded = copy.deepcopy(layer)
    scale = quantized.weight_scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
    rounded.weight = np.ascontiguousarray(quantized.weight.astype(np.float32) * scale)
    rounded.bias = (quantized.bias.astype(np.float64) * quantized.bias_scale).astype(np.float32)
    return rounded
