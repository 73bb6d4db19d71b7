"""ReLU6 applied in place on a flat (N,) view, saving its gradient as a bit mask of ceil(N/8) bytes for backward."""

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

# The mask holds 1 bit per element instead of the float32 input (32x less saved memory, as an MCU would keep it).
# Element i lives in byte i >> 3, bit i & 7 (little-endian within the byte, np.unpackbits(mask, bitorder="little")).
# The bit is 1 iff 0 < x < 6: at exactly 0 or 6 the gradient is 0, as in PyTorch (F.relu6 is hardtanh(0, 6), whose
# backward passes the gradient only where min < x < max).
# A large tensor runs in chunks of CHUNK elements across the Numba threads; a chunk is whole mask bytes, so no two
# threads write the same byte, and every element gets the same result whatever the thread count.

ZERO, SIX = np.float32(0.0), np.float32(6.0)  # float32 bounds keep the clip in float32, which vectorises
CHUNK = 1 << 15  # elements, a multiple of 8; below two chunks, one thread does it all


@register_jitable
def clip_chunk(x, mask, save_mask, first, last):
    """x[first:last] clipped in place, its mask bits written if save_mask; `first` is a multiple of 8. Indices are
    written base + i with base = max(0, first): LLVM then knows they are not negative and drops Numba's
    negative-index wraparound, which would keep the loops from vectorising (3x slower)."""
    base = max(0, first)
    count = last - base
    if save_mask:  # a first pass reads x before it is clipped
        # `&` of the two comparisons, not a chained `<` that branches on random signs; a whole byte's fixed count of 8
        # lets LLVM unroll it (the kernel runs 1.6x faster than with a branch per element)
        for byte in range(count // 8):
            bits = 0
            for bit in range(8):
                value = x[base + 8 * byte + bit]
                bits |= int((value > ZERO) & (value < SIX)) << bit
            mask[base // 8 + byte] = bits
        if count % 8:  # the last, partial byte
            byte = count // 8
            bits = 0
            for bit in range(count - 8 * byte):
                value = x[base + 8 * byte + bit]
                bits |= int((value > ZERO) & (value < SIX)) << bit
            mask[base // 8 + byte] = bits
    for i in range(count):
        x[base + i] = min(max(x[base + i], ZERO), SIX)


@register_jitable
def clip_plane(out, plane):
    """out[plane] (H, W) of out (C, H, W) clipped to [0, 6] in place: the ReLU6 that a conv fuses into its forward
    when no mask is saved, while the plane it just wrote is still in cache. The same min/max as clip_chunk, so the
    same bits."""
    for y in range(out.shape[1]):
        for x in range(out.shape[2]):
            out[plane, y, x] = min(max(out[plane, y, x], ZERO), SIX)


def _relu6_forward(x, mask, save_mask):
    """x = min(max(x, 0), 6) in place; x (N,), mask (ceil(N/8),) uint8 written if save_mask (else may be size 0)."""
    n = x.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    if chunks <= 1:
        clip_chunk(x, mask, save_mask, 0, n)
        return
    for chunk in prange(chunks):
        clip_chunk(x, mask, save_mask, chunk * CHUNK, min(n, (chunk + 1) * CHUNK))


relu6_forward = njit(cache=True, parallel=True)(_relu6_forward)


@register_jitable
def mask_chunk(dx, mask, first, last):
    """dx[first:last] kept where its mask bit is set, else 0; `first` is a multiple of 8 (indices as in
    clip_chunk)."""
    base = max(0, first)
    count = last - base
    for byte in range((count + 7) // 8):
        bits = mask[base // 8 + byte]
        for bit in range(min(8, count - 8 * byte)):
            i = base + 8 * byte + bit
            dx[i] = dx[i] if (bits >> bit) & 1 else ZERO  # a select, not a branch on random bits


def _relu6_backward(dx, mask):
    """dx_i = dx_i if bit i of mask is set else 0, in place; dx (N,), mask (ceil(N/8),) uint8."""
    n = dx.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    if chunks <= 1:
        mask_chunk(dx, mask, 0, n)
        return
    for chunk in prange(chunks):
        mask_chunk(dx, mask, chunk * CHUNK, min(n, (chunk + 1) * CHUNK))


relu6_backward = njit(cache=True, parallel=True)(_relu6_backward)
