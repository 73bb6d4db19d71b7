"""The step table: one step of one shape, planned before any data exists. Every tensor with its kind, shape, bytes,
lifetime and planned arena offset; every op with the tensors it reads and writes, its MACs and trained channels.

The engine makes it once per step shape from a rehearsal (a step on a blank image in a large first-fit arena,
traced, with its op log): the lifetimes come from the trace, the offsets from planning on those lifetimes
(placement.py), the ops from the op log (oplog.py). Every later step of that shape takes its offsets, and the
memory-plan export (memory_plan.py) writes this table out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from tinytrain.arena import Allocation, TraceEvent
from tinytrain.oplog import OpEvent
from tinytrain.placement import Placement, reserved_bytes

NOT_FREED = -1  # free_event of a tensor that outlives the step


@dataclass(frozen=True)
class TensorRecord:
    name: str  # unique in the table
    arena_name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int  # from the arena's aligned start
    first_op: int
    last_op: int  # inclusive
    alloc_event: int  # position in the step's trace
    free_event: int  # NOT_FREED if it outlives the step


@dataclass(frozen=True)
class OpRecord:
    index: int
    name: str
    type: str
    layer: str  # "" for the loss
    inputs: tuple[str, ...]  # tensor names
    outputs: tuple[str, ...]
    macs: int
    trains_weight: bool
    trains_bias: bool
    out_channels: tuple[int, ...]  # trained weight rows
    in_channels: tuple[int, ...]  # trained input channels


@dataclass(frozen=True)
class StepTable:
    alignment: int
    peak_bytes: int  # most bytes live at once
    peak_bytes_by_kind: dict[str, int]  # each kind's own peak (not necessarily at the same moment)
    high_water_bytes: int  # highest planned byte: the arena a device needs for this step
    tensors: tuple[TensorRecord, ...]  # in allocation order
    ops: tuple[OpRecord, ...]  # in execution order
    peak_op: int  # the op index where the step is fullest
    live_at_peak: tuple[Allocation, ...]  # what is live there (names and sizes; offsets are the rehearsal's)

    def offsets(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(arena name, n-th allocation of it) -> (offset, reserved bytes), as Arena.use_placement takes them."""
        occurrences: Counter[str] = Counter()
        offsets = {}
        for tensor in self.tensors:
            offsets[tensor.arena_name, occurrences[tensor.arena_name]] = (
                tensor.offset, reserved_bytes(tensor.nbytes, self.alignment))
            occurrences[tensor.arena_name] += 1
        return offsets


def step_table(trace: list[TraceEvent], op_log: list[OpEvent], placement: Placement, alignment: int,
               peak_bytes: int, peak_bytes_by_kind: dict[str, int], peak_op: int,
               live_at_peak: tuple[Allocation, ...]) -> StepTable:
    """The table of the one step that `trace` (from an arena with nothing of the step live before it) and `op_log`
    recorded, at the offsets `placement` planned for it; the peaks are those its arena measured."""
    last_op = max((event.op_index for event in op_log), default=0)
    occurrences: Counter[str] = Counter()
    tensors = []
    for tensor in tensors_from_trace(trace, last_op):
        offset, _ = placement.offsets[tensor.arena_name, occurrences[tensor.arena_name]]
        occurrences[tensor.arena_name] += 1
        tensors.append(replace(tensor, offset=offset))
    return StepTable(alignment, peak_bytes, dict(peak_bytes_by_kind), placement.high_water_bytes, tuple(tensors),
                     ops_from_log(op_log, tensors), peak_op, tuple(live_at_peak))


def ops_from_log(op_log: list[OpEvent], tensors: list[TensorRecord]) -> tuple[OpRecord, ...]:
    """The op log's ops, with tensors named as in `tensors` instead of by trace position."""
    name_of = {tensor.alloc_event: tensor.name for tensor in tensors}
    return tuple(OpRecord(event.op_index, event.name, event.op_type, event.layer,
                          tuple(name_of[position] for position in event.reads),
                          tuple(name_of[position] for position in event.writes), event.macs, event.trains_weight,
                          event.trains_bias, event.out_channels, event.in_channels) for event in op_log)


def tensors_from_trace(trace: list[TraceEvent], last_op: int) -> list[TensorRecord]:
    """Pair each alloc event with its free (by offset: a live block has one owner) into one record per allocation,
    at the offsets the trace's arena gave them."""
    open_allocations: dict[int, tuple[int, TraceEvent]] = {}  # offset -> (trace position, alloc event)
    spans: list[tuple[int, TraceEvent, int, int]] = []  # (alloc position, alloc event, free position, last op)
    previous_op = 0
    for position, event in enumerate(trace):
        if event.op_index < previous_op:
            raise ValueError(f"trace op indices fall from {previous_op} to {event.op_index} at event {position}: it "
                             "covers more than one step; call reset_peak() before the step to be exported")
        previous_op = event.op_index
        if event.action == "alloc":
            open_allocations[event.offset] = (position, event)
        elif event.offset in open_allocations:
            alloc_position, alloc = open_allocations.pop(event.offset)
            spans.append((alloc_position, alloc, position, event.op_index))
        else:
            raise ValueError(f"trace event {position} frees {event.name!r}, allocated before the trace began")
    spans += [(position, alloc, NOT_FREED, last_op) for position, alloc in open_allocations.values()]
    spans.sort(key=lambda span: span[0])
    if not spans:
        raise ValueError("the arena trace is empty: run one training step in a tracing arena first")
    repeats = Counter(alloc.name for _, alloc, _, _ in spans)
    seen: Counter[str] = Counter()
    tensors = []
    for alloc_position, alloc, free_position, free_op in spans:
        name = alloc.name
        if repeats[name] > 1:
            name = f"{alloc.name}#{seen[alloc.name]}"
            seen[alloc.name] += 1
        tensors.append(TensorRecord(name, alloc.name, alloc.kind, np.dtype(alloc.dtype).name, tuple(alloc.shape),
                                    alloc.nbytes, alloc.offset, alloc.op_index, free_op, alloc_position,
                                    free_position))
    if len({tensor.name for tensor in tensors}) != len(tensors):
        raise ValueError("tensor names collide after numbering repeated allocations; rename the engine's tensors")
    return tensors
