"""The memory timeline of one training step: live arena bytes of each kind, per op, computed from the arena trace."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import KINDS, TraceEvent
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES, StepMemory, dry_run_training_step
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, UpdatePlan, schedule_step


@dataclass(frozen=True)
class Timeline:
    """Live bytes per kind at the fullest moment of each op.

    Ops are indexed as the engine numbers them: forward layers, the loss, then backward layers in reverse. Within
    an op the column is the live set at the op's fullest moment (ties: the earliest), not a per-kind maximum, so
    the kinds of one column were live together and the stacked total never overstates: its maximum over the
    timeline is exactly the arena's whole-step peak.
    """

    op_names: list[str]  # (n_ops,) "fwd <layer>", "loss", "bwd <layer>"
    kinds: tuple[str, ...]  # (n_kinds,) the arena's allocation kinds
    bytes_by_kind: np.ndarray  # (n_kinds, n_ops) int64
    end_bytes_by_kind: np.ndarray  # (n_kinds,) int64 live when the step ends: what it leaves for the next step
    arena_bytes: int  # capacity of the arena the step ran in

    @property
    def total_bytes(self) -> np.ndarray:
        """(n_ops,) every kind together."""
        return self.bytes_by_kind.sum(axis=0)

    @property
    def peak_op_index(self) -> int:
        return int(np.argmax(self.total_bytes))

    @property
    def loss_op_index(self) -> int:
        """The boundary between forward and backward."""
        return self.op_names.index("loss")

    def bytes_of(self, kind: str) -> np.ndarray:
        """(n_ops,) live bytes of one kind."""
        return self.bytes_by_kind[self.kinds.index(kind)]


def timeline_from_trace(trace: list[TraceEvent], op_names: list[str], arena_bytes: int) -> Timeline:
    """The timeline of a trace recorded from an empty arena (a fresh Arena, or one with nothing live at reset_peak).

    Op i's candidates are the moment it starts (what the previous op left live: the op's inputs, even when its
    first event frees one of them) and the moment after each of its events. An op without events (a frozen layer
    that backward skips) keeps what the previous op left.
    """
    kind_index = {kind: index for index, kind in enumerate(KINDS)}
    n_events, n_ops = len(trace), len(op_names)
    change = np.zeros((n_events, len(KINDS)), dtype=np.int64)  # (n_events, n_kinds) bytes each event adds
    event_op = np.empty(n_events, dtype=np.int64)  # (n_events,)
    for index, event in enumerate(trace):
        change[index, kind_index[event.kind]] = event.nbytes if event.action == "alloc" else -event.nbytes
        event_op[index] = event.op_index
    if n_events and (event_op.min() < 0 or event_op.max() >= n_ops or np.any(np.diff(event_op) < 0)):
        raise ValueError(f"trace op indices must rise through [0, {n_ops}); was it recorded from one step?")
    # live[k] is the live set after the first k events; live[0] is the empty arena the trace starts from
    live = np.zeros((n_events + 1, len(KINDS)), dtype=np.int64)  # (n_events + 1, n_kinds)
    np.cumsum(change, axis=0, out=live[1:])
    if live.min() < 0:
        raise ValueError("the trace frees bytes it never allocated: it did not start from an empty arena")
    total = live.sum(axis=1)  # (n_events + 1,)
    ops = np.arange(n_ops)
    first = np.searchsorted(event_op, ops, side="left")  # (n_ops,) first event of each op
    last = np.searchsorted(event_op, ops, side="right")  # (n_ops,) one past its last event
    # moment `first` is the op's start; moments first + 1 .. last follow its events
    fullest = [start + int(np.argmax(total[start:stop + 1])) for start, stop in zip(first, last)]
    return Timeline(list(op_names), KINDS, live[fullest].T.copy(), live[-1].copy(), arena_bytes)


def measure_timeline(graph: Graph, plan: UpdatePlan, arena_bytes: int = MEASURING_ARENA_BYTES,
                     memory_schedule: MemorySchedule = LAYER_BY_LAYER) -> tuple[Timeline, StepMemory]:
    """A dry run of one step, returning its timeline and what the arena measured. A patch stage runs as one op,
    its last layer's: the ops of its other layers hold nothing of their own."""
    arena = dry_run_training_step(graph, plan, arena_bytes, memory_schedule=memory_schedule)
    op_names = schedule_step(graph, plan).op_names(graph)
    return timeline_from_trace(arena.trace, op_names, arena.capacity), StepMemory.from_arena(arena)
