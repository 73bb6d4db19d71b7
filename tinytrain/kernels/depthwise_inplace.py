"""Depthwise convolution in place: the output overwrites the input's own bytes, one channel plane of scratch."""

from numba import njit

# The same tap primitives as the out-of-place kernels, so the sums run in the same order and agree bit for bit.
# Numba's cache does not see edits to conv2d.py from here: after changing them, touch this file too.
from tinytrain.kernels.conv2d import add_tap, add_tap_transposed


def _depthwise_forward_inplace(out, input, scratch, weight, bias, stride, pad_top, pad_left):
    """depthwise_forward where `out` (C, Ho, Wo) is the first C*Ho*Wo floats of `input` (C, H, W)'s own buffer.

    scratch (H, W) holds one input plane. Channels run in increasing order: out[c] ends at (c+1)*Ho*Wo, which is
    at most (c+1)*H*W, where input[c+1] starts, so no plane is overwritten before it is copied. Serial over
    channels because of that order (TinyEngine computes its depthwise convs in place the same way).
    """
    n_channels, kernel_h, kernel_w = weight.shape
    for c in range(n_channels):
        scratch[:, :] = input[c]
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
    for c in range(n_channels - 1, -1, -1):
        scratch[:, :] = dout[c]
        dinput[c] = 0.0
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                add_tap_transposed(dinput[c], scratch, weight[c, ky, kx], stride, ky - pad_top, kx - pad_left)


depthwise_backward_input_inplace = njit(cache=True)(_depthwise_backward_input_inplace)
