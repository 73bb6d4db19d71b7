"""Arena offsets planned ahead from one step's lifetimes: greedy by size, as TinyEngine and TFLite Micro plan theirs.

First-fit at run time leaves holes: a residual stream that outlives a block stays wherever it landed while the
large expanded buffers come and go beside it. Knowing every lifetime before the step runs, the planner places the
largest tensors first, each at the lowest offset where it overlaps no tensor that is live at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import TraceEvent


@dataclass(frozen=True)
class Placement:
    offsets: dict[tuple[str, int], tuple[int, int]]  # (name, n-th allocation of it) -> (offset, reserved bytes)
    high_water_bytes: int  # highest byte any planned tensor or fixed block reaches


def reserved_bytes(nbytes: int, alignment: int) -> int:
    """The block an allocation of `nbytes` takes, as the arena rounds it."""
    return max(-(-nbytes // alignment) * alignment, alignment)


def plan_placement(trace: list[TraceEvent], alignment: int,
                   fixed: tuple[tuple[int, int], ...] = ()) -> Placement:
    """Offsets for every allocation of `trace` (one step, recorded from an arena where `fixed` (offset, reserved)
    blocks were already live and stay live). An allocation that reuses the bytes of the tensor freed just before
    (Arena.reuse) shares its offset: the two form one block, as large as the larger."""
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
    offset = np.array([-1] * len(blocks) + [offset for offset, _ in fixed], dtype=np.int64)
    placed = np.array([False] * len(blocks) + [True] * len(fixed))
    for block in np.argsort(-size[:len(blocks)], kind="stable"):
        overlapping = np.nonzero(placed & (first <= last[block]) & (last >= first[block]))[0]
        candidate = 0
        for other in overlapping[np.argsort(offset[overlapping], kind="stable")]:
            if offset[other] >= candidate + size[block]:
                break
            candidate = max(candidate, int(offset[other] + size[other]))
        offset[block] = candidate
        placed[block] = True
    offsets = {(name, occurrence): (int(offset[block]), reserved) for name, occurrence, block, reserved in members}
    return Placement(offsets, int((offset + size).max(initial=0)))
