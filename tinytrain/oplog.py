"""What each op of a step read and wrote, recorded by the engine as it runs; the memory plan export reads it.

Tensors are named by the position of their allocation in the arena's trace, so an op's inputs and outputs are
exactly the arena blocks it touched: nothing is rebuilt from naming conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import Arena


@dataclass(frozen=True)
class OpEvent:
    op_index: int  # the engine's op index: forward of layer i at i, the loss at L, backward of layer i at 2L - i
    name: str  # "fwd <layer>", "loss", "bwd <layer>"; the ops of a patch stage add " tile <k>"
    op_type: str
    layer: str  # "" for the loss
    reads: tuple[int, ...]  # trace positions of the allocations of the tensors it read
    writes: tuple[int, ...]  # ... of those it allocated, or wrote into that were there before
    macs: int
    out_channels: tuple[int, ...]  # trained weight rows
    in_channels: tuple[int, ...]  # trained input channels (depthwise: the rows)
    trains_weight: bool
    trains_bias: bool


class OpLog:
    """Collects the OpEvents of a traced arena's step."""

    def __init__(self, arena: Arena):
        if not arena.tracing:
            raise ValueError("an op log needs a tracing arena: tensors are named by their trace position")
        self.arena = arena
        self.events: list[OpEvent] = []

    def start(self) -> int:
        """Mark the start of an op: what it allocates from now on is its output."""
        return len(self.arena.trace)

    def ids(self, *views: np.ndarray) -> tuple[int, ...]:
        return tuple(self.arena.trace_position_of(view) for view in views)

    def record(self, start: int, name: str, op_type: str, layer: str, reads: tuple[int, ...], macs: int = 0,
               update=None, selects_input_by_output: bool = False, written: tuple[int, ...] = ()) -> None:
        allocated = tuple(position for position in range(start, len(self.arena.trace))
                          if self.arena.trace[position].action == "alloc")
        trains_weight = update is not None and update.trains_weight
        rows = tuple(int(c) for c in update.out_channels) if trains_weight else ()
        columns = rows if selects_input_by_output else (tuple(int(c) for c in update.in_channels)
                                                        if trains_weight else ())
        self.events.append(OpEvent(self.arena.op_index, name, op_type, layer, tuple(dict.fromkeys(reads)),
                                   tuple(dict.fromkeys(allocated + written)), int(macs), rows, columns,
                                   trains_weight, update is not None and update.bias))
