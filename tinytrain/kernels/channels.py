"""Sparse-update channel helpers: compact copy of selected input channels, bias gradient of selected channels."""

from numba import njit
from numba.extending import register_jitable


def _gather_channels(out, input, channels):
    """out[j] = input[channels[j]]; out (n, P), input (C, P), channels (n,) int64. The saved compact input."""
    for j in range(channels.shape[0]):
        out[j] = input[channels[j]]


gather_channels = njit(cache=True)(_gather_channels)


@register_jitable(fastmath={"reassoc"})
def row_sum(row):
    """sum_p row[p] of a (P,) row. fastmath "reassoc" (this sum only) lets LLVM split it over vector lanes;
    the float64 accumulator keeps the reordered sum at least as accurate as a sequential float32 one."""
    total = 0.0
    for p in range(row.shape[0]):
        total += row[p]
    return total


def _bias_backward(dbias, dout, out_channels):
    """dbias[j] = sum_p dout[out_channels[j], p] (the bias is added at every pixel); dbias (n,), dout (K, P)."""
    for j in range(out_channels.shape[0]):
        dbias[j] = row_sum(dout[out_channels[j]])


bias_backward = njit(cache=True)(_bias_backward)
