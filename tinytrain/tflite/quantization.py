"""Full-integer post-training quantization as the TFLite int8 spec defines it: activations int8 asymmetric per
tensor, weights int8 symmetric per output channel, biases int32 at scale input_scale * weight_scale.

Activation ranges are calibrated by running the float graph in the arena. A tensor is not quantized over its whole
range: a few outliers would make the step coarse for every other value. Its range is the one of least mean squared
quantization error over the values seen (clipping the outliers), searched on a histogram of a sample of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.engine import Engine
from tinytrain.graph import Graph
from tinytrain.layers import Depthwise, WeightedLayer
from tinytrain.memory import MEASURING_ARENA_BYTES

from .flatbuffer import Quantization
from .rounding import SecondMoment, input_columns, round_weights

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights use [-127, 127], so that -w is representable (TFLite int8 spec)
INT32_MAX = 2**31 - 1
RELU6_MAX = 6.0


SAMPLES_PER_IMAGE = 4096  # values of each tensor kept per calibration image, evenly spaced over the tensor
HISTOGRAM_BINS = 2048
CLIP_CANDIDATES = 128  # shrink factors of the seen range tried, from 1 down to 1 / CLIP_CANDIDATES


@dataclass(frozen=True)
class Range:
    """The interval of real values a tensor is quantized over."""

    low: float
    high: float


@dataclass(frozen=True)
class Calibration:
    ranges: dict[str, Range]  # tensor -> the interval it is quantized over
    # Means and moments are of the float model's tensors, but where a fitted layer reads them: there they are of the
    # int8 model's, which its rounding and bias correction must see (reconstruction.py).
    means: dict[str, np.ndarray]  # tensor -> its mean over the images, (C, H, W) or (C,), for bias correction
    moments: dict[str, np.ndarray]  # weighted layer -> its inputs' second moment (rounding.SecondMoment)
    # weighted layer -> the float (weight, bias) its int8 ones are rounded from, where not the layer's own
    fitted: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def calibrate(graph: Graph, images: Iterable[np.ndarray], count: int, progress: bool = True) -> Calibration:
    """The quantization range and the mean of the input and of every layer's output, and the second moment of every
    weighted layer's input, over `images` (uint8 (H, W, C) at the graph's resolution, `count` of them)."""
    samples: dict[str, list[np.ndarray]] = {}
    sums: dict[str, np.ndarray] = {}
    moments = {layer.name: SecondMoment(layer) for layer in graph.weighted_layers}
    for tensors in _every_tensor(graph, images, count, "calibration: ranges", progress):
        for layer in graph.weighted_layers:
            moments[layer.name].add(tensors[layer.inputs[0]])
        for name, tensor in tensors.items():
            values = tensor.reshape(-1)
            stride = max(1, values.size // SAMPLES_PER_IMAGE)
            # a copy: a strided view would keep the image's whole tensor alive until the ranges are searched
            samples.setdefault(name, []).extend([values[::stride].copy(), np.array([values.min(), values.max()])])
            sums[name] = sums.get(name, 0.0) + tensor.astype(np.float64)
    return Calibration({name: least_squares_range(np.concatenate(values)) for name, values in samples.items()},
                       {name: total / count for name, total in sums.items()},
                       {name: moment.result() for name, moment in moments.items()})


def channel_ranges(graph: Graph, images: Iterable[np.ndarray], count: int,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """The largest |value| of each channel (C,) of the input and of every layer's output over `images`."""
    largest: dict[str, np.ndarray] = {}
    for tensors in _every_tensor(graph, images, count, "calibration: channels", progress):
        for name, tensor in tensors.items():
            channels = np.abs(tensor.reshape(tensor.shape[0], -1)).max(axis=1) if tensor.ndim == 3 else np.abs(tensor)
            largest[name] = np.maximum(largest.get(name, 0.0), channels)
    return largest


def _every_tensor(graph: Graph, images: Iterable[np.ndarray], count: int, description: str,
                  progress: bool) -> Iterator[dict[str, np.ndarray]]:
    """Host copies of the input and of every layer's output, image by image, from float inference in a measuring
    arena, layer by layer, so that every tensor can be read."""
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    names = (graph.input_name,) + tuple(layer.output for layer in graph.layers)
    for image in tqdm(images, total=count, desc=description, unit="img", disable=not progress):
        yield engine.infer(image, read=names)


def least_squares_range(values: np.ndarray) -> Range:
    """The range [low * f, high * f] (f in (0, 1], the seen range widened to hold 0) whose int8 quantization of
    `values` has the least mean squared error, rounding and clipping together."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if high - low <= 0:
        return Range(low, high)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2  # (bins,)
    factors = np.arange(CLIP_CANDIDATES, 0, -1) / CLIP_CANDIDATES  # (candidates,)
    lows, highs = low * factors[:, None], high * factors[:, None]  # (candidates, 1)
    steps = (highs - lows) / (INT8_MAX - INT8_MIN)
    levels = np.clip(np.round((centres - lows) / steps), 0, INT8_MAX - INT8_MIN)
    errors = ((lows + levels * steps - centres) ** 2 * counts).sum(axis=1)  # (candidates,)
    best = int(np.argmin(errors))
    return Range(low * factors[best], high * factors[best])


def activation_quantization(value_range: Range, relu6: bool = False) -> Quantization:
    """int8 per tensor over `value_range` widened to hold 0 (zero padding and ReLU must be exact); a fused ReLU6
    clamps it to [0, 6]."""
    low, high = min(value_range.low, 0.0), max(value_range.high, 0.0)
    if relu6:
        low, high = 0.0, min(high, RELU6_MAX)
    scale = max(high - low, 1e-8) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return Quantization(np.array([scale], np.float32), np.array([zero_point], np.int64))


def activation_quantizations(graph: Graph, calibration: Calibration) -> dict[str, Quantization]:
    """Every activation's int8 quantization as the export writes it: the input's and each layer output's, over its
    calibrated range, clamped to [0, 6] where a conv's fused ReLU6 writes it."""
    relu6 = {layer.output for layer in graph.layers if isinstance(layer, WeightedLayer) and layer.relu6}
    names = (graph.input_name,) + tuple(layer.output for layer in graph.layers)
    return {name: activation_quantization(calibration.ranges[name], name in relu6) for name in names}


def quantize(values: np.ndarray, quantization: Quantization) -> np.ndarray:
    """Per-tensor int8 of float `values`: round(x / scale) + zero_point, saturated."""
    scaled = np.round(values / quantization.scale[0]) + quantization.zero_point[0]
    return np.clip(scaled, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(values: np.ndarray, quantization: Quantization) -> np.ndarray:
    return ((values.astype(np.float32) - quantization.zero_point[0]) * quantization.scale[0]).astype(np.float32)


@dataclass(frozen=True)
class QuantizedLayer:
    weight: np.ndarray  # int8, the layer's weight layout, output channels first
    weight_scale: np.ndarray  # (K,) float32; zero points are 0 (symmetric)
    bias: np.ndarray  # (K,) int32
    bias_scale: np.ndarray  # (K,) float32, input_scale * weight_scale


def quantize_layer(layer: WeightedLayer, input_quantization: Quantization, calibration: Calibration) -> QuantizedLayer:
    """The int8 weight and int32 bias of `layer` (quantize_weight_and_bias) whose input is quantized as given,
    rounded from its fitted weight and bias where the calibration has them."""
    weight, bias = calibration.fitted.get(layer.name, (layer.weight, layer.bias))
    return quantize_weight_and_bias(weight, bias, float(input_quantization.scale[0]),
                                    tap_means(layer, calibration.means[layer.inputs[0]]),
                                    calibration.moments[layer.name], isinstance(layer, Depthwise))


def tap_means(layer: WeightedLayer, input_mean: np.ndarray) -> np.ndarray:
    """(C, taps): the mean input that each weight tap of `layer` multiplies, over its output positions, zero padding
    included, from the layer's mean input (C, H, W) (or (C,) for the classifier)."""
    return input_columns(layer, input_mean).mean(axis=-1).reshape(input_mean.shape[0], -1)


def quantize_weight_and_bias(weight: np.ndarray, bias: np.ndarray, input_scale: float, input_tap_means: np.ndarray,
                             input_moment: np.ndarray, depthwise: bool) -> QuantizedLayer:
    """int8 weight per output channel (axis 0 of `weight`: (K, C, ...) or depthwise (C, ...)) and int32 bias of a
    layer whose input has per-tensor scale `input_scale`, whose taps see the mean inputs `input_tap_means`
    (C, taps) (tap_means) and whose weight columns co-vary as `input_moment` says (rounding.SecondMoment).

    A channel's scale is max|w| / 127, raised where the bias would not fit int32 at input_scale * weight_scale (the
    bias shares the accumulator's scale). The weights are rounded as rounding.round_weights does. What is left of
    the rounding error still shifts each output's mean by sum(dW * mean input):
    on smooth images a depthwise kernel whose taps nearly cancel turns that shift into most of its output, so the
    bias takes it back (bias correction, Nagel et al. 2019, section 4.2), tap by tap, so that the zero padding
    around the small late feature maps counts."""
    channels = weight.shape[0]
    flat = weight.reshape(channels, -1).astype(np.float64)  # (K, C * taps)
    weight_scale = np.abs(flat).max(axis=1) / WEIGHT_MAX
    weight_scale = np.maximum(weight_scale, np.abs(bias.astype(np.float64)) / (input_scale * INT32_MAX))
    weight_scale = np.where(weight_scale > 0, weight_scale, 1.0).astype(np.float32)  # an all-zero channel: any scale
    scale = weight_scale.astype(np.float64)[:, np.newaxis]
    quantized = round_weights(flat, weight_scale, input_moment, WEIGHT_MAX)
    inputs = 1 if depthwise else weight.shape[1]
    rounding = (quantized * scale - flat).reshape(channels, inputs, -1)  # (K, C, taps)
    means = input_tap_means.astype(np.float64)  # (C, taps)
    shift = (rounding[:, 0] * means).sum(axis=1) if depthwise else np.einsum("kct,ct->k", rounding, means)  # (K,)
    bias_scale = (np.float64(input_scale) * weight_scale).astype(np.float32)
    corrected = (bias.astype(np.float64) - shift) / bias_scale.astype(np.float64)
    return QuantizedLayer(quantized.astype(np.int8).reshape(weight.shape), weight_scale,
                          np.clip(np.round(corrected), -INT32_MAX, INT32_MAX).astype(np.int32), bias_scale)
