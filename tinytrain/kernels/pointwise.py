"""Pointwise (1 x 1) convolution as matrix products over the P = H*W pixels of (C, P) views: forward and gradients."""

import numba
import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from tinytrain.kernels.blas import product, transposed_product
from tinytrain.kernels.relu6 import SIX, ZERO

# The forward and input-gradient products run through blas.py (sgemm on row-major views, or a pass over the weight's
# rows for a single pixel); the weight gradient through np.dot(a, b, out), which in a Numba kernel calls sgemm and
# writes straight into `out` without allocating, provided every operand has a C or F layout (input_selected.T is F and
# only flips a BLAS flag). Callers pass C-contiguous arena views of the planned shapes.
# BLAS runs one thread (tinytrain/__init__.py), so a large product is split into `blocks` blocks, one per Numba thread,
# each its own product: blocks of output rows when there are enough of them (the late layers: many channels, few
# pixels), else blocks of pixel columns (the early layers). sgemm may round a block's sums differently from the
# whole product's (it picks its kernels by size), so the blocks follow from the shape and the machine's cores alone
# (Numba's default thread count), never from NUMBA_NUM_THREADS: a run gives the same bits on one thread as on all.
# Blocks start at multiples of ALIGNMENT, whole register tiles of sgemm. The caller chooses `blocks`
# (parallel_blocks): a kernel that asked for the machine's cores could not be cached.
PARALLEL_MACS = 1 << 18  # smaller products stay on one thread: waking the others costs a few microseconds
ALIGNMENT = 48  # a multiple of either side of an sgemm register tile (4, 6, 8, 12 or 16 in OpenBLAS x86-64 kernels)


def parallel_blocks(macs: int, rows: int, columns: int) -> int:
    """How many blocks a product of `macs` multiply-adds into a (rows, columns) output runs in: one per core of the
    machine if it is large enough and one of its sides has that many ALIGNMENT-sized groups, else 1. A single column
    (one pixel) is one pass over the weight's rows (blas.py), and in blocks the input gradient's pass would read a
    block of the weight's columns, a view Numba cannot prove contiguous, so it would not vectorise."""
    if macs < PARALLEL_MACS or columns == 1:
        return 1
    return max(1, min(numba.config.NUMBA_DEFAULT_NUM_THREADS, max(rows, columns) // ALIGNMENT))


@register_jitable
def block_span(block, blocks, size):
    """[first, last) of block `block` of `blocks` along a side of `size`: whole groups of ALIGNMENT, shared evenly."""
    groups = (size + ALIGNMENT - 1) // ALIGNMENT
    return (block * groups // blocks) * ALIGNMENT, min(size, ((block + 1) * groups // blocks) * ALIGNMENT)


@register_jitable
def splits_rows(blocks, rows):
    """Whether `blocks` blocks of a product with `rows` output rows split the rows (else the columns)."""
    return rows // ALIGNMENT >= blocks


@register_jitable
def add_bias(out, bias, first, last, clip):
    """out[:, first:last] += bias[:, None], then clipped to [0, 6] if `clip` (a fused ReLU6, relu6.py's min/max)."""
    for k in range(out.shape[0]):
        if clip:
            for p in range(first, last):  # explicit: Numba's `out[k] += bias[k]` would allocate a temporary row
                out[k, p] = min(max(out[k, p] + bias[k], ZERO), SIX)
        else:
            for p in range(first, last):
                out[k, p] += bias[k]


def _pointwise_forward(out, input, weight, bias, blocks, clip):
    """out = weight @ input + bias[:, None], clipped to [0, 6] if `clip` (a fused ReLU6); out (K, P), input (C, P),
    weight (K, C), bias (K,); in `blocks` blocks."""
    n_out, n_pixels = out.shape
    if blocks <= 1:
        product(out, weight, input, False)
        add_bias(out, bias, 0, n_pixels, clip)
        return
    by_rows = splits_rows(blocks, n_out)
    for block in prange(blocks):
        if by_rows:
            first, last = block_span(block, blocks, n_out)
            product(out[first:last], weight[first:last], input, False)
            add_bias(out[first:last], bias[first:last], 0, n_pixels, clip)
        else:
            first, last = block_span(block, blocks, n_pixels)
            product(out[:, first:last], weight, input[:, first:last], False)
            add_bias(out, bias, first, last, clip)


pointwise_forward = njit(cache=True, parallel=True)(_pointwise_forward)


def _pointwise_backward_input(dinput, dout, weight, accumulate, blocks):
    """dinput (= or +=) weight.T @ dout; dinput (C, P), dout (K, P), weight (K, C); in `blocks` blocks. A block of
    dinput's rows reads a block of weight's columns, a strided view that sgemm takes as it is (blas.py)."""
    n_in, n_pixels = dinput.shape
    if blocks <= 1:
        transposed_product(dinput, weight, dout, accumulate)
        return
    by_rows = splits_rows(blocks, n_in)
    for block in prange(blocks):
        if by_rows:
            first, last = block_span(block, blocks, n_in)
            transposed_product(dinput[first:last], weight[:, first:last], dout, accumulate)
        else:
            first, last = block_span(block, blocks, n_pixels)
            transposed_product(dinput[:, first:last], weight, dout[:, first:last], accumulate)


pointwise_backward_input = njit(cache=True, parallel=True)(_pointwise_backward_input)


def _pointwise_backward_weight(dweight, dout, input_selected, out_channels):
    """dweight = dout[out_channels] @ input_selected.T; dweight (n_out, n_in), dout (K, P), input_selected (n_in, P).

    Gathering dout[out_channels] would need scratch, but a run of consecutive channels start, start+1, ... is a
    contiguous block of dout rows that BLAS reads in place: one sgemm per run (dense: a single sgemm).
    """
    n_selected = out_channels.shape[0]
    first = 0
    while first < n_selected:
        last = first + 1  # the run is out_channels[first:last]
        while last < n_selected and out_channels[last] == out_channels[last - 1] + 1:
            last += 1
        start = out_channels[first]
        np.dot(dout[start:start + last - first], input_selected.T, dweight[first:last])
        first = last


pointwise_backward_weight = njit(cache=True)(_pointwise_backward_weight)
