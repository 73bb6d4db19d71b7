"""Rounding int8 weights to what the layer computes, not weight by weight (GPTQ, Frantar et al. 2022, algorithm 1).

Rounding each weight to its nearest level makes errors whose sum over a kernel's taps does not cancel; on smooth
images, where neighbouring inputs are nearly equal, that sum is what reaches the output. Instead the weights of each
output channel are rounded one input column at a time, and the error of each is spread over the columns not yet
rounded, in proportion to how the calibration inputs co-vary (H = E[x x^T]), which minimizes E[(dW x)^2] greedily.
"""

from __future__ import annotations

import numpy as np

from tinytrain.layers import Depthwise, SpatialConv, WeightedLayer

DAMPING = 0.01  # of the mean diagonal of H, added to it, so that its inverse exists for dead or collinear inputs


def input_columns(layer: WeightedLayer, x: np.ndarray) -> np.ndarray:
    """What each weight column of `layer` multiplies, at every output position of input `x` (C, H, W) or (C,):
    depthwise (C, taps, positions); otherwise (C * taps, positions), in the order of the weight's flattened row."""
    if not isinstance(layer, SpatialConv):
        return x.reshape(x.shape[0], -1)
    top, left, bottom, right = layer.padding
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    kernel_h, kernel_w = layer.weight.shape[-2:]
    out_h = (padded.shape[1] - kernel_h) // layer.stride + 1
    out_w = (padded.shape[2] - kernel_w) // layer.stride + 1
    reach_h, reach_w = layer.stride * (out_h - 1) + 1, layer.stride * (out_w - 1) + 1
    taps = np.stack([padded[:, i:i + reach_h:layer.stride, j:j + reach_w:layer.stride].reshape(x.shape[0], -1)
                     for i in range(kernel_h) for j in range(kernel_w)], axis=1)  # (C, taps, positions)
    return taps if isinstance(layer, Depthwise) else taps.reshape(-1, taps.shape[2])


class SecondMoment:
    """Sum over the output positions of every image of column x column products of a layer's input, float64:
    depthwise (C, taps, taps), else (n, n). Columns are multiplied in blocks of about BLOCK_POSITIONS positions,
    not image by image: the late layers have few positions and many channels, so one product per image would cost
    a whole (n, n) matrix for a handful of positions."""

    BLOCK_POSITIONS = 4096

    def __init__(self, layer: WeightedLayer):
        self.layer = layer
        self.pending: list[np.ndarray] = []
        self.positions = 0
        self.total: np.ndarray | float = 0.0

    def add(self, x: np.ndarray) -> None:
        columns = input_columns(self.layer, x)
        self.pending.append(columns)
        self.positions += columns.shape[-1]
        if self.positions >= self.BLOCK_POSITIONS:
            self._flush()

    def result(self) -> np.ndarray:
        self._flush()
        return self.total

    def _flush(self) -> None:
        if not self.pending:
            return
        columns = np.concatenate(self.pending, axis=-1).astype(np.float64)
        self.total = self.total + columns @ np.swapaxes(columns, -1, -2)
        self.pending, self.positions = [], 0


def round_weights(weight: np.ndarray, scale: np.ndarray, moment: np.ndarray, limit: int) -> np.ndarray:
    """Integer levels (K, n) of `weight` (K, n) at per-row `scale` (K,), within [-limit, limit], rounded column by
    column with the error passed on through H^-1. `moment` is H: (n, n) shared by every row, or (K, n, n) one per row
    (depthwise: row k reads only channel k)."""
    hessian = moment / max(np.trace(moment, axis1=-2, axis2=-1).max(), 1e-30)  # the scale of H does not matter
    size = hessian.shape[-1]
    diagonal = np.diagonal(hessian, axis1=-2, axis2=-1)
    hessian = hessian + DAMPING * diagonal.mean(axis=-1)[..., np.newaxis, np.newaxis] * np.eye(size) \
        + 1e-12 * np.eye(size)
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(hessian)), -1, -2)  # H^-1 = U^T U, U upper
    if upper.ndim == 2:
        upper = np.broadcast_to(upper, (weight.shape[0], size, size))
    remaining = weight.astype(np.float64) / scale.astype(np.float64)[:, np.newaxis]  # (K, n), in levels
    levels = np.empty_like(remaining)
    for column in range(size):
        levels[:, column] = np.clip(np.round(remaining[:, column]), -limit, limit)
        error = (remaining[:, column] - levels[:, column]) / upper[:, column, column]  # (K,)
        remaining[:, column + 1:] -= error[:, np.newaxis] * upper[:, column, column + 1:]
    return levels
