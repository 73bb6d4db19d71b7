"""Arena offsets planned ahead from one step's lifetimes: greedy by size, as TinyEngine and TFLite Micro plan theirs.

First-fit at run time leaves holes: a residual stream that outlives a block stays wherever it landed while the
large expanded buffers come and go beside it. Knowing every lifetime before the step runs, the planner places the
largest tensors first, each at the lowest offset where it overlaps no tensor that is live at the same time.

Greedy by size can still leave a hole at the fullest moment. When its offsets overflow the arena although the bytes
live at once would fit, a local search tries other placement orders (a tensor moved elsewhere in the order, or one
ending at the high water swapped with another), each placed the same greedy way, and keeps any order that does no
worse: a seeded, bounded search, so the same step always gets the same offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import TraceEvent


@dataclass(frozen=True)
class Placement:
    offsets: dict[tuple[str, int], tuple[int, int]]  # (name, n-th allocation of it) -> (offset, reserved bytes)
    high_water_bytes: int  # highest byte any planned tensor or fixed block reaches


SEARCH_ORDERS = 400  # placement orders a plan that overflows tries beyond greedy by size (a few ms each)
SEARCH_SEED = 0


def reserved_bytes(nbytes: int, alignment: int) -> int:
    """The block an allocation of `nbytes` takes, as the arena rounds it."""
    return max(-(-nbytes // alignment) * alignment, alignment)


def plan_placement(trace: list[TraceEvent], alignment: int, fixed: tuple[tuple[int, int], ...] = (),
                   capacity: int | None = None) -> Placement:
    """Offsets for every allocation of `trace` (one step, recorded from an arena where `fixed` (offset, reserved)
    blocks were already live and stay live). An allocation that reuses the bytes of the tensor freed just before
    (Arena.reuse) shares its offset: the two form one block, as large as the larger. Greedy by size, searched
    further (see the module) when its high water exceeds `capacity` bytes and the bytes live at once do not."""
    # blocks: [first event, last event, reserved]; members: (name, occurrence, block, own reserved)
    blocks: list[list[int]] = []
    members: list[tuple[str, int, int, int]] = []
    open_blocks: dict[int, int] = {}  # trace offset -> block of the live tensor there
    freed_last: dict[int, int] = {}  # trace offset -> block whose tensor was freed there last
    occurrences: dict[str, int] = {}
    for position, event in enumerate(trace):
        if event.action == "free":
            block = open_blocks.pop(event.offset)
            blocks[block][1] = position
            freed_last[event.offset] = block
            continue
        reserved = reserved_bytes(event.nbytes, alignment)
        if event.reuses:
            block = freed_last[event.offset]
            blocks[block][2] = max(blocks[block][2], reserved)
        else:
            block = len(blocks)
            blocks.append([position, len(trace), reserved])
        open_blocks[event.offset] = block
        occurrence = occurrences.get(event.name, 0)
        occurrences[event.name] = occurrence + 1
        members.append((event.name, occurrence, block, reserved))
    for block in open_blocks.values():  # outlives the step (optimizer state): live through all of it
        blocks[block][0] = 0
    first = np.array([b[0] for b in blocks] + [0] * len(fixed), dtype=np.int64)
    last = np.array([b[1] for b in blocks] + [len(trace)] * len(fixed), dtype=np.int64)
    size = np.array([b[2] for b in blocks] + [reserved for _, reserved in fixed], dtype=np.int64)
    lifetimes = _Lifetimes(first, last, size, np.array([offset for offset, _ in fixed], dtype=np.int64))
    order = np.argsort(-size[:len(blocks)], kind="stable")
    offset = lifetimes.place(order)
    if capacity is not None and lifetimes.high_water(offset) > capacity >= lifetimes.most_live():
        offset = lifetimes.search(order, offset, capacity)
    offsets = {(name, occurrence): (int(offset[block]), reserved) for name, occurrence, block, reserved in members}
    return Placement(offsets, lifetimes.high_water(offset))


class _Lifetimes:
    """The blocks of one step: their first and last events and reserved bytes, each (blocks,), the fixed blocks
    last, at their own offsets."""

    def __init__(self, first: np.ndarray, last: np.ndarray, size: np.ndarray, fixed_offsets: np.ndarray):
        self.size = size
        self.fixed_offsets = fixed_offsets
        self.planned = len(size) - len(fixed_offsets)  # blocks to place; the fixed ones follow them
        overlapping = (first[:, None] <= last[None, :]) & (last[:, None] >= first[None, :])
        np.fill_diagonal(overlapping, False)
        self.overlapping = [np.nonzero(row)[0] for row in overlapping]
        events = np.zeros(int(last.max(initial=0)) + 2, dtype=np.int64)  # bytes that start and end live per event
        np.add.at(events, first, size)
        np.add.at(events, last + 1, -size)
        self._most_live = int(np.cumsum(events).max(initial=0))

    def most_live(self) -> int:
        """The most bytes live at once: no placement needs fewer."""
        return self._most_live

    def high_water(self, offset: np.ndarray) -> int:
        return int((offset + self.size).max(initial=0))

    def place(self, order: np.ndarray) -> np.ndarray:
        """Offsets (blocks,): the blocks in `order`, each at the lowest offset where it overlaps no block placed
        before it that is live at the same time."""
        offset = np.concatenate([np.full(self.planned, -1, dtype=np.int64), self.fixed_offsets])
        placed = np.concatenate([np.zeros(self.planned, dtype=bool), np.ones(len(self.fixed_offsets), dtype=bool)])
        for block in order:
            neighbours = self.overlapping[block][placed[self.overlapping[block]]]
            candidate = 0
            for other in neighbours[np.argsort(offset[neighbours], kind="stable")]:
                if offset[other] >= candidate + self.size[block]:
                    break
                candidate = max(candidate, int(offset[other] + self.size[other]))
            offset[block] = candidate
            placed[block] = True
        return offset

    def search(self, order: np.ndarray, offset: np.ndarray, capacity: int) -> np.ndarray:
        """The offsets of the best order found from `order` (placed at `offset`) within SEARCH_ORDERS tries, stopping
        once they fit `capacity`."""
        rng = np.random.default_rng(SEARCH_SEED)
        high = self.high_water(offset)
        for attempt in range(SEARCH_ORDERS):
            if high <= capacity:
                break
            if attempt % 2:  # one block moved elsewhere in the order
                source, target = rng.integers(0, len(order), 2)
                trial = np.insert(np.delete(order, source), target, order[source])
            else:  # a block ending at the high water swapped with any other
                top = np.nonzero(offset[:self.planned] + self.size[:self.planned] == high)[0]
                block, other = top[rng.integers(len(top))], rng.integers(0, len(order))
                trial = order.copy()
                where = int(np.nonzero(order == block)[0][0])
                trial[where], trial[other] = trial[other], trial[where]
            trial_offset = self.place(trial)
            if self.high_water(trial_offset) <= high:
                order, offset, high = trial, trial_offset, self.high_water(trial_offset)
        return offset
