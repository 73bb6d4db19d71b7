"""Depthwise convolution in place: the output overwrites the input's own bytes, one channel plane of scratch."""

import numpy as np
from numba import njit
from numba.extending import register_jitable

# The same primitives as the out-of-place kernels, so the sums run in the same order and agree bit for bit.
from tinytrain.kernels.conv2d import add_tap, add_tap_transposed
from tinytrain.kernels.rows3x3 import add_plane_correlation, add_plane_correlation_transposed, is_rows3x3


@register_jitable
def copy_plane(scratch, planes, plane):
    """scratch (H, W) = planes[plane], indexed rather than sliced: a slice is a view, and views cost reference counts
    that, on the small planes of a network's end, take longer than the copy."""
    for y in range(scratch.shape[0]):
        for x in range(scratch.shape[1]):
            scratch[y, x] = planes[plane, y, x]


def _depthwise_forward_inplace(out, input, scratch, weight, bias, stride, pad_top, pad_left):
    """depthwise_forward where `out` (C, Ho, Wo) is the first C*Ho*Wo floats of `input` (C, H, W)'s own buffer.

    scratch (H, W) holds one input plane. Channels run in increasing order: out[c] ends at (c+1)*Ho*Wo, which is
    at most (c+1)*H*W, where input[c+1] starts, so no plane is overwritten before it is copied. Serial over
    channels because of that order (TinyEngine computes its depthwise convs in place the same way).
    """
    n_channels, kernel_h, kernel_w = weight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    planes = scratch[np.newaxis]  # (1, H, W): the plane functions address planes by index
    for c in range(n_channels):
        copy_plane(scratch, input, c)
        if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:  # constants: see depthwise.py
            add_plane_correlation(out, c, planes, 0, weight, c, 1, 1, 1, False, bias[c], False)
            continue
        if by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
            add_plane_correlation(out, c, planes, 0, weight, c, 2, 0, 0, False, bias[c], False)
            continue
        if by_rows:
            add_plane_correlation(out, c, planes, 0, weight, c, stride, pad_top, pad_left, False, bias[c], False)
            continue
        out[c] = bias[c]
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                add_tap(out[c], scratch, weight[c, ky, kx], stride, ky - pad_top, kx - pad_left)


depthwise_forward_inplace = njit(cache=True)(_depthwise_forward_inplace)


def _depthwise_backward_input_inplace(dinput, dout, scratch, weight, stride, pad_top, pad_left):
    """dinput (C, H, W) = depthwise_backward_input of dout (C, Ho, Wo), which is the first C*Ho*Wo floats of
    dinput's own buffer; scratch (Ho, Wo) holds one dout plane.

    Channels run in decreasing order: dinput[c] starts at c*H*W, at or after the end of dout[c-1], so the planes
    still to come are never touched.
    """
    n_channels, kernel_h, kernel_w = weight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    planes = scratch[np.newaxis]  # (1, Ho, Wo)
    for c in range(n_channels - 1, -1, -1):
        copy_plane(scratch, dout, c)
        if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:  # its transpose: the rotated correlation
            add_plane_correlation(dinput, c, planes, 0, weight, c, 1, 1, 1, True, np.float32(0.0), False)
            continue
        if by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
            add_plane_correlation_transposed(dinput, c, planes, 0, weight, c, 2, 0, 0, False)
            continue
        if by_rows:
            add_plane_correlation_transposed(dinput, c, planes, 0, weight, c, stride, pad_top, pad_left, False)
            continue
        dinput[c] = 0.0
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                add_tap_transposed(dinput[c], scratch, weight[c, ky, kx], stride, ky - pad_top, kx - pad_left)


depthwise_backward_input_inplace = njit(cache=True)(_depthwise_backward_input_inplace)
