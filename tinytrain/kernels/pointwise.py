"""Pointwise (1 x 1) convolution as matrix products over the P = H*W pixels of (C, P) views: forward and gradients."""

import numpy as np
from numba import njit

from tinytrain.kernels.blas import add_transposed_product

# np.dot(a, b, out) in a Numba kernel calls BLAS sgemm and writes straight into `out` without allocating, provided
# every operand has a C or F layout (a transposed view such as weight.T is F and only flips a BLAS flag; an arbitrary
# strided view would be copied first). Callers pass C-contiguous arena views.


def _pointwise_forward(out, input, weight, bias):
    """out = weight @ input + bias[:, None]; out (K, P), input (C, P), weight (K, C), bias (K,)."""
    np.dot(weight, input, out)
    n_out, n_pixels = out.shape
    for k in range(n_out):
        for p in range(n_pixels):  # explicit: Numba's `out[k] += bias[k]` would allocate a temporary row
            out[k, p] += bias[k]


pointwise_forward = njit(cache=True)(_pointwise_forward)


def _pointwise_backward_input(dinput, dout, weight, accumulate):
    """dinput (= or +=) weight.T @ dout; dinput (C, P), dout (K, P), weight (K, C).

    np.dot always overwrites its output (BLAS beta = 0) and adding its result would need scratch, so accumulating
    calls sgemm with beta = 1 itself (blas.py).
    """
    if accumulate:
        add_transposed_product(dinput, weight, dout)
    else:
        np.dot(weight.T, dout, dinput)


pointwise_backward_input = njit(cache=True)(_pointwise_backward_input)


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
