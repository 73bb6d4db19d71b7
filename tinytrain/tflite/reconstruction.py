"""The int8 weights of the first layers fitted to the inputs the int8 model gives them, not to the float inputs.

An int8 model feeds each layer its input rounded to an int8 grid: the float input plus noise of up to half a level
per value. On smooth images (CIFAR-10 upscaled to 128x128) the first blocks' depthwise kernels have taps that nearly
cancel, so they turn that noise into a large part of their output. The float weights W are not the best weights
for those inputs: over the calibration images, the weights that map the int8 model's inputs q closest to the float
outputs W x + b in the least-squares sense are

    W' = W + W (C_xq - C_qq) (C_qq + damping)^-1,    b' = b + W mean(x) - W' mean(q)

(C_xq and C_qq the covariances of the columns each weight multiplies, damped towards W' = W where C_qq is nearly
singular). Layers are fitted in execution order, so each one's q is the int8 model's as fitted and rounded so far,
emulated in float (emulation.py); GPTQ then rounds W' against q's second moment and the bias correction takes q's
mean (quantization.py): the model the export writes is the one the fit saw.

A fit estimates each output channel's weights from the calibration samples (images x output positions). Only a
layer with at least SAMPLES_PER_COLUMN samples per weight column is fitted. For MobileNetV2 at 128x128 with 500
calibration images that is 23 of its 53 weighted layers: every layer of blocks 0 to 3, then the expansions down to
16x16 and the depthwise convolutions down to 8x8, where the rounding noise is amplified. The other pointwise layers,
with few positions and hundreds of input channels, keep their float weights: a fit there would follow the
calibration images' own noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.engine import Engine
from tinytrain.graph import Graph
from tinytrain.layers import Depthwise, WeightedLayer
from tinytrain.memory import MEASURING_ARENA_BYTES

from .emulation import rounded_layer, run_layer
from .quantization import Calibration, activation_quantizations, dequantize, quantize
from .rounding import input_columns

SAMPLES_PER_COLUMN = 1000  # calibration samples a fitted layer needs per weight column
DAMPING = 0.01  # of the mean variance of a layer's int8 inputs, added to C_qq before it is inverted


def fitted_layers(graph: Graph, count: int) -> list[WeightedLayer]:
    """The weighted layers of `graph` that `count` calibration images give enough samples per weight column."""
    return [layer for layer in graph.weighted_layers
            if count * int(np.prod(graph.shapes[layer.output][1:])) >= SAMPLES_PER_COLUMN * layer.weight[0].size]


def fit_to_int8_inputs(graph: Graph, calibration: Calibration, images: Callable[[], Iterable[np.ndarray]],
                       count: int, progress: bool = True) -> Calibration:
    """`calibration` with the fitted weight and bias of every layer fitted_layers names, and the second moment and
    mean of its int8 inputs in place of its float ones. `images()` yields the `count` calibration images (uint8
    (H, W, C) at the graph's resolution) anew at each call: one pass per fitted layer."""
    fitting = {layer.name for layer in fitted_layers(graph, count)}
    if not fitting:
        return calibration
    grids = activation_quantizations(graph, calibration)
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    last = max(index for index, layer in enumerate(graph.layers) if layer.name in fitting)
    last_reader = {name: index for index, layer in enumerate(graph.layers[:last + 1]) for name in layer.inputs}
    # per image, the int8 levels of the tensors the layers up to the last fitted one have still to read
    levels = [{graph.input_name: quantize(tensors[graph.input_name], grids[graph.input_name])}
              for tensors in (engine.infer(image, read=(graph.input_name,)) for image in images())]
    fitted, moments, means = dict(calibration.fitted), dict(calibration.moments), dict(calibration.means)
    with tqdm(total=len(fitting) * count, desc="calibration: fitting to int8 inputs", unit="img",
              disable=not progress) as bar:
        for index, layer in enumerate(graph.layers[:last + 1]):
            if layer.name in fitting:
                source = layer.inputs[0]
                inputs = (dequantize(image_levels[source], grids[source]) for image_levels in levels)
                floats = (engine.infer(image, read=(source,))[source] for image in images())
                fit = fit_layer(layer, zip(floats, inputs), bar.update)
                fitted[layer.name] = (fit.weight, fit.bias)
                moments[layer.name], means[source] = fit.moment, fit.input_mean
                calibration = replace(calibration, fitted=fitted, moments=moments, means=means)
            if isinstance(layer, WeightedLayer):
                layer = rounded_layer(layer, grids[layer.inputs[0]], calibration)
            for image_levels in levels:
                inputs = [dequantize(image_levels[name], grids[name]) for name in layer.inputs]
                image_levels[layer.output] = quantize(run_layer(graph, layer, inputs), grids[layer.output])
                for name in set(layer.inputs):
                    if last_reader[name] == index:
                        del image_levels[name]
    return calibration


@dataclass(frozen=True)
class Fit:
    weight: np.ndarray  # float32, in the layer's weight layout
    bias: np.ndarray  # (K,) float32
    moment: np.ndarray  # the int8 inputs' second moment, summed as rounding.SecondMoment sums it
    input_mean: np.ndarray  # the int8 inputs' mean over the images, (C, H, W)


def fit_layer(layer: WeightedLayer, inputs: Iterable[tuple[np.ndarray, np.ndarray]], done: Callable[[], object]) -> Fit:
    """The least-squares weight and bias of the module's formula, from the (float input, int8 model's input) pairs
    (C, H, W) of the calibration images; `done` is called after each."""
    qq = xq = x_sum = q_sum = q_tensor_sum = 0.0
    positions = images = 0
    for x, q in inputs:
        columns_x = input_columns(layer, x).astype(np.float64)  # depthwise (C, taps, P), else (n, P)
        columns_q = input_columns(layer, q).astype(np.float64)
        qq = qq + columns_q @ np.swapaxes(columns_q, -1, -2)
        xq = xq + columns_x @ np.swapaxes(columns_q, -1, -2)
        x_sum, q_sum = x_sum + columns_x.sum(axis=-1), q_sum + columns_q.sum(axis=-1)
        q_tensor_sum = q_tensor_sum + q.astype(np.float64)
        positions, images = positions + columns_x.shape[-1], images + 1
        done()
    mean_x, mean_q = x_sum / positions, q_sum / positions  # depthwise (C, taps), else (n,)
    cov_qq = qq / positions - mean_q[..., :, np.newaxis] * mean_q[..., np.newaxis, :]
    cov_xq = xq / positions - mean_x[..., :, np.newaxis] * mean_q[..., np.newaxis, :]
    size = cov_qq.shape[-1]
    variance = np.diagonal(cov_qq, axis1=-2, axis2=-1).mean(axis=-1)[..., np.newaxis, np.newaxis]
    damped = cov_qq + (DAMPING * variance + 1e-12) * np.eye(size)
    correction = (cov_xq - cov_qq) @ np.linalg.inv(damped)  # depthwise (C, taps, taps), else (n, n)
    weight = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.float64)  # (K, n); depthwise (C, taps)
    if isinstance(layer, Depthwise):
        fitted = weight + np.einsum("ct,ctu->cu", weight, correction)
        bias = layer.bias + (weight * mean_x).sum(axis=1) - (fitted * mean_q).sum(axis=1)
    else:
        fitted = weight + weight @ correction
        bias = layer.bias + weight @ mean_x - fitted @ mean_q
    return Fit(fitted.reshape(layer.weight.shape).astype(np.float32), bias.astype(np.float32), qq,
               q_tensor_sum / images)
