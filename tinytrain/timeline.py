"""The memory timeline of one training step: live arena bytes of each kind, layer by layer, read from its step table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import KINDS
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES, StepMemory, measured_step_table
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, UpdatePlan
from tinytrain.step_table import OpRecord, StepTable


@dataclass(frozen=True)
class Timeline:
    """Live bytes per kind at the fullest moment of each op of the timeline.

    The timeline's ops are the graph's layers forward, the loss, then the layers backward in reverse
    (`timeline_op_names`); each op of the step table counts under one of them (`timeline_ops`). Within an op the
    column is the live set at the op's fullest moment (ties: the earliest), not a per-kind maximum, so the kinds of
    one column were live together and the stacked total never overstates: its maximum over the timeline is exactly
    the step's whole-step peak.
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


def timeline_op_names(graph: Graph) -> list[str]:
    """The timeline's ops: forward layers, the loss, then backward layers in reverse."""
    forward = [f"fwd {layer.name}" for layer in graph.layers]
    backward = [f"bwd {layer.name}" for layer in reversed(graph.layers)]
    return forward + ["loss"] + backward


def timeline_ops(ops: tuple[OpRecord, ...], graph: Graph, memory_schedule: MemorySchedule) -> list[int]:
    """The timeline op each op of a training step's table counts under: its layer's, forward before the loss and
    backward after it. The ops of a patch stage all count under its last layer, the first whose output is whole.
    An op that only moves data counts under the one it serves: the step's input load under the first, a tile's
    load under the op after it (the tile's first layer), a tile's copy under the op before it (its last layer)."""
    count = len(graph.layers)
    layer_index = {layer.name: index for index, layer in enumerate(graph.layers)}
    counted_under = list(range(count))  # layer -> the timeline op its forward counts under
    first = 0
    for spec in memory_schedule.patches:
        counted_under[first:spec.end_layer] = [spec.end_layer - 1] * (spec.end_layer - first)
        first = spec.end_layer
    loss = next((index for index, op in enumerate(ops) if op.type == "loss"), None)
    if loss is None:
        raise ValueError("the step table has no loss op: a timeline is drawn for a training step")
    columns: list[int | None] = []
    for index, op in enumerate(ops):
        if index == loss:
            columns.append(count)
        elif index > loss:
            columns.append(2 * count - layer_index[op.layer])
        else:
            columns.append(counted_under[layer_index[op.layer]] if op.layer else None)  # None: data moves only
    for index, op in enumerate(ops[:loss]):
        if columns[index] is None:
            if index == 0:
                columns[index] = 0
            else:
                columns[index] = columns[index + 1] if op.type == "load" else columns[index - 1]
    return columns


def timeline_from_table(table: StepTable, op_names: list[str], timeline_op_of: list[int],
                        arena_bytes: int) -> Timeline:
    """The timeline of a step table whose op i counts under timeline op `timeline_op_of[i]` of `op_names`.

    Op i's candidates are the moment it starts (what the previous op left live: the op's inputs, even when its
    first event frees one of them) and the moment after each of its events. An op without events (a frozen layer
    that backward skips) keeps what the previous op left.
    """
    live = table.live_bytes_by_kind  # (n_events + 1, n_kinds); row 0 is the step's start
    event_op = np.asarray(timeline_op_of, dtype=np.int64)[table.event_ops]  # (n_events,)
    n_ops = len(op_names)
    if len(event_op) and (event_op.min() < 0 or event_op.max() >= n_ops or np.any(np.diff(event_op) < 0)):
        raise ValueError(f"the step's events must fall in timeline ops that rise through [0, {n_ops})")
    total = live.sum(axis=1)  # (n_events + 1,)
    ops = np.arange(n_ops)
    first = np.searchsorted(event_op, ops, side="left")  # (n_ops,) first event of each op
    last = np.searchsorted(event_op, ops, side="right")  # (n_ops,) one past its last event
    # moment `first` is the op's start; moments first + 1 .. last follow its events
    fullest = [start + int(np.argmax(total[start:stop + 1])) for start, stop in zip(first, last)]
    return Timeline(list(op_names), KINDS, live[fullest].T.copy(), live[-1].copy(), arena_bytes)


def measure_timeline(graph: Graph, plan: UpdatePlan, arena_bytes: int = MEASURING_ARENA_BYTES,
                     memory_schedule: MemorySchedule = LAYER_BY_LAYER) -> tuple[Timeline, StepMemory]:
    """The timeline of one step's table, checked against a dry run of it, and the memory it measured."""
    table = measured_step_table(graph, plan, arena_bytes, memory_schedule=memory_schedule)
    timeline = timeline_from_table(table, timeline_op_names(graph), timeline_ops(table.ops, graph, memory_schedule),
                                   arena_bytes)
    return timeline, StepMemory.from_table(table, arena_bytes)
