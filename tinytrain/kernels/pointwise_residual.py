"""A pointwise conv added into a residual stream in place: the projection of an inverted residual block."""

from numba import njit, prange

from tinytrain.kernels.blas import product
from tinytrain.kernels.pointwise import add_bias, block_span, splits_rows


def _pointwise_residual_forward(residual, input, weight, bias, blocks):
    """residual (K, P) += weight (K, C) @ input (C, P) + bias (K,), in `blocks` blocks (pointwise.py: one per core
    when the product is large).

    sgemm adds the product straight into the residual (beta = 1), so no (K, P) output is ever live beside it: the
    block's output is written over its input. The sums are those of pointwise_forward then the add, rounded in
    another order.
    """
    n_out, n_pixels = residual.shape
    if blocks <= 1:
        product(residual, weight, input, True)
        add_bias(residual, bias, 0, n_pixels, False)
        return
    by_rows = splits_rows(blocks, n_out)
    for block in prange(blocks):
        if by_rows:
            first, last = block_span(block, blocks, n_out)
            product(residual[first:last], weight[first:last], input, True)
            add_bias(residual[first:last], bias[first:last], 0, n_pixels, False)
        else:
            first, last = block_span(block, blocks, n_pixels)
            product(residual[:, first:last], weight, input[:, first:last], True)
            add_bias(residual, bias, first, last, False)


pointwise_residual_forward = njit(cache=True, parallel=True)(_pointwise_residual_forward)
