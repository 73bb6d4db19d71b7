"""ReLU6 applied in place on a flat (N,) view, saving its gradient as a bit mask of ceil(N/8) bytes for backward."""

import numpy as np
from numba import njit

# The mask holds 1 bit per element instead of the float32 input (32x less saved memory, as an MCU would keep it).
# Element i lives in byte i >> 3, bit i & 7 (little-endian within the byte, np.unpackbits(mask, bitorder="little")).
# The bit is 1 iff 0 < x < 6: at exactly 0 or 6 the gradient is 0, as in PyTorch (F.relu6 is hardtanh(0, 6), whose
# backward passes the gradient only where min < x < max).

ZERO, SIX = np.float32(0.0), np.float32(6.0)  # float32 bounds keep the clip in float32, which vectorises


def _relu6_forward(x, mask, save_mask):
    """x = min(max(x, 0), 6) in place; x (N,), mask (ceil(N/8),) uint8 written if save_mask (else may be size 0)."""
    n = x.shape[0]
    if save_mask:  # a first pass reads x before it is clipped
        # `&` of the two comparisons, not a chained `<` that branches on random signs; a whole byte's fixed count of 8
        # lets LLVM unroll it (the kernel runs 1.6x faster than with a branch per element)
        for byte in range(n // 8):
            bits = 0
            for bit in range(8):
                value = x[8 * byte + bit]
                bits |= int((value > ZERO) & (value < SIX)) << bit
            mask[byte] = bits
        for byte in range(n // 8, mask.shape[0]):  # the last, partial byte
            bits = 0
            for bit in range(n - 8 * byte):
                value = x[8 * byte + bit]
                bits |= int((value > ZERO) & (value < SIX)) << bit
            mask[byte] = bits
    for i in range(n):
        x[i] = min(max(x[i], ZERO), SIX)


relu6_forward = njit(cache=True)(_relu6_forward)


def _relu6_backward(dx, mask):
    """dx_i = dx_i if bit i of mask is set else 0, in place; dx (N,), mask (ceil(N/8),) uint8."""
    n = dx.shape[0]
    for byte in range(mask.shape[0]):
        bits = mask[byte]
        for bit in range(min(8, n - 8 * byte)):
            i = 8 * byte + bit
            dx[i] = dx[i] if (bits >> bit) & 1 else ZERO  # a select, not a branch on random bits


relu6_backward = njit(cache=True)(_relu6_backward)
