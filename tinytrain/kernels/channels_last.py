"""Forward kernels of a patch tile, whose tensors are channels last: (h, w, C), one pixel's channels contiguous.

A tile is a few pixels on a side (13x13, 9x9, 4x4 ...), and a channels-first kernel does its work plane by plane:
on a small plane the per-plane setup and border tests outweigh the arithmetic. Channels last, every pixel's taps
are vector operations over its channels, whatever the tile's size. The weights are read channels last too, (kh, kw,
C) for depthwise and (C, kh, kw, K) for the stem, so that a tap's weights are one contiguous vector; patches.py
copies them so at each step, since the layers keep theirs channels first.

Each output sums its taps in the order the channels-first kernels sum them (conv2d.py, rows3x3.py): the bias, then
input channel by channel, each in ky then kx order; fastmath "contract" fuses each multiply-add as they do. Taps
outside the input (the whole image's zero padding, shifted to the tile) are skipped.
"""

from numba import njit, prange
from numba.extending import register_jitable

from tinytrain.kernels.blas import product_transposed
from tinytrain.kernels.pointwise import block_span
from tinytrain.kernels.relu6 import SIX, ZERO


@register_jitable
def taps_inside(origin, size, kernel):
    """[first, last) of the taps k whose input index origin + k lies in [0, size): the others read zero padding."""
    return max(0, -origin), max(0, min(kernel, size - origin))


def _depthwise_forward_channels_last(out, input, weight, bias, stride, pad_top, pad_left, clip):
    """out[y, x, c] = bias[c] + sum_{ky,kx} weight[ky, kx, c] * input[y*stride+ky-pad_top, x*stride+kx-pad_left, c],
    clipped to [0, 6] if `clip` (a fused ReLU6).

    out (Ho, Wo, C), input (H, W, C), weight (kh, kw, C) (a depthwise weight (C, kh, kw) channels last), bias (C,).
    """
    out_h, out_w, n_channels = out.shape
    in_h, in_w = input.shape[0], input.shape[1]
    kernel_h, kernel_w = weight.shape[0], weight.shape[1]
    three = kernel_h == 3 and kernel_w == 3
    for y in prange(out_h):
        top = y * stride - pad_top  # input row of tap ky = 0
        for x in range(out_w):
            left = x * stride - pad_left
            if three and top >= 0 and top + 2 < in_h and left >= 0 and left + 2 < in_w:  # all nine taps inside
                # max(0, ...) tells LLVM the indices are not negative, so the channel loop vectorises
                r0, r1, r2 = max(0, top), max(0, top + 1), max(0, top + 2)
                c0, c1, c2 = max(0, left), max(0, left + 1), max(0, left + 2)
                for c in range(n_channels):
                    out[y, x, c] = (bias[c]
                                    + weight[0, 0, c] * input[r0, c0, c] + weight[0, 1, c] * input[r0, c1, c]
                                    + weight[0, 2, c] * input[r0, c2, c] + weight[1, 0, c] * input[r1, c0, c]
                                    + weight[1, 1, c] * input[r1, c1, c] + weight[1, 2, c] * input[r1, c2, c]
                                    + weight[2, 0, c] * input[r2, c0, c] + weight[2, 1, c] * input[r2, c1, c]
                                    + weight[2, 2, c] * input[r2, c2, c])
            else:
                for c in range(n_channels):
                    out[y, x, c] = bias[c]
                ky_first, ky_last = taps_inside(top, in_h, kernel_h)
                kx_first, kx_last = taps_inside(left, in_w, kernel_w)
                for ky in range(ky_first, ky_last):
                    for kx in range(kx_first, kx_last):
                        for c in range(n_channels):
                            out[y, x, c] += weight[ky, kx, c] * input[top + ky, left + kx, c]
            if clip:
                for c in range(n_channels):
                    out[y, x, c] = min(max(out[y, x, c], ZERO), SIX)


depthwise_forward_channels_last = njit(cache=True, parallel=True, fastmath={"contract"})(
    _depthwise_forward_channels_last)


def _conv2d_forward_channels_last(out, input, weight, bias, stride, pad_top, pad_left, clip):
    """out[y, x, k] = bias[k] + sum_{c,ky,kx} weight[c, ky, kx, k] * input[y*stride+ky-pad_top, x*stride+kx-pad_left,
    c], clipped to [0, 6] if `clip`.

    out (Ho, Wo, K), input (H, W, C), weight (C, kh, kw, K) (a conv weight (K, C, kh, kw) channels last), bias (K,).
    """
    out_h, out_w, n_out = out.shape
    in_h, in_w = input.shape[0], input.shape[1]
    n_in, kernel_h, kernel_w = weight.shape[0], weight.shape[1], weight.shape[2]
    three = kernel_h == 3 and kernel_w == 3
    for y in prange(out_h):
        top = y * stride - pad_top
        for x in range(out_w):
            left = x * stride - pad_left
            for k in range(n_out):
                out[y, x, k] = bias[k]
            if three and top >= 0 and top + 2 < in_h and left >= 0 and left + 2 < in_w:  # all nine taps inside
                r0, r1, r2 = max(0, top), max(0, top + 1), max(0, top + 2)
                c0, c1, c2 = max(0, left), max(0, left + 1), max(0, left + 2)
                for c in range(n_in):  # one pass over the outputs per input channel, its nine taps in order
                    x00, x01, x02 = input[r0, c0, c], input[r0, c1, c], input[r0, c2, c]
                    x10, x11, x12 = input[r1, c0, c], input[r1, c1, c], input[r1, c2, c]
                    x20, x21, x22 = input[r2, c0, c], input[r2, c1, c], input[r2, c2, c]
                    for k in range(n_out):
                        out[y, x, k] = (out[y, x, k]
                                        + weight[c, 0, 0, k] * x00 + weight[c, 0, 1, k] * x01
                                        + weight[c, 0, 2, k] * x02 + weight[c, 1, 0, k] * x10
                                        + weight[c, 1, 1, k] * x11 + weight[c, 1, 2, k] * x12
                                        + weight[c, 2, 0, k] * x20 + weight[c, 2, 1, k] * x21
                                        + weight[c, 2, 2, k] * x22)
            else:
                ky_first, ky_last = taps_inside(top, in_h, kernel_h)
                kx_first, kx_last = taps_inside(left, in_w, kernel_w)
                for c in range(n_in):
                    for ky in range(ky_first, ky_last):
                        for kx in range(kx_first, kx_last):
                            value = input[top + ky, left + kx, c]
                            for k in range(n_out):
                                out[y, x, k] += weight[c, ky, kx, k] * value
            if clip:
                for k in range(n_out):
                    out[y, x, k] = min(max(out[y, x, k], ZERO), SIX)


conv2d_forward_channels_last = njit(cache=True, parallel=True, fastmath={"contract"})(_conv2d_forward_channels_last)


def _pointwise_forward_channels_last(out, input, weight, bias, blocks, clip):
    """out = input @ weight.T + bias, clipped to [0, 6] if `clip`; out (P, K), input (P, C), weight (K, C), bias
    (K,); in `blocks` blocks of pixels (pointwise.py's parallel_blocks), each one sgemm."""
    n_pixels, n_out = out.shape
    for block in prange(blocks):
        first, last = block_span(block, blocks, n_pixels)
        product_transposed(out[first:last], input[first:last], weight)
        for p in range(first, last):
            if clip:
                for k in range(n_out):
                    out[p, k] = min(max(out[p, k] + bias[k], ZERO), SIX)
            else:
                for k in range(n_out):
                    out[p, k] += bias[k]


pointwise_forward_channels_last = njit(cache=True, parallel=True)(_pointwise_forward_channels_last)
