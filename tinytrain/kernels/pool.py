"""Global average pool over the P = H*W pixels of a (C, P) view: forward and input gradient."""

from numba import njit


def _global_avg_pool_forward(out, input):
    """out[c] = sum_p input[c, p] / P; out (C,), input (C, P)."""
    n_channels, n_pixels = input.shape
    for c in range(n_channels):
        total = 0.0  # float64 accumulator
        for p in range(n_pixels):
            total += input[c, p]
        out[c] = total / n_pixels


global_avg_pool_forward = njit(cache=True)(_global_avg_pool_forward)


def _global_avg_pool_backward(dinput, dout, accumulate):
    """dinput[c, p] (= or +=) dout[c] / P, since every pixel weighs 1/P in the mean; dinput (C, P), dout (C,)."""
    n_channels, n_pixels = dinput.shape
    for c in range(n_channels):
        share = dout[c] / n_pixels
        if not accumulate:
            dinput[c] = 0.0
        for p in range(n_pixels):  # explicit: Numba's `dinput[c] += share` would allocate a temporary row
            dinput[c, p] += share


global_avg_pool_backward = njit(cache=True)(_global_avg_pool_backward)
