"""Random channel subsets for the dynamic sparse update, drawn in one call without allocating.

The random numbers come from SplitMix64 seeded by (seed, key) alone, so a draw depends on nothing but the run's seed
and the step (or epoch) it is for: a resumed run draws exactly what an uninterrupted one would, on any machine.
"""

import numpy as np
from numba import njit
from numba.extending import register_jitable

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX_1, MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@register_jitable
def mix(z):
    """SplitMix64's output function: a bijection of uint64 whose output bits all depend on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * MIX_1
    z = (z ^ (z >> np.uint64(27))) * MIX_2
    return z ^ (z >> np.uint64(31))


def _draw_channels(picks, pick_starts, pools, pool_starts, seen, seed, key):
    """For each layer i, picks[pick_starts[i]:pick_starts[i + 1]] = distinct channels of its pool
    pools[pool_starts[i]:pool_starts[i + 1]], uniformly at random, in ascending order.

    picks (n,) int64; pools (m,) int64; pick_starts, pool_starts (layers + 1,) int64; seen (>= largest pool,) bool
    scratch, all False on entry and on return; seed, key uint64. Floyd's algorithm: every subset of the pool's
    positions is equally likely. A position below j + 1 is a 64-bit draw modulo j + 1: the bias is below 2^-50 for
    pools of fewer than 2^14 channels.
    """
    state = mix(mix(seed) + GOLDEN_GAMMA * (key + np.uint64(1)))
    for layer in range(pick_starts.shape[0] - 1):
        first, last = pick_starts[layer], pick_starts[layer + 1]
        pool = pools[pool_starts[layer]:pool_starts[layer + 1]]
        size = pool.shape[0]
        for j in range(size - (last - first), size):
            state += GOLDEN_GAMMA
            position = np.int64(mix(state) % np.uint64(j + 1))
            if seen[position]:
                position = j
            seen[position] = True
            picks[first + j - (size - (last - first))] = position
        for i in range(first, last):  # positions -> channels, sorted by insertion (a few dozen at most)
            seen[picks[i]] = False
            channel = pool[picks[i]]
            k = i
            while k > first and picks[k - 1] > channel:
                picks[k] = picks[k - 1]
                k -= 1
            picks[k] = channel


draw_channels = njit(cache=True)(_draw_channels)
