"""The two passes of a separable uint8 image resize in Pillow's fixed-point arithmetic (data/augment.py builds the
taps): output pixel i = (sum over taps t of coefficients[t, i] * input pixel indices[t, i] + 2**21) >> 22.

The weights are non-negative and sum to 2**22 within a few units, so a sum stays below 2**30 (int32, as Pillow's
accumulators) and no clipping is needed.
"""

from numba import njit

PRECISION_BITS = 22  # Pillow's coefficients carry 22 fractional bits (libImaging/Resample.c)


def _resample_rows(out, image, indices, coefficients, total):
    """out (h, N) uint8 = image (H, N) uint8 resampled along H, whole rows at a time; total (N,) int32 scratch."""
    for y in range(out.shape[0]):
        total[:] = 1 << (PRECISION_BITS - 1)
        for t in range(indices.shape[0]):
            weight = coefficients[t, y]
            row = image[indices[t, y]]
            for j in range(total.shape[0]):
                total[j] += weight * row[j]
        for j in range(total.shape[0]):
            out[y, j] = total[j] >> PRECISION_BITS


resample_rows = njit(cache=True)(_resample_rows)


def _resample_columns(out, image, indices, coefficients, total):
    """out (H, w, C) uint8 = image (H, W, C) uint8 resampled along W; total (w, C) int32 scratch."""
    for y in range(out.shape[0]):
        total[:] = 1 << (PRECISION_BITS - 1)
        for t in range(indices.shape[0]):
            for x in range(out.shape[1]):
                weight = coefficients[t, x]
                pixel = image[y, indices[t, x]]
                for c in range(out.shape[2]):
                    total[x, c] += weight * pixel[c]
        for x in range(out.shape[1]):
            for c in range(out.shape[2]):
                out[y, x, c] = total[x, c] >> PRECISION_BITS


resample_columns = njit(cache=True)(_resample_columns)
