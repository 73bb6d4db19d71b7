"""Dense k x k convolution (groups=1, the stem) of one (C, H, W) sample: forward, input and weight gradients."""

from numba import njit, prange
from numba.extending import register_jitable

from tinytrain.kernels.rows3x3 import (add_plane_correlation, add_plane_correlation_transposed, is_rows3x3,
                                       plane_weight_gradient)
from tinytrain.kernels.relu6 import clip_plane

# ---------------------------------------------------------------------------------------------------------------------
# Shifted-plane primitives, shared with depthwise.py: every kernel size and stride that rows3x3.py does not cover.
# Tap (ky, kx) of a convolution pairs output pixel (y, x) with input pixel (y*stride + ky - pad_top,
# x*stride + kx - pad_left). The general path of every kernel below loops over channels and taps around them.
# - register_jitable: callable from plain Python, and compiled into the jitted kernels that call them.
# - They walk row views from index 0, and stride 1 gets its own loop: LLVM then sees a contiguous, unit-step loop
#   that it vectorises (about 4x faster than one loop with a run-time stride).
# - Numba caches a kernel by its own file; kernels/cache.py drops the cache when these or rows3x3.py change.
# ---------------------------------------------------------------------------------------------------------------------


@register_jitable
def valid_outputs(out_size, in_size, offset, stride):
    """The output range [low, high) whose input index o*stride + offset lies in [0, in_size).

    Outside it the tap reads zero padding, so the loops skip it instead of testing every pixel.
    low = ceil(-offset / stride), high = ceil((in_size - offset) / stride), both clipped to [0, out_size].
    """
    low = max(0, (-offset + stride - 1) // stride)
    high = min(out_size, (in_size - offset + stride - 1) // stride)
    return low, max(low, high)


@register_jitable
def add_tap(out, input, weight, stride, offset_y, offset_x):
    """out[y, x] += weight * input[y*stride + offset_y, x*stride + offset_x]; out (Ho, Wo), input (H, W)."""
    y_low, y_high = valid_outputs(out.shape[0], input.shape[0], offset_y, stride)
    x_low, x_high = valid_outputs(out.shape[1], input.shape[1], offset_x, stride)
    for y in range(y_low, y_high):
        out_row = out[y, x_low:x_high]  # (n,)
        input_row = input[y * stride + offset_y, x_low * stride + offset_x:]  # starts at the pixel of x_low
        if stride == 1:
            for i in range(x_high - x_low):
                out_row[i] += weight * input_row[i]
        else:
            for i in range(x_high - x_low):
                out_row[i] += weight * input_row[i * stride]


@register_jitable
def add_tap_transposed(dinput, dout, weight, stride, offset_y, offset_x):
    """The adjoint of add_tap: dinput[y*stride + offset_y, x*stride + offset_x] += weight * dout[y, x]."""
    y_low, y_high = valid_outputs(dout.shape[0], dinput.shape[0], offset_y, stride)
    x_low, x_high = valid_outputs(dout.shape[1], dinput.shape[1], offset_x, stride)
    for y in range(y_low, y_high):
        dout_row = dout[y, x_low:x_high]  # (n,)
        dinput_row = dinput[y * stride + offset_y, x_low * stride + offset_x:]
        if stride == 1:
            for i in range(x_high - x_low):
                dinput_row[i] += weight * dout_row[i]
        else:
            for i in range(x_high - x_low):
                dinput_row[i * stride] += weight * dout_row[i]


@register_jitable(fastmath={"reassoc"})
def tap_weight_gradient(dout, input, stride, offset_y, offset_x):
    """d loss / d weight of one tap: sum_{y, x} dout[y, x] * input[y*stride + offset_y, x*stride + offset_x].

    fastmath "reassoc" (this sum only) lets LLVM split it over vector lanes (about 3x faster); the float64
    accumulator keeps the reordered sum at least as accurate as a sequential float32 one.
    """
    y_low, y_high = valid_outputs(dout.shape[0], input.shape[0], offset_y, stride)
    x_low, x_high = valid_outputs(dout.shape[1], input.shape[1], offset_x, stride)
    total = 0.0
    for y in range(y_low, y_high):
        dout_row = dout[y, x_low:x_high]  # (n,)
        input_row = input[y * stride + offset_y, x_low * stride + offset_x:]
        if stride == 1:
            for i in range(x_high - x_low):
                total += dout_row[i] * input_row[i]
        else:
            for i in range(x_high - x_low):
                total += dout_row[i] * input_row[i * stride]
    return total


# ---------------------------------------------------------------------------------------------------------------------
# Convolution kernels
# ---------------------------------------------------------------------------------------------------------------------


# 3 x 3 at stride 1 or 2 (the stem) runs a whole row at a time (rows3x3.py), other sizes tap by tap.


def _conv2d_forward(out, input, weight, bias, stride, pad_top, pad_left, clip):
    """out[k, y, x] = bias[k] + sum_{c,ky,kx} weight[k,c,ky,kx] * input[c, y*stride+ky-pad_top, x*stride+kx-pad_left],
    clipped to [0, 6] if `clip` (a fused ReLU6).

    out (K, Ho, Wo), input (C, H, W), weight (K, C, kh, kw), bias (K,). Bottom/right padding is implied by Ho, Wo.
    """
    n_out = out.shape[0]
    n_in, kernel_h, kernel_w = weight.shape[1:]
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for k in prange(n_out):
        if by_rows and stride == 2 and pad_top == 0 and pad_left == 0:  # the stem, TF "SAME": see depthwise.py
            for c in range(n_in):  # the first input channel starts from the bias, the others add to it
                add_plane_correlation(out, k, input, c, weight[k], c, 2, 0, 0, False, bias[k], c > 0)
        elif by_rows:
            for c in range(n_in):
                add_plane_correlation(out, k, input, c, weight[k], c, stride, pad_top, pad_left, False, bias[k], c > 0)
        else:
            out[k] = bias[k]
            for c in range(n_in):
                for ky in range(kernel_h):
                    for kx in range(kernel_w):
                        add_tap(out[k], input[c], weight[k, c, ky, kx], stride, ky - pad_top, kx - pad_left)
        if clip:
            clip_plane(out, k)


conv2d_forward = njit(cache=True, parallel=True)(_conv2d_forward)


def _conv2d_backward_input(dinput, dout, weight, stride, pad_top, pad_left, accumulate):
    """dinput[c] (= or +=) sum_{k, ky, kx} weight[k, c, ky, kx] * dout[k], scattered back through each tap's shift.

    dinput (C, H, W), dout (K, Ho, Wo). prange runs over INPUT channels: each thread writes only its own dinput[c],
    so the scatter has no race (a loop over output channels would have threads colliding on the same dinput[c]).
    """
    n_out, n_in, kernel_h, kernel_w = weight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for c in prange(n_in):
        if by_rows:
            for k in range(n_out):
                add_plane_correlation_transposed(dinput, c, dout, k, weight[k], c, stride, pad_top, pad_left,
                                                 accumulate or k > 0)
            continue
        if not accumulate:
            dinput[c] = 0.0
        for k in range(n_out):
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    add_tap_transposed(dinput[c], dout[k], weight[k, c, ky, kx], stride, ky - pad_top, kx - pad_left)


conv2d_backward_input = njit(cache=True, parallel=True)(_conv2d_backward_input)


def _conv2d_backward_weight(dweight, dout, input_selected, out_channels, stride, pad_top, pad_left):
    """dweight[a, b, ky, kx] = d loss / d weight[out_channels[a], <channel of input_selected[b]>, ky, kx].

    dweight (n_out, n_in, kh, kw), dout (K, Ho, Wo), input_selected (n_in, H, W) the saved compact input,
    out_channels (n_out,) int64. Only the selected channels are computed: sparse means computing less.
    """
    n_selected_out, n_selected_in, kernel_h, kernel_w = dweight.shape
    by_rows = is_rows3x3(kernel_h, kernel_w, stride)
    for a in prange(n_selected_out):
        k = out_channels[a]
        for b in range(n_selected_in):
            if by_rows:
                plane_weight_gradient(dweight[a], b, dout, k, input_selected, b, stride, pad_top, pad_left)
                continue
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    dweight[a, b, ky, kx] = tap_weight_gradient(dout[k], input_selected[b], stride,
                                                                ky - pad_top, kx - pad_left)


conv2d_backward_weight = njit(cache=True, parallel=True)(_conv2d_backward_weight)
