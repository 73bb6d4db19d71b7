"""What each op of a step read and wrote, recorded by the engine as it runs; the step table is made from it.

Tensors are named by the position of their allocation in the arena's trace, so an op's inputs and outputs are
exactly the arena blocks it touched: nothing is rebuilt from naming conventions. Ops are numbered by their place
in the log, and each keeps the stretch of the trace it ran over, so which ops a tensor lived through follows from
where its allocation and free fall in the trace (step_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import Arena


@dataclass(frozen=True)
class OpEvent:
    start: int  # trace length when the op began: its own allocations and frees are trace[start:end]
    end: int  # trace length when it was recorded
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


class ArenaCorruption(AssertionError):
    """An op wrote arena bytes outside the tensors it allocated or names as written (checked mode)."""


SENTINEL = 0xA5  # what checked mode fills the arena with: a float32 of 0xA5A5A5A5 is -2.9e-16, no value a step makes


class OpLog:
    """Collects the OpEvents of a traced arena's step.

    `checked`: the arena is filled with SENTINEL bytes first, and every op is verified to have changed only bytes of
    the tensors it allocated or wrote; `verify_high_water()` then checks that no byte above the arena's measured
    high water was ever touched. A host copy of the arena is taken per op, so this is for dry runs and tests.
    """

    def __init__(self, arena: Arena, checked: bool = False):
        if not arena.tracing:
            raise ValueError("an op log needs a tracing arena: tensors are named by their trace position")
        self.arena = arena
        self._earlier_blocks = {allocation.offset for allocation in arena.live()}  # live before the step began
        self.events: list[OpEvent] = []
        self.checked = checked
        self._before: np.ndarray | None = None  # (capacity,) uint8 host copy of the arena when the op started
        if checked:
            if arena.live():
                raise ValueError("checked mode needs an empty arena: it overwrites every byte with the sentinel")
            arena.buffer.fill(SENTINEL)

    def start(self) -> int:
        """Mark the start of an op: what it allocates from now on is its output."""
        if self.checked:
            self._before = self.arena.buffer.copy()
        return len(self.arena.trace)

    def ids(self, *views: np.ndarray) -> tuple[int, ...]:
        """The trace positions of the views' allocations. Blocks that were live when the log began (the optimizer
        state of earlier steps) are not the step's own and are left out; any other view must be traced."""
        positions = []
        for view in views:
            position = self.arena.trace_position_of(view)
            if position is None:
                if self.arena.offset_of(view) not in self._earlier_blocks:
                    raise ValueError("an op touched an arena block that is neither the step's own nor live from "
                                     "before it")
                continue
            positions.append(position)
        return tuple(positions)

    def record(self, start: int, name: str, op_type: str, layer: str, reads: tuple[int, ...], macs: int = 0,
               update=None, selects_input_by_output: bool = False, written: tuple[int, ...] = ()) -> None:
        allocated = tuple(position for position in range(start, len(self.arena.trace))
                          if self.arena.trace[position].action == "alloc")
        trains_weight = update is not None and update.trains_weight
        rows = tuple(int(c) for c in update.out_channels) if trains_weight else ()
        columns = rows if selects_input_by_output else (tuple(int(c) for c in update.in_channels)
                                                        if trains_weight else ())
        event = OpEvent(start, len(self.arena.trace), name, op_type, layer, tuple(dict.fromkeys(reads)),
                        tuple(dict.fromkeys(allocated + written)), int(macs), rows, columns, trains_weight,
                        update is not None and update.bias)
        if self.checked:
            self._verify(event)
        self.events.append(event)

    def _verify(self, event: OpEvent) -> None:
        changed = np.flatnonzero(self.arena.buffer != self._before) - self.arena.usable_offset  # trace offsets
        allowed = np.zeros(self.arena.capacity, dtype=bool)
        for position in event.writes:
            tensor = self.arena.trace[position]
            allowed[tensor.offset:tensor.offset + tensor.nbytes] = True
        stray = changed[~allowed[changed]]
        if len(stray):
            victims = sorted({a.name for a in self.arena.live() for byte in stray[:64]
                              if a.offset - self.arena.usable_offset <= byte < a.offset - self.arena.usable_offset
                              + a.nbytes})
            raise ArenaCorruption(f"op {event.name!r} changed {len(stray):,} arena bytes outside its outputs, first "
                                  f"at offset {int(stray[0]):,}; live tensors there: {victims or 'none'}")

    def verify_high_water(self) -> None:
        """No byte above the measured high water was touched: the arena's figure is what the data occupied."""
        start = self.arena.usable_offset + self.arena.high_water_bytes
        touched = np.flatnonzero(self.arena.buffer[start:] != SENTINEL)
        if len(touched):
            raise ArenaCorruption(f"arena bytes above the measured high water ({self.arena.high_water_bytes:,} B) "
                                  f"were written, up to {self.arena.high_water_bytes + int(touched[-1]) + 1:,} B")
