"""Depthwise convolution in place: the output overwrites the input's own bytes, one channel plane of scratch per part.

A conv whose output plane has its input plane's size (stride 1, MobileNetV2's padding of one) writes each channel
exactly over its own input plane, so channels are independent: they run in IN_PLACE_PARTS ranges at once, each range
with its own scratch plane. Any other conv writes channel c over the bytes of earlier input planes, so its channels
run one after the other in one part. The part count is fixed, not the thread count, so that a step's arena plan is
the same on every machine.
"""

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

# The same primitives as the out-of-place kernels, so the sums run in the same order and agree bit for bit.
from tinytrain.kernels.conv2d import add_tap, add_tap_transposed
from tinytrain.kernels.relu6 import clip_plane
from tinytrain.kernels.rows3x3 import add_plane_correlation, add_plane_correlation_transposed, is_rows3x3

IN_PLACE_PARTS = 2


def scratch_shape(in_shape, out_shape) -> tuple:
    """The scratch (parts, H, W) of an in-place conv from input (C, H, W) to output (C, Ho, Wo), both as the kernel
    gets them (the backward pass's input is dout)."""
    parts = IN_PLACE_PARTS if tuple(in_shape[1:]) == tuple(out_shape[1:]) else 1
    return (parts,) + tuple(in_shape[1:])


@register_jitable
def copy_plane(scratch, part, planes, plane):
    """scratch[part] (H, W) = planes[plane], indexed rather than sliced: a slice is a view, and views cost reference
    counts that, on the small planes of a network's end, take longer than the copy."""
    for y in range(scratch.shape[1]):
        for x in range(scratch.shape[2]):
            scratch[part, y, x] = planes[plane, y, x]


@register_jitable
def part_channels(n_channels, part, parts):
    return n_channels * part // parts, n_channels * (part + 1) // parts


def _depthwise_forward_inplace(out, input, scratch, weight, bias, stride, pad_top, pad_left, clip):
    """depthwise_forward (`clip`: a fused ReLU6) where `out` (C, Ho, Wo) is the first C*Ho*Wo floats of `input`
    (C, H, W)'s own buffer.

    scratch (parts, H, W), see scratch_shape. In one part, channels run in increasing order: out[c] ends at
    (c+1)*Ho*Wo, which is at most (c+1)*H*W, where input[c+1] starts, so no plane is overwritten before it is copied
    (TinyEngine computes its depthwise convs in place the same way).
    """
    n_channels, kernel_h, kernel_w = weight.shape
    parts = scratch.shape[0]
    if parts > 1 and (out.shape[1] != input.shape[1] or out.shape[2] != input.shape[2]):
        raise ValueError("in place in parts needs output planes the size of the input planes")
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for part in prange(parts):
        first, end = part_channels(n_channels, part, parts)
        for c in range(first, end):
            copy_plane(scratch, part, input, c)
            if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:  # constants: see depthwise.py
                add_plane_correlation(out, c, scratch, part, weight, c, 1, 1, 1, False, bias[c], False)
            elif by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
                add_plane_correlation(out, c, scratch, part, weight, c, 2, 0, 0, False, bias[c], False)
            elif by_rows:
                add_plane_correlation(out, c, scratch, part, weight, c, stride, pad_top, pad_left, False, bias[c],
                                      False)
            else:
                out[c] = bias[c]
                for ky in range(kernel_h):
                    for kx in range(kernel_w):
                        add_tap(out[c], scratch[part], weight[c, ky, kx], stride, ky - pad_top, kx - pad_left)
            if clip:
                clip_plane(out, c)


depthwise_forward_inplace = njit(cache=True, parallel=True)(_depthwise_forward_inplace)


def _depthwise_backward_input_inplace(dinput, dout, scratch, weight, stride, pad_top, pad_left):
    """dinput (C, H, W) = depthwise_backward_input of dout (C, Ho, Wo), which is the first C*Ho*Wo floats of
    dinput's own buffer; scratch (parts, Ho, Wo), see scratch_shape.

    In one part, channels run in decreasing order: dinput[c] starts at c*H*W, at or after the end of dout[c-1], so
    the planes still to come are never touched.
    """
    n_channels, kernel_h, kernel_w = weight.shape
    parts = scratch.shape[0]
    if parts > 1 and (dout.shape[1] != dinput.shape[1] or dout.shape[2] != dinput.shape[2]):
        raise ValueError("in place in parts needs output planes the size of the input planes")
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for part in prange(parts):
        first, end = part_channels(n_channels, part, parts)
        for c in range(end - 1, first - 1, -1):
            copy_plane(scratch, part, dout, c)
            if by_rows and stride == 1 and pad_top == 1 and pad_left == 1:  # its transpose: the rotated correlation
                add_plane_correlation(dinput, c, scratch, part, weight, c, 1, 1, 1, True, np.float32(0.0), False)
                continue
            if by_rows and stride == 2 and pad_top == 0 and pad_left == 0:
                add_plane_correlation_transposed(dinput, c, scratch, part, weight, c, 2, 0, 0, False)
                continue
            if by_rows:
                add_plane_correlation_transposed(dinput, c, scratch, part, weight, c, stride, pad_top, pad_left,
                                                 False)
                continue
            dinput[c] = 0.0
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    add_tap_transposed(dinput[c], scratch[part], weight[c, ky, kx], stride, ky - pad_top,
                                       kx - pad_left)


depthwise_backward_input_inplace = njit(cache=True, parallel=True)(_depthwise_backward_input_inplace)
