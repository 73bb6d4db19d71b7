"""Full-integer post-training quantization as the TFLite int8 spec defines it: activations int8 asymmetric per
tensor, weights int8 symmetric per output channel, biases int32 at scale input_scale * weight_scale.

Activation ranges are calibrated by running the float graph in the arena. A tensor is not quantized over its whole
range: a few outliers would make the step coarse for every other value. Its range is the one of least mean squared
quantization error over the values seen (clipping the outliers), searched on a histogram of a sample of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.engine import Engine
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES

from .flatbuffer import Quantization

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


def calibrate(graph: Graph, images: Iterable[np.ndarray], count: int, progress: bool = True) -> dict[str, Range]:
    """The quantization range of the input and of every layer's output over `images` (uint8 (H, W, C) at the
    graph's resolution), from float inference in a measuring arena, layer by layer, so every tensor can be read."""
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    names = (graph.input_name,) + tuple(layer.output for layer in graph.layers)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for image in tqdm(images, total=count, desc="calibration", unit="img", disable=not progress):
        for name, tensor in engine.infer(image, read=names).items():
            values = tensor.reshape(-1)
            stride = max(1, values.size // SAMPLES_PER_IMAGE)
            samples[name] += [values[::stride], np.array([values.min(), values.max()], np.float32)]
    return {name: least_squares_range(np.concatenate(samples[name])) for name in names}


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


def quantize(values: np.ndarray, quantization: Quantization) -> np.ndarray:
    """Per-tensor int8 of float `values`: round(x / scale) + zero_point, saturated."""
    scaled = np.round(values / quantization.scale[0]) + quantization.zero_point[0]
    return np.clip(scaled, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(values: np.ndarray, quantization: Quantization) -> np.ndarray:
    return ((values.astype(np.float32) - quantization.zero_point[0]) * quantization.scale[0]).astype(np.float32)


def quantize_weight_and_bias(weight: np.ndarray, bias: np.ndarray, input_scale: float, axis: int
                             ) -> tuple[np.ndarray, Quantization, np.ndarray, Quantization]:
    """(int8 weight, its per-channel quantization, int32 bias, its quantization) of a layer whose output channels
    lie along `axis` of `weight`. A channel's scale is max|w| / 127, raised where the bias would not fit int32 at
    input_scale * weight_scale (the bias must share the accumulator's scale)."""
    channels = weight.shape[axis]
    moved = np.moveaxis(weight.astype(np.float64), axis, 0).reshape(channels, -1)  # (K, rest)
    weight_scale = np.abs(moved).max(axis=1) / WEIGHT_MAX
    weight_scale = np.maximum(weight_scale, np.abs(bias.astype(np.float64)) / (input_scale * INT32_MAX))
    weight_scale = np.where(weight_scale > 0, weight_scale, 1.0).astype(np.float32)  # an all-zero channel: any scale
    shape = [1] * weight.ndim
    shape[axis] = channels
    quantized_weight = np.clip(np.round(weight / weight_scale.reshape(shape)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    bias_scale = (np.float64(input_scale) * weight_scale).astype(np.float32)
    quantized_bias = np.clip(np.round(bias / bias_scale.astype(np.float64)), -INT32_MAX, INT32_MAX).astype(np.int32)
    zeros = np.zeros(channels, np.int64)
    return (quantized_weight, Quantization(weight_scale, zeros, axis),
            quantized_bias, Quantization(bias_scale, zeros, 0))
