"""A pointwise conv added into a residual stream in place: the projection of an inverted residual block."""

from numba import njit, prange
from numba.extending import register_jitable

from tinytrain.kernels.blas import product
from tinytrain.kernels.pointwise import block_span


@register_jitable
def add_rows(residual, input, weight, bias, scratch, start, stop, first, last):
    """residual[start:stop, first:last] += weight[start:stop] @ input[:, first:last] + bias[start:stop, None], the
    product in scratch[:stop - start, first:last]."""
    product(scratch[:stop - start, first:last], weight[start:stop], input[:, first:last])
    for k in range(stop - start):
        b = bias[start + k]
        for p in range(first, last):
            residual[start + k, p] += scratch[k, p] + b


def _pointwise_residual_forward(residual, input, weight, bias, scratch, blocks):
    """residual (K, P) += weight (K, C) @ input (C, P) + bias (K,), a block of rows at a time, each in `blocks`
    blocks of pixel columns (pointwise.py: one per core when the product is large).

    scratch (R, P) holds R rows of the product, so no (K, P) output is ever live beside the residual: the block's
    output is written over its input. The same products as pointwise_forward, with the residual added afterwards.
    """
    n_out = weight.shape[0]
    n_pixels = residual.shape[1]
    rows = scratch.shape[0]
    for start in range(0, n_out, rows):
        stop = min(n_out, start + rows)
        if blocks <= 1:
            add_rows(residual, input, weight, bias, scratch, start, stop, 0, n_pixels)
            continue
        for block in prange(blocks):
            first, last = block_span(block, blocks, n_pixels)
            add_rows(residual, input, weight, bias, scratch, start, stop, first, last)


pointwise_residual_forward = njit(cache=True, parallel=True)(_pointwise_residual_forward)
