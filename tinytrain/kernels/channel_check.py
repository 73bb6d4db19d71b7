"""Checks a drawn channel list without allocating: every channel in range, none repeated; or all channels in order."""

from numba import njit


def _first_invalid_channel(channels, count, seen):
    """The position of the first channel outside [0, count) or seen before it; -1 if none.

    channels (n,) int64; seen (>= count,) bool scratch, cleared here.
    """
    seen[:count] = False
    for position in range(channels.shape[0]):
        channel = channels[position]
        if channel < 0 or channel >= count or seen[channel]:
            return position
        seen[channel] = True
    return -1


first_invalid_channel = njit(cache=True)(_first_invalid_channel)


def _is_every_channel(channels, count):
    """Whether channels (n,) int64 is 0, 1, ..., count - 1."""
    if channels.shape[0] != count:
        return False
    for position in range(count):
        if channels[position] != position:
            return False
    return True


is_every_channel = njit(cache=True)(_is_every_channel)
