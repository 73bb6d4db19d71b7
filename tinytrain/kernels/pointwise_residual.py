"""A pointwise conv added into a residual stream in place: the projection of an inverted residual block."""

import numpy as np
from numba import njit


def _pointwise_residual_forward(residual, input, weight, bias, scratch):
    """residual (K, P) += weight (K, C) @ input (C, P) + bias (K,), a block of rows at a time.

    scratch (R, P) holds R rows of the product, so no (K, P) output is ever live beside the residual: the block's
    output is written over its input. Same products as pointwise_forward, with the residual added afterwards.
    """
    n_out = weight.shape[0]
    rows = scratch.shape[0]
    for start in range(0, n_out, rows):
        stop = min(n_out, start + rows)
        block = scratch[:stop - start]
        np.dot(weight[start:stop], input, out=block)
        for k in range(stop - start):
            b = bias[start + k]
            row = residual[start + k]
            product = block[k]
            for p in range(row.shape[0]):
                row[p] += product[p] + b


pointwise_residual_forward = njit(cache=True)(_pointwise_residual_forward)
