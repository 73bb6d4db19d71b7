"""The memory of one inference or one training step: whole-step peak, peak per kind, feature memory.

Each figure is read off the step's table (step_table.py), once a real step at the table's offsets has measured
the same in the arena.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import Allocation, Arena
from tinytrain.engine import SGD, Engine, MicroBatch
from tinytrain.graph import Graph
from tinytrain.oplog import OpLog
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, UpdatePlan
from tinytrain.step_table import StepTable, TensorRecord, check_measured


MEASURING_ARENA_BYTES = 64 << 20  # large enough to measure dense training at 128x128 (about 11 MB)


@dataclass(frozen=True)
class StepMemory:
    """What the arena measured over one step, in bytes."""

    arena_bytes: int  # capacity of the arena the step ran in
    whole_step_peak_bytes: int  # most bytes live at once, every kind together
    peak_bytes_by_kind: dict[str, int]  # most bytes live at once of each kind (not necessarily at the same moment)
    feature_bytes: int  # peak of the "saved" kind: what forward keeps for backward
    high_water_bytes: int  # highest arena address used: the peak plus alignment padding and fragmentation
    live_at_peak: list[Allocation | TensorRecord]

    @classmethod
    def from_table(cls, table: StepTable, arena_bytes: int) -> StepMemory:
        """A step table checked against a measured step (measured_step_table)."""
        return cls(arena_bytes, table.peak_bytes, table.peak_bytes_by_kind, table.peak_bytes_by_kind["saved"],
                   table.high_water_bytes, list(table.live_at_peak))

    @classmethod
    def from_arena(cls, arena: Arena) -> StepMemory:
        """What an arena measured since its last reset_peak: for steps that run first-fit, without a table."""
        return cls(arena.capacity, arena.peak_bytes, dict(arena.peak_bytes_by_kind),
                   arena.peak_bytes_by_kind["saved"], arena.high_water_bytes, list(arena.live_at_peak))


def _blank_image(graph: Graph) -> np.ndarray:
    """Memory does not depend on pixel values, so any image of the right shape measures it."""
    channels, height, width = graph.input_shape
    return np.zeros((height, width, channels), dtype=np.uint8)


def measure_inference(graph: Graph, arena_bytes: int,
                      memory_schedule: MemorySchedule = LAYER_BY_LAYER) -> StepMemory:
    """One forward pass's step table, checked against a forward pass at its offsets in an arena of `arena_bytes`."""
    engine = Engine(graph, Arena(arena_bytes), memory_schedule=memory_schedule)
    table = engine.inference_step_table()
    engine.op_log = OpLog(engine.arena)
    engine.infer(_blank_image(graph))
    check_measured(table, engine.arena, engine.op_log.events)
    return StepMemory.from_table(table, arena_bytes)


def measured_step_table(graph: Graph, plan: UpdatePlan, arena_bytes: int, sgd: SGD = SGD(lr=0.0),
                        wgrad_tile_bytes: int | None = None, memory_schedule: MemorySchedule = LAYER_BY_LAYER,
                        checked: bool = False) -> StepTable:
    """The engine's step table of one training sample of `plan`, checked against a real one: a dry run (no weight
    changes) at the table's offsets in a fresh arena of `arena_bytes` must measure the table's peaks and high water
    and trace its tensors and ops. `checked`: the arena also starts filled with a sentinel, and each op is verified
    to write only its own outputs, and nothing above the high water to be touched (ArenaCorruption otherwise).
    ArenaOverflow if the table's offsets do not fit the arena."""
    engine = Engine(graph, Arena(arena_bytes), wgrad_tile_bytes, memory_schedule)
    table = engine.training_step_table(plan, sgd)
    engine.op_log = OpLog(engine.arena, checked)
    _dry_run(engine, plan, sgd, 1)
    if checked:
        engine.op_log.verify_high_water()
    check_measured(table, engine.arena, engine.op_log.events)
    return table


def _dry_run(engine: Engine, plan: UpdatePlan, sgd: SGD, micro_batch: int) -> None:
    for index in sorted({0, micro_batch - 1}):
        engine.train_step(_blank_image(engine.graph), 0, plan, sgd, apply_update=False,
                          micro_batch=MicroBatch(index, micro_batch))


def measure_training_step(graph: Graph, plan: UpdatePlan, arena_bytes: int, sgd: SGD = SGD(lr=0.0),
                          micro_batch: int = 1, memory_schedule: MemorySchedule = LAYER_BY_LAYER,
                          checked: bool = False) -> StepMemory:
    """One sample: its measured step table (measured_step_table, `checked` as there). A micro-batch runs first-fit,
    its gradient sums outliving a sample, so it has no table: its first and last samples are dry-run in a fresh
    arena, whose peak then includes the sums held from one sample to the next."""
    if micro_batch == 1:
        table = measured_step_table(graph, plan, arena_bytes, sgd, memory_schedule=memory_schedule, checked=checked)
        return StepMemory.from_table(table, arena_bytes)
    engine = Engine(graph, Arena(arena_bytes), memory_schedule=memory_schedule)
    _dry_run(engine, plan, sgd, micro_batch)
    return StepMemory.from_arena(engine.arena)
