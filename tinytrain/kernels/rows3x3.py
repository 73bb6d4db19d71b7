"""3 x 3 convolution of one channel plane, stride 1 or 2, a whole output row at a time: depthwise and the stem.

The kernels in conv2d.py make one pass over the output plane per tap (9 passes for 3 x 3). Here each output row takes
all nine taps from three input rows in one pass (the top and bottom rows, whose taps reach into the padding, one pass
per input row they do read). The columns split once into the interior, where every tap lies inside the input and the
row loop is a plain unit-step (stride 1) or even/odd (stride 2) loop that LLVM vectorises, and the one or two border
columns on each side, whose pixels test each tap. How the code is written is what makes it fast in Numba:
- A plane is addressed by its channel index in the whole (C, H, W) array, and rows by index, never by a view: every
  view costs two atomic reference-count updates, which took longer than the arithmetic of a short row.
- Interior indices are written max(0, ...) + i: LLVM then knows they are not negative and drops Numba's
  negative-index wraparound, which otherwise keeps the loop from vectorising.
- Each function does a whole plane in one call: a call per row cost more than a short row's arithmetic.
- fastmath "contract" (these functions only) lets LLVM fuse each multiply and add into one FMA, rounded once. The
  in-place kernels call the same functions as the out-of-place ones, so the two still agree bit for bit.
"""

import numpy as np
from numba.extending import register_jitable


@register_jitable
def is_rows3x3(kernel_h, kernel_w, stride):
    """Whether this module computes a convolution of that kernel size and stride."""
    return kernel_h == 3 and kernel_w == 3 and 1 <= stride <= 2


@register_jitable
def interior_outputs(out_size, in_size, offset, stride):
    """The outputs [low, high) whose three taps o*stride + offset + (0, 1, 2) all lie in [0, in_size), stride 1 or 2:
    low = ceil(-offset / stride), high = ceil((in_size - offset - 2) / stride), both clipped to [0, out_size]."""
    if stride == 1:  # a shift, not a division, for stride 2: this runs once per plane, thousands of times a step
        low, high = -offset, in_size - offset - 2
    else:
        low, high = (-offset + 1) >> 1, (in_size - offset - 1) >> 1
    low = min(out_size, max(0, low))
    high = min(out_size, high)
    return low, max(low, high)


@register_jitable(fastmath={"contract"})
def add_plane_correlation(out, out_plane, input, in_plane, weight, weight_plane, stride, pad_top, pad_left, flipped,
                          start, keep):
    """out[out_plane] = (out[out_plane] if keep else start) + the 3 x 3 correlation of input[in_plane]:

    out[p, y, x] += sum_{ky,kx} w[ky, kx] * input[q, y*stride + ky - pad_top, x*stride + kx - pad_left], where
    out (., Ho, Wo), input (., H, W), w = weight[weight_plane] from weight (., 3, 3); flipped: w rotated by 180
    degrees, which turns the stride-1 correlation into its own transpose (the input gradient). Taps outside the input
    read zero padding. Every pixel sums its taps in the same order, ky then kx, interior or border.
    """
    out_h, out_w = out.shape[1:]
    in_h, in_w = input.shape[1:]
    if flipped:
        w00, w01, w02 = weight[weight_plane, 2, 2], weight[weight_plane, 2, 1], weight[weight_plane, 2, 0]
        w10, w11, w12 = weight[weight_plane, 1, 2], weight[weight_plane, 1, 1], weight[weight_plane, 1, 0]
        w20, w21, w22 = weight[weight_plane, 0, 2], weight[weight_plane, 0, 1], weight[weight_plane, 0, 0]
    else:
        w00, w01, w02 = weight[weight_plane, 0, 0], weight[weight_plane, 0, 1], weight[weight_plane, 0, 2]
        w10, w11, w12 = weight[weight_plane, 1, 0], weight[weight_plane, 1, 1], weight[weight_plane, 1, 2]
        w20, w21, w22 = weight[weight_plane, 2, 0], weight[weight_plane, 2, 1], weight[weight_plane, 2, 2]
    if stride == 1 and pad_top == 1 and pad_left == 1 and out_h == in_h and out_w == in_w:
        add_same_size_plane_correlation(out, out_plane, input, in_plane, w00, w01, w02, w10, w11, w12, w20, w21, w22,
                                        start, keep)
        return
    if (stride == 2 and pad_top == 0 and pad_left == 0 and 2 * out_h <= in_h <= 2 * out_h + 1
            and 2 * out_w <= in_w <= 2 * out_w + 1):
        add_halving_plane_correlation(out, out_plane, input, in_plane, w00, w01, w02, w10, w11, w12, w20, w21, w22,
                                      start, keep)
        return
    y_low, y_high = interior_outputs(out_h, in_h, -pad_top, stride)
    x_low, x_high = interior_outputs(out_w, in_w, -pad_left, stride)
    n = x_high - x_low
    start_x = max(0, x_low)  # == x_low; max() tells LLVM that it is not negative
    first = max(0, x_low * stride - pad_left)  # input column of tap kx = 0 at x_low, in the interior
    for y in range(out_h):
        top = y * stride - pad_top  # input row of tap ky = 0
        if y_low <= y < y_high and n > 0:  # three input rows: all nine taps in one pass
            r0, r1, r2 = max(0, top), max(0, top + 1), max(0, top + 2)
            if stride == 1:
                for i in range(n):
                    x, ix = start_x + i, first + i
                    out[out_plane, y, x] = (
                        (out[out_plane, y, x] if keep else start)
                        + w00 * input[in_plane, r0, ix] + w01 * input[in_plane, r0, ix + 1]
                        + w02 * input[in_plane, r0, ix + 2] + w10 * input[in_plane, r1, ix]
                        + w11 * input[in_plane, r1, ix + 1] + w12 * input[in_plane, r1, ix + 2]
                        + w20 * input[in_plane, r2, ix] + w21 * input[in_plane, r2, ix + 1]
                        + w22 * input[in_plane, r2, ix + 2])
            else:
                for i in range(n):
                    x, ix = start_x + i, first + 2 * i
                    out[out_plane, y, x] = (
                        (out[out_plane, y, x] if keep else start)
                        + w00 * input[in_plane, r0, ix] + w01 * input[in_plane, r0, ix + 1]
                        + w02 * input[in_plane, r0, ix + 2] + w10 * input[in_plane, r1, ix]
                        + w11 * input[in_plane, r1, ix + 1] + w12 * input[in_plane, r1, ix + 2]
                        + w20 * input[in_plane, r2, ix] + w21 * input[in_plane, r2, ix + 1]
                        + w22 * input[in_plane, r2, ix + 2])
        elif n > 0:  # a top or bottom row: one pass per input row inside the plane, in ky order
            started = keep
            for ky in range(3):
                if not 0 <= top + ky < in_h:
                    continue
                row = max(0, top + ky)
                if flipped:
                    a, b = weight[weight_plane, 2 - ky, 2], weight[weight_plane, 2 - ky, 1]
                    c = weight[weight_plane, 2 - ky, 0]
                else:
                    a, b, c = weight[weight_plane, ky, 0], weight[weight_plane, ky, 1], weight[weight_plane, ky, 2]
                if stride == 1:
                    for i in range(n):
                        x, ix = start_x + i, first + i
                        out[out_plane, y, x] = ((out[out_plane, y, x] if started else start)
                                                + a * input[in_plane, row, ix] + b * input[in_plane, row, ix + 1]
                                                + c * input[in_plane, row, ix + 2])
                else:
                    for i in range(n):
                        x, ix = start_x + i, first + 2 * i
                        out[out_plane, y, x] = ((out[out_plane, y, x] if started else start)
                                                + a * input[in_plane, row, ix] + b * input[in_plane, row, ix + 1]
                                                + c * input[in_plane, row, ix + 2])
                started = True
            if not started:  # no input row reaches this output row: padding only
                for i in range(n):
                    out[out_plane, y, start_x + i] = start
        x = 0
        while x < out_w:  # the border pixels of this row: the columns outside [x_low, x_high)
            if x == x_low and n > 0:
                x = x_high
                continue
            total = out[out_plane, y, x] if keep else start
            ix = x * stride - pad_left
            inside0, inside1, inside2 = 0 <= ix < in_w, 0 <= ix + 1 < in_w, 0 <= ix + 2 < in_w
            if 0 <= top < in_h:
                if inside0:
                    total += w00 * input[in_plane, top, ix]
                if inside1:
                    total += w01 * input[in_plane, top, ix + 1]
                if inside2:
                    total += w02 * input[in_plane, top, ix + 2]
            if 0 <= top + 1 < in_h:
                if inside0:
                    total += w10 * input[in_plane, top + 1, ix]
                if inside1:
                    total += w11 * input[in_plane, top + 1, ix + 1]
                if inside2:
                    total += w12 * input[in_plane, top + 1, ix + 2]
            if 0 <= top + 2 < in_h:
                if inside0:
                    total += w20 * input[in_plane, top + 2, ix]
                if inside1:
                    total += w21 * input[in_plane, top + 2, ix + 1]
                if inside2:
                    total += w22 * input[in_plane, top + 2, ix + 2]
            out[out_plane, y, x] = total
            x += 1


@register_jitable(fastmath={"contract"})
def add_same_size_plane_correlation(out, out_plane, input, in_plane, w00, w01, w02, w10, w11, w12, w20, w21, w22,
                                    start, keep):
    """add_plane_correlation at stride 1 with one pixel of zero padding on every side (out and input both (., H, W)),
    with the taps w00..w22 given: every depthwise conv of stride 1 and its input gradient. Which taps a pixel has is
    known from its row and column alone, so each row is its left pixel, a vectorised run of W - 2 and its right
    pixel, with no per-pixel tests: about 1.5x faster on the small planes of a network's end, where the borders are
    most of the plane. The sums run in the same order as add_plane_correlation's, so the results are the same bits.
    """
    height, width = out.shape[1:]
    for y in range(height):
        has_top, has_bottom = y >= 1, y + 1 < height  # whether input rows y - 1 and y + 1 exist
        r0, r1, r2 = max(0, y - 1), max(0, y), max(0, y + 1)
        total = out[out_plane, y, 0] if keep else start  # left pixel: taps kx = 1, 2
        if has_top:
            total = total + w01 * input[in_plane, r0, 0]
            if width > 1:
                total = total + w02 * input[in_plane, r0, 1]
        total = total + w11 * input[in_plane, r1, 0]
        if width > 1:
            total = total + w12 * input[in_plane, r1, 1]
        if has_bottom:
            total = total + w21 * input[in_plane, r2, 0]
            if width > 1:
                total = total + w22 * input[in_plane, r2, 1]
        out[out_plane, y, 0] = total
        if has_top and has_bottom:
            for i in range(width - 2):
                out[out_plane, y, i + 1] = (
                    (out[out_plane, y, i + 1] if keep else start)
                    + w00 * input[in_plane, r0, i] + w01 * input[in_plane, r0, i + 1] + w02 * input[in_plane, r0, i + 2]
                    + w10 * input[in_plane, r1, i] + w11 * input[in_plane, r1, i + 1] + w12 * input[in_plane, r1, i + 2]
                    + w20 * input[in_plane, r2, i] + w21 * input[in_plane, r2, i + 1]
                    + w22 * input[in_plane, r2, i + 2])
        elif has_bottom:
            for i in range(width - 2):
                out[out_plane, y, i + 1] = (
                    (out[out_plane, y, i + 1] if keep else start)
                    + w10 * input[in_plane, r1, i] + w11 * input[in_plane, r1, i + 1] + w12 * input[in_plane, r1, i + 2]
                    + w20 * input[in_plane, r2, i] + w21 * input[in_plane, r2, i + 1]
                    + w22 * input[in_plane, r2, i + 2])
        elif has_top:
            for i in range(width - 2):
                out[out_plane, y, i + 1] = (
                    (out[out_plane, y, i + 1] if keep else start)
                    + w00 * input[in_plane, r0, i] + w01 * input[in_plane, r0, i + 1] + w02 * input[in_plane, r0, i + 2]
                    + w10 * input[in_plane, r1, i] + w11 * input[in_plane, r1, i + 1]
                    + w12 * input[in_plane, r1, i + 2])
        else:
            for i in range(width - 2):
                out[out_plane, y, i + 1] = ((out[out_plane, y, i + 1] if keep else start)
                                            + w10 * input[in_plane, r1, i] + w11 * input[in_plane, r1, i + 1]
                                            + w12 * input[in_plane, r1, i + 2])
        if width > 1:  # right pixel: taps kx = 0, 1
            edge = width - 2
            total = out[out_plane, y, width - 1] if keep else start
            if has_top:
                total = total + w00 * input[in_plane, r0, edge] + w01 * input[in_plane, r0, edge + 1]
            total = total + w10 * input[in_plane, r1, edge] + w11 * input[in_plane, r1, edge + 1]
            if has_bottom:
                total = total + w20 * input[in_plane, r2, edge] + w21 * input[in_plane, r2, edge + 1]
            out[out_plane, y, width - 1] = total


@register_jitable(fastmath={"contract"})
def add_halving_plane_correlation(out, out_plane, input, in_plane, w00, w01, w02, w10, w11, w12, w20, w21, w22,
                                  start, keep):
    """add_plane_correlation at stride 2 with no padding before, out (., Ho, Wo) and input (., 2 Ho or 2 Ho + 1,
    2 Wo or 2 Wo + 1), with the taps w00..w22 given: TF "SAME" on an even input (every stride-2 depthwise conv of
    MobileNetV2), where only the last row and column reach the padding, and a patch tile of one, whose input holds
    that last row or column too. Each row is a run of pixels with all their taps, then, when the last column reaches
    the padding, a last pixel with two columns of them; a last row that reaches the padding has two rows of taps: no
    per-pixel tests. The sums run in add_plane_correlation's order, so the results are the same bits.
    """
    out_h, out_w = out.shape[1:]
    in_h, in_w = input.shape[1:]
    full_rows = out_h if in_h > 2 * out_h else out_h - 1  # rows whose three tap rows lie inside the input
    full_columns = out_w if in_w > 2 * out_w else out_w - 1
    last = 2 * out_w - 2  # the input column of tap 0 of the last output column
    for y in range(out_h):
        r0, r1, r2 = 2 * y, 2 * y + 1, min(2 * y + 2, in_h - 1)  # r2 is read only when it is inside
        if y < full_rows:
            for x in range(full_columns):
                i = 2 * x
                out[out_plane, y, x] = (
                    (out[out_plane, y, x] if keep else start)
                    + w00 * input[in_plane, r0, i] + w01 * input[in_plane, r0, i + 1] + w02 * input[in_plane, r0, i + 2]
                    + w10 * input[in_plane, r1, i] + w11 * input[in_plane, r1, i + 1] + w12 * input[in_plane, r1, i + 2]
                    + w20 * input[in_plane, r2, i] + w21 * input[in_plane, r2, i + 1]
                    + w22 * input[in_plane, r2, i + 2])
            if full_columns < out_w:
                out[out_plane, y, out_w - 1] = (
                    (out[out_plane, y, out_w - 1] if keep else start)
                    + w00 * input[in_plane, r0, last] + w01 * input[in_plane, r0, last + 1]
                    + w10 * input[in_plane, r1, last] + w11 * input[in_plane, r1, last + 1]
                    + w20 * input[in_plane, r2, last] + w21 * input[in_plane, r2, last + 1])
        else:
            for x in range(full_columns):
                i = 2 * x
                out[out_plane, y, x] = (
                    (out[out_plane, y, x] if keep else start)
                    + w00 * input[in_plane, r0, i] + w01 * input[in_plane, r0, i + 1] + w02 * input[in_plane, r0, i + 2]
                    + w10 * input[in_plane, r1, i] + w11 * input[in_plane, r1, i + 1]
                    + w12 * input[in_plane, r1, i + 2])
            if full_columns < out_w:
                out[out_plane, y, out_w - 1] = (
                    (out[out_plane, y, out_w - 1] if keep else start)
                    + w00 * input[in_plane, r0, last] + w01 * input[in_plane, r0, last + 1]
                    + w10 * input[in_plane, r1, last] + w11 * input[in_plane, r1, last + 1])


@register_jitable(fastmath={"contract"})
def add_halving_plane_correlation_transposed(dinput, dinput_plane, dout, dout_plane, weight, weight_plane, keep):
    """add_plane_correlation_transposed at stride 2 with no padding before (TF "SAME" on an even input, every
    stride-2 depthwise conv of MobileNetV2), dinput (., 2 Ho, 2 Wo) and dout (., Ho, Wo): each 2 x 2 block of dinput
    at (2y, 2x) takes its taps from dout[y, x], dout[y, x - 1], dout[y - 1, x] and dout[y - 1, x - 1] alone, an even
    row or column from taps 0 and 2, an odd one from tap 1. Written block by block with no per-pixel tests (2-3x
    faster on the small planes of a network's end); the sums run in add_plane_correlation_transposed's order, tap
    row ky first, so the results are the same bits.
    """
    out_h, out_w = dout.shape[1:]
    w00, w01, w02 = weight[weight_plane, 0, 0], weight[weight_plane, 0, 1], weight[weight_plane, 0, 2]
    w10, w11, w12 = weight[weight_plane, 1, 0], weight[weight_plane, 1, 1], weight[weight_plane, 1, 2]
    w20, w21, w22 = weight[weight_plane, 2, 0], weight[weight_plane, 2, 1], weight[weight_plane, 2, 2]
    zero = np.float32(0.0)
    for y in range(out_h):
        even, odd = 2 * y, 2 * y + 1
        above = max(0, y - 1)  # dout row y - 1, read only when y >= 1
        for x in range(out_w):
            left = max(0, x - 1)  # dout column x - 1, read only when x >= 1
            d = dout[dout_plane, y, x]
            total = (dinput[dinput_plane, even, 2 * x] if keep else zero) + w00 * d
            if x >= 1:
                total = total + w02 * dout[dout_plane, y, left]
            if y >= 1:
                total = total + w20 * dout[dout_plane, above, x]
                if x >= 1:
                    total = total + w22 * dout[dout_plane, above, left]
            dinput[dinput_plane, even, 2 * x] = total
            total = (dinput[dinput_plane, even, 2 * x + 1] if keep else zero) + w01 * d
            if y >= 1:
                total = total + w21 * dout[dout_plane, above, x]
            dinput[dinput_plane, even, 2 * x + 1] = total
            total = (dinput[dinput_plane, odd, 2 * x] if keep else zero) + w10 * d
            if x >= 1:
                total = total + w12 * dout[dout_plane, y, left]
            dinput[dinput_plane, odd, 2 * x] = total
            dinput[dinput_plane, odd, 2 * x + 1] = (dinput[dinput_plane, odd, 2 * x + 1] if keep else zero) + w11 * d


@register_jitable(fastmath={"contract"})
def add_plane_correlation_transposed(dinput, dinput_plane, dout, dout_plane, weight, weight_plane, stride, pad_top,
                                     pad_left, keep):
    """dinput[dinput_plane] = (dinput[dinput_plane] if keep else 0) + the adjoint of add_plane_correlation.

    dinput (., H, W), dout (., Ho, Wo), weight (., 3, 3). Stride 1 is the correlation with the rotated weight, gathered.
    Stride 2: dinput[i, j] receives dout[y, x] through tap (ky, kx) when i = 2y + ky - pad_top and
    j = 2x + kx - pad_left, so an even j + pad_left takes taps kx = 0 and 2 (from x and x - 1), an odd one kx = 1
    alone: the row interior is written in (even, odd) pairs, one tap row ky at a time.
    """
    if stride == 1:
        add_plane_correlation(dinput, dinput_plane, dout, dout_plane, weight, weight_plane, 1, 2 - pad_top,
                              2 - pad_left, True, np.float32(0.0), keep)
        return
    in_h, in_w = dinput.shape[1:]
    out_h, out_w = dout.shape[1:]
    if pad_top == 0 and pad_left == 0 and in_h == 2 * out_h and in_w == 2 * out_w:
        add_halving_plane_correlation_transposed(dinput, dinput_plane, dout, dout_plane, weight, weight_plane, keep)
        return
    if not keep:
        for i in range(in_h):
            for j in range(in_w):
                dinput[dinput_plane, i, j] = 0.0
    x_low = max(1, (pad_left + 1) // 2)  # pairs (2x - pad_left, 2x + 1 - pad_left) inside the row, reading x - 1, x
    x_high = max(x_low, min(out_w, (in_w + pad_left) // 2))
    j_low, j_high = max(0, 2 * x_low - pad_left), 2 * x_high - pad_left
    previous = max(0, x_low - 1)
    for i in range(in_h):
        for ky in range(3):
            shifted = i + pad_top - ky
            if shifted % 2 != 0 or not 0 <= shifted // 2 < out_h:
                continue
            y = max(0, shifted // 2)
            w0, w1, w2 = weight[weight_plane, ky, 0], weight[weight_plane, ky, 1], weight[weight_plane, ky, 2]
            for p in range(x_high - x_low):
                j, x = j_low + 2 * p, previous + p
                dinput[dinput_plane, i, j] = (dinput[dinput_plane, i, j] + w0 * dout[dout_plane, y, x + 1]
                                              + w2 * dout[dout_plane, y, x])
                dinput[dinput_plane, i, j + 1] = dinput[dinput_plane, i, j + 1] + w1 * dout[dout_plane, y, x + 1]
            j = 0
            while j < in_w:  # the border pixels of this row
                if j == j_low and j_high > j_low:
                    j = j_high
                    continue
                total = dinput[dinput_plane, i, j]
                half = j + pad_left
                if half % 2 == 0:
                    if 0 <= half // 2 < out_w:
                        total += w0 * dout[dout_plane, y, half // 2]
                    if 0 <= half // 2 - 1 < out_w:
                        total += w2 * dout[dout_plane, y, half // 2 - 1]
                elif 0 <= (half - 1) // 2 < out_w:
                    total += w1 * dout[dout_plane, y, (half - 1) // 2]
                dinput[dinput_plane, i, j] = total
                j += 1


@register_jitable(fastmath={"reassoc"})
def plane_weight_gradient(dweight, dweight_plane, dout, dout_plane, input, in_plane, stride, pad_top, pad_left):
    """dweight[dweight_plane] (3, 3) = sum over the plane of dout[dout_plane] (Ho, Wo) times each tap's shifted
    view of input[in_plane] (H, W).

    fastmath "reassoc" (this function only) lets LLVM split the row sums over vector lanes; each row's interior is
    summed in the arrays' dtype, rows and border pixels in float64.
    """
    out_h, out_w = dout.shape[1:]
    in_h, in_w = input.shape[1:]
    x_low, x_high = interior_outputs(out_w, in_w, -pad_left, stride)
    start_x = max(0, x_low)
    first = max(0, x_low * stride - pad_left)
    for ky in range(3):
        total0, total1, total2 = 0.0, 0.0, 0.0
        for y in range(out_h):
            iy = y * stride + ky - pad_top
            if not 0 <= iy < in_h:
                continue
            row = max(0, iy)
            sum0, sum1, sum2 = np.float32(0.0), np.float32(0.0), np.float32(0.0)  # float64 if the arrays are
            if stride == 1:
                for i in range(x_high - x_low):
                    d, ix = dout[dout_plane, y, start_x + i], first + i
                    sum0 += d * input[in_plane, row, ix]
                    sum1 += d * input[in_plane, row, ix + 1]
                    sum2 += d * input[in_plane, row, ix + 2]
            else:
                for i in range(x_high - x_low):
                    d, ix = dout[dout_plane, y, start_x + i], first + 2 * i
                    sum0 += d * input[in_plane, row, ix]
                    sum1 += d * input[in_plane, row, ix + 1]
                    sum2 += d * input[in_plane, row, ix + 2]
            total0 += sum0
            total1 += sum1
            total2 += sum2
            x = 0
            while x < out_w:  # the border pixels of this row
                if x == x_low and x_high > x_low:
                    x = x_high
                    continue
                d, ix = dout[dout_plane, y, x], x * stride - pad_left
                if 0 <= ix < in_w:
                    total0 += d * input[in_plane, row, ix]
                if 0 <= ix + 1 < in_w:
                    total1 += d * input[in_plane, row, ix + 1]
                if 0 <= ix + 2 < in_w:
                    total2 += d * input[in_plane, row, ix + 2]
                x += 1
        dweight[dweight_plane, ky, 0] = total0
        dweight[dweight_plane, ky, 1] = total1
        dweight[dweight_plane, ky, 2] = total2
