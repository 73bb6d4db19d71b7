"""Depthwise k x k convolution (channel c reads only input channel c) of one (C, H, W) sample: forward and gradients."""

import numpy as np
from numba import njit, prange

# 3 x 3 at stride 1 or 2 (every depthwise conv of MobileNetV2) runs a whole row at a time (rows3x3.py); other sizes
# run the tap-by-tap primitives of conv2d.
# MobileNetV2's two geometries, stride 1 with padding 1 and stride 2 with TF "SAME" padding (none at the top and
# left), get calls of their own with the geometry as constants: LLVM then compiles the plane code specialised to each,
# border tests and index arithmetic folded (about 1.3x faster over the network, most on its small planes).
from tinytrain.kernels.conv2d import add_tap, add_tap_transposed, tap_weight_gradient
from tinytrain.kernels.rows3x3 import (add_plane_correlation, add_plane_correlation_transposed, is_rows3x3,
                                       plane_weight_gradient)
from tinytrain.kernels.relu6 import clip_plane


def _depthwise_forward(out, input, weight, bias, stride, pad_top, pad_left, clip):
    """out[c, y, x] = bias[c] + sum_{ky,kx} weight[c, ky, kx] * input[c, y*stride+ky-pad_top, x*stride+kx-pad_left],
    clipped to [0, 6] if `clip` (a fused ReLU6).

    out (C, Ho, Wo), input (C, H, W), weight (C, kh, kw), bias (C,).
    """
    n_channels, kernel_h, kernel_w = weight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for c in prange(n_channels):
        if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:
            add_plane_correlation(out, c, input, c, weight, c, 1, 1, 1, False, bias[c], False)
        elif by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
            add_plane_correlation(out, c, input, c, weight, c, 2, 0, 0, False, bias[c], False)
        elif by_rows:
            add_plane_correlation(out, c, input, c, weight, c, stride, pad_top, pad_left, False, bias[c], False)
        else:
            out[c] = bias[c]
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    add_tap(out[c], input[c], weight[c, ky, kx], stride, ky - pad_top, kx - pad_left)
        if clip:
            clip_plane(out, c)


depthwise_forward = njit(cache=True, parallel=True)(_depthwise_forward)


def _depthwise_backward_input(dinput, dout, weight, stride, pad_top, pad_left, accumulate):
    """dinput[c] (= or +=) sum_{ky,kx} weight[c, ky, kx] * dout[c] scattered back through each tap's shift.

    dinput (C, H, W), dout (C, Ho, Wo). Channel c only touches dinput[c], so prange over channels is race-free.
    """
    n_channels, kernel_h, kernel_w = weight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for c in prange(n_channels):
        if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:  # its transpose: the rotated correlation
            add_plane_correlation(dinput, c, dout, c, weight, c, 1, 1, 1, True, np.float32(0.0), accumulate)
            continue
        if by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
            add_plane_correlation_transposed(dinput, c, dout, c, weight, c, 2, 0, 0, accumulate)
            continue
        if by_rows:
            add_plane_correlation_transposed(dinput, c, dout, c, weight, c, stride, pad_top, pad_left, accumulate)
            continue
        if not accumulate:
            dinput[c] = 0.0
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                add_tap_transposed(dinput[c], dout[c], weight[c, ky, kx], stride, ky - pad_top, kx - pad_left)


depthwise_backward_input = njit(cache=True, parallel=True)(_depthwise_backward_input)


def _depthwise_backward_weight(dweight, dout, input_selected, channels, stride, pad_top, pad_left):
    """dweight[j, ky, kx] = d loss / d weight[channels[j], ky, kx], from dout[channels[j]] and input_selected[j].

    dweight (n, kh, kw), dout (C, Ho, Wo), input_selected (n, H, W) the saved input of the selected channels only.
    """
    n_selected, kernel_h, kernel_w = dweight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for j in prange(n_selected):
        c = channels[j]
        if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:
            plane_weight_gradient(dweight, j, dout, c, input_selected, j, 1, 1, 1)
            continue
        if by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
            plane_weight_gradient(dweight, j, dout, c, input_selected, j, 2, 0, 0)
            continue
        if by_rows:
            plane_weight_gradient(dweight, j, dout, c, input_selected, j, stride, pad_top, pad_left)
            continue
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                dweight[j, ky, kx] = tap_weight_gradient(dout[c], input_selected[j], stride,
                                                         ky - pad_top, kx - pad_left)


depthwise_backward_weight = njit(cache=True, parallel=True)(_depthwise_backward_weight)
