"""Measure the arena over one inference or one training step: whole-step peak, peak per kind, feature memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.arena import Allocation, Arena
from tinytrain.engine import SGD, Engine, MicroBatch
from tinytrain.graph import Graph
from tinytrain.oplog import OpEvent, OpLog
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, UpdatePlan


MEASURING_ARENA_BYTES = 64 << 20  # large enough to measure dense training at 128x128 (about 11 MB)


@dataclass(frozen=True)
class StepMemory:
    """What the arena measured over one step, in bytes."""

    arena_bytes: int  # capacity of the arena the step ran in
    whole_step_peak_bytes: int  # most bytes live at once, every kind together
    peak_bytes_by_kind: dict[str, int]  # most bytes live at once of each kind (not necessarily at the same moment)
    feature_bytes: int  # peak of the "saved" kind: what forward keeps for backward
    high_water_bytes: int  # highest arena address used: the peak plus alignment padding and fragmentation
    live_at_peak: list[Allocation]

    @classmethod
    def from_arena(cls, arena: Arena) -> StepMemory:
        return cls(arena.capacity, arena.peak_bytes, dict(arena.peak_bytes_by_kind),
                   arena.peak_bytes_by_kind["saved"], arena.high_water_bytes, list(arena.live_at_peak))


def _blank_image(graph: Graph) -> np.ndarray:
    """Memory does not depend on pixel values, so any image of the right shape measures it."""
    channels, height, width = graph.input_shape
    return np.zeros((height, width, channels), dtype=np.uint8)


def measure_inference(graph: Graph, arena_bytes: int,
                      memory_schedule: MemorySchedule = LAYER_BY_LAYER) -> StepMemory:
    arena = Arena(arena_bytes)
    Engine(graph, arena, memory_schedule=memory_schedule).infer(_blank_image(graph))
    return StepMemory.from_arena(arena)


def dry_run_training_step(graph: Graph, plan: UpdatePlan, arena_bytes: int, sgd: SGD = SGD(lr=0.0),
                          wgrad_tile_bytes: int | None = None, micro_batch: int = 1,
                          memory_schedule: MemorySchedule = LAYER_BY_LAYER) -> Arena:
    """One step in a fresh tracing arena: every buffer is allocated and computed, no weight changes. Returns the
    arena, whose trace holds exactly that step. Raises ArenaOverflow if the plan does not fit.

    With `micro_batch` > 1 it runs the first and the last sample of a micro-batch, so the peak includes the
    gradient sums held from one sample to the next (the trace then holds both)."""
    engine = Engine(graph, Arena(arena_bytes), wgrad_tile_bytes, memory_schedule)
    _dry_run(engine, plan, sgd, micro_batch)
    return engine.arena


def dry_run_with_op_log(graph: Graph, plan: UpdatePlan, arena_bytes: int, sgd: SGD = SGD(lr=0.0),
                        wgrad_tile_bytes: int | None = None, memory_schedule: MemorySchedule = LAYER_BY_LAYER,
                        checked: bool = False) -> tuple[Arena, list[OpEvent]]:
    """dry_run_training_step of one sample, also returning what each op read and wrote. `checked`: the arena starts
    filled with a sentinel, and each op is verified to write only its own outputs, and nothing above the measured
    high water to be touched (ArenaCorruption otherwise)."""
    engine = Engine(graph, Arena(arena_bytes), wgrad_tile_bytes, memory_schedule)
    engine.op_log = OpLog(engine.arena, checked)
    _dry_run(engine, plan, sgd, 1)
    if checked:
        engine.op_log.verify_high_water()
    return engine.arena, engine.op_log.events


def _dry_run(engine: Engine, plan: UpdatePlan, sgd: SGD, micro_batch: int) -> None:
    for index in sorted({0, micro_batch - 1}):
        engine.train_step(_blank_image(engine.graph), 0, plan, sgd, apply_update=False,
                          micro_batch=MicroBatch(index, micro_batch))


def measure_training_step(graph: Graph, plan: UpdatePlan, arena_bytes: int, sgd: SGD = SGD(lr=0.0),
                          micro_batch: int = 1, memory_schedule: MemorySchedule = LAYER_BY_LAYER,
                          checked: bool = False) -> StepMemory:
    """`checked` (one sample only): as dry_run_with_op_log's."""
    if checked and micro_batch == 1:
        return StepMemory.from_arena(dry_run_with_op_log(graph, plan, arena_bytes, sgd,
                                                         memory_schedule=memory_schedule, checked=True)[0])
    return StepMemory.from_arena(dry_run_training_step(graph, plan, arena_bytes, sgd, micro_batch=micro_batch,
                                                       memory_schedule=memory_schedule))
