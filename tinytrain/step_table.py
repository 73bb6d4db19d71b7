"""The step table: one step of one shape, planned before any data exists. Every tensor with its kind, shape, bytes,
lifetime and planned arena offset; every op with the tensors it reads and writes, its MACs and trained channels.

The engine makes it once per step shape from a rehearsal (a step on a blank image in a large first-fit arena,
traced, with its op log): the tensors and their lifetimes come from the trace, the offsets from planning on those
lifetimes (placement.py), the ops from the op log (oplog.py). Ops are numbered in the order they ran; a tensor's
first and last ops are those it lived through. Every later step of that shape takes its offsets, and the memory
figures, the timeline (timeline.py) and the memory-plan export (memory_plan.py) all read this table.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from tinytrain.arena import KINDS, Arena, TraceEvent
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
    first_op: int  # the first op it lived through: the one that allocated it, or the next if it was allocated between
    last_op: int  # inclusive: the one that freed it, or the one before if freed between; the last if never freed
    alloc_event: int  # position in the step's trace
    free_event: int  # NOT_FREED if it outlives the step


@dataclass(frozen=True)
class OpRecord:
    index: int  # its place in execution order
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
    """One step of one shape. Its memory figures are read off its tensors: the step's own, so blocks live from
    before it (the optimizer state of earlier steps) are not counted."""

    alignment: int
    high_water_bytes: int  # highest planned byte: the arena a device needs for this step
    tensors: tuple[TensorRecord, ...]  # in allocation order
    ops: tuple[OpRecord, ...]  # in execution order

    def offsets(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(arena name, n-th allocation of it) -> (offset, reserved bytes), as Arena.use_placement takes them."""
        occurrences: Counter[str] = Counter()
        offsets = {}
        for tensor in self.tensors:
            offsets[tensor.arena_name, occurrences[tensor.arena_name]] = (
                tensor.offset, reserved_bytes(tensor.nbytes, self.alignment))
            occurrences[tensor.arena_name] += 1
        return offsets

    @property
    def event_count(self) -> int:
        """Allocations and frees in the step's trace."""
        return sum(1 + (tensor.free_event != NOT_FREED) for tensor in self.tensors)

    @cached_property
    def event_ops(self) -> np.ndarray:
        """(n_events,) the op each allocation and free of the trace falls in, by the tensors' first and last ops."""
        event_ops = np.empty(self.event_count, dtype=np.int64)
        for tensor in self.tensors:
            event_ops[tensor.alloc_event] = tensor.first_op
            if tensor.free_event != NOT_FREED:
                event_ops[tensor.free_event] = tensor.last_op
        return event_ops

    @cached_property
    def live_bytes_by_kind(self) -> np.ndarray:
        """(n_events + 1, n_kinds) int64: the bytes of each kind live after the step's first n allocations and
        frees; row 0 is the step's start."""
        n_events = self.event_count
        change = np.zeros((n_events, len(KINDS)), dtype=np.int64)  # (n_events, n_kinds) bytes each event adds
        for tensor in self.tensors:
            kind = KINDS.index(tensor.kind)
            change[tensor.alloc_event, kind] = tensor.nbytes
            if tensor.free_event != NOT_FREED:
                change[tensor.free_event, kind] = -tensor.nbytes
        live = np.zeros((n_events + 1, len(KINDS)), dtype=np.int64)
        np.cumsum(change, axis=0, out=live[1:])
        return live

    @cached_property
    def _peak_moment(self) -> int:
        """How many events have happened when the step is first fullest."""
        return int(np.argmax(self.live_bytes_by_kind.sum(axis=1)))

    @property
    def peak_bytes(self) -> int:
        """Most bytes live at once."""
        return int(self.live_bytes_by_kind[self._peak_moment].sum())

    @property
    def peak_bytes_by_kind(self) -> dict[str, int]:
        """Each kind's own peak (not necessarily at the same moment)."""
        return {kind: int(peak) for kind, peak in zip(KINDS, self.live_bytes_by_kind.max(axis=0))}

    @property
    def peak_op(self) -> int:
        """The op in which the step first becomes fullest."""
        return int(self.event_ops[self._peak_moment - 1]) if self._peak_moment else 0

    @property
    def live_at_peak(self) -> tuple[TensorRecord, ...]:
        moment = self._peak_moment
        return tuple(tensor for tensor in self.tensors if tensor.alloc_event < moment
                     and (tensor.free_event == NOT_FREED or tensor.free_event >= moment))


def step_table(trace: list[TraceEvent], op_log: list[OpEvent], placement: Placement, alignment: int) -> StepTable:
    """The table of the one step that `trace` (from an arena with nothing of the step live before it) and `op_log`
    recorded, at the offsets `placement` planned for it."""
    occurrences: Counter[str] = Counter()
    tensors = []
    for tensor in tensors_from_trace(trace, op_log):
        offset, _ = placement.offsets[tensor.arena_name, occurrences[tensor.arena_name]]
        occurrences[tensor.arena_name] += 1
        tensors.append(replace(tensor, offset=offset))
    return StepTable(alignment, placement.high_water_bytes, tuple(tensors), ops_from_log(op_log, tensors))


def check_measured(table: StepTable, arena: Arena, op_log: list[OpEvent]) -> None:
    """A step run at the table's offsets in `arena`, traced from empty with `op_log`, must have measured the table's
    peaks and high water and traced its tensors and ops; AssertionError naming what differs otherwise."""
    tensors = tensors_from_trace(arena.trace, op_log)
    measured = {"peak_bytes": arena.peak_bytes, "peak_bytes_by_kind": arena.peak_bytes_by_kind,
                "high_water_bytes": arena.high_water_bytes, "tensors": tuple(tensors),
                "ops": ops_from_log(op_log, tensors)}
    for what, value in measured.items():
        if getattr(table, what) != value:
            raise AssertionError(f"the step measured in the arena differs from its step table in {what}")


def ops_from_log(op_log: list[OpEvent], tensors: list[TensorRecord]) -> tuple[OpRecord, ...]:
    """The op log's ops, numbered in order, with tensors named as in `tensors` instead of by trace position."""
    name_of = {tensor.alloc_event: tensor.name for tensor in tensors}
    return tuple(OpRecord(index, event.name, event.op_type, event.layer,
                          tuple(name_of[position] for position in event.reads),
                          tuple(name_of[position] for position in event.writes), event.macs, event.trains_weight,
                          event.trains_bias, event.out_channels, event.in_channels)
                 for index, event in enumerate(op_log))


def tensors_from_trace(trace: list[TraceEvent], op_log: list[OpEvent]) -> list[TensorRecord]:
    """Pair each alloc event with its free (by offset: a live block has one owner) into one record per allocation,
    at the offsets the trace's arena gave them, living through the ops of `op_log` its events fall in or between."""
    starts, ends = [event.start for event in op_log], [event.end for event in op_log]
    if not op_log or any(start < end for start, end in zip(starts[1:], ends)):
        raise ValueError("the op log is empty or its ops overlap in the trace: record one step's ops in order")
    open_allocations: dict[int, tuple[int, TraceEvent]] = {}  # offset -> (trace position, alloc event)
    spans: list[tuple[int, TraceEvent, int]] = []  # (alloc position, alloc event, free position)
    for position, event in enumerate(trace):
        if event.action == "alloc":
            open_allocations[event.offset] = (position, event)
        elif event.offset in open_allocations:
            alloc_position, alloc = open_allocations.pop(event.offset)
            spans.append((alloc_position, alloc, position))
        else:
            raise ValueError(f"trace event {position} frees {event.name!r}, allocated before the trace began")
    spans += [(position, alloc, NOT_FREED) for position, alloc in open_allocations.values()]
    spans.sort(key=lambda span: span[0])
    if not spans:
        raise ValueError("the arena trace is empty: run one training step in a tracing arena first")
    if spans[-1][0] >= ends[-1] or min((free for _, _, free in spans if free != NOT_FREED), default=0) < starts[0]:
        raise ValueError("the trace holds allocations after the op log's last op or frees before its first")
    repeats = Counter(alloc.name for _, alloc, _ in spans)
    seen: Counter[str] = Counter()
    tensors = []
    for alloc_position, alloc, free_position in spans:
        name = alloc.name
        if repeats[name] > 1:
            name = f"{alloc.name}#{seen[alloc.name]}"
            seen[alloc.name] += 1
        # first op: the first to end after the allocation; last op: the last to start before the free
        first_op = bisect_right(ends, alloc_position)
        last_op = len(op_log) - 1 if free_position == NOT_FREED else bisect_right(starts, free_position) - 1
        if last_op < first_op:
            raise ValueError(f"{alloc.name!r} is allocated and freed between two ops: no op of the log ran on it")
        tensors.append(TensorRecord(name, alloc.name, alloc.kind, np.dtype(alloc.dtype).name, tuple(alloc.shape),
                                    alloc.nbytes, alloc.offset, first_op, last_op, alloc_position, free_position))
    if len({tensor.name for tensor in tensors}) != len(tensors):
        raise ValueError("tensor names collide after numbering repeated allocations; rename the engine's tensors")
    return tensors
