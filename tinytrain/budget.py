"""Budget fitting: the fastest memory schedule whose measured training step fits a given arena.

Candidates run from layer by layer (nothing to pay) through depthwise convs in place (nothing to pay either) to
patch stages over the frozen front, whose halos are computed more than once. They are tried cheapest first, by
an estimate of the extra work, and each is dry-run in an arena of the budget's size, so "fits" is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tinytrain.arena import ArenaOverflow
from tinytrain.engine import SGD
from tinytrain.graph import Graph
from tinytrain.layers import Add, Pointwise
from tinytrain.memory import MEASURING_ARENA_BYTES, StepMemory, measure_training_step
from tinytrain.patches import patch_boundaries, plan_patch_stage
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, PatchSpec, UpdatePlan, schedule_step

PATCH_GRIDS = (2, 3, 4, 5, 6, 8)  # tiles per side of a stage's output
# The estimate that orders the candidates (it only ranks them; nothing reported is estimated): halo MACs at about
# the rate the small tile kernels reach here (scripts/bench_kernels.py), plus the cost of one more kernel call: the
# recorded step's loop (scripts/bench_step.py's profile gives its time outside kernels per call) and Numba's dispatch.
SECONDS_PER_MAC = 1 / 3e9
SECONDS_PER_KERNEL_CALL = 2e-6
SEARCHED_SCHEDULES = 4  # candidates whose greedy offsets overflow that are dry-run anyway, for the placement search


class BudgetTooSmall(ArenaOverflow):
    """Even the leanest schedule overflows the arena; the message names the tensor and the budget that would do."""

    def __init__(self, message: str, leanest: MemorySchedule, leanest_memory: StepMemory):
        super().__init__(message)
        self.leanest = leanest  # the candidate needing the smallest arena
        self.leanest_memory = leanest_memory  # what it measured in a large arena


@dataclass(frozen=True)
class FittedSchedule:
    schedule: MemorySchedule
    memory: StepMemory  # the dry run in the budget's arena
    extra_seconds: float  # the estimate it was ranked by: patch work beyond the layer-by-layer step


def _block_outputs(graph: Graph, frozen_layers: int) -> list[int]:
    """Patch boundaries after a block's output (a residual add or a projection), within the frozen front."""
    return [boundary for boundary in patch_boundaries(graph)[1:] if boundary <= frozen_layers
            and isinstance(graph.layers[boundary - 1], (Add, Pointwise)) and not graph.layers[boundary - 1].relu6]


def candidate_schedules(graph: Graph, plan: UpdatePlan) -> list[tuple[float, MemorySchedule]]:
    """(estimated extra seconds, schedule), cheapest first: one or two patch stages over the frozen front."""
    steps = schedule_step(graph, plan).layers
    frozen_layers = next((index for index, step in enumerate(steps) if step.runs_backward
                          or step.saved_input is not None), len(steps))
    boundaries = _block_outputs(graph, frozen_layers)
    whole_macs = {}  # (first, end) -> MACs of those layers run whole
    candidates = [(0.0, LAYER_BY_LAYER), (0.0, MemorySchedule((), True))]
    stage_costs = {}
    for first in [0] + boundaries:
        for end in boundaries:
            if end <= first:
                continue
            whole_macs[first, end] = sum(layer.macs([graph.shapes[name] for name in layer.inputs])
                                         for layer in graph.layers[first:end])
            for grid in PATCH_GRIDS:
                try:
                    stage = plan_patch_stage(graph, first, end, (grid, grid))
                except ValueError:  # the grid is finer than the stage's output
                    continue
                stage_costs[first, end, grid] = ((stage.macs - whole_macs[first, end]) * SECONDS_PER_MAC
                                                 + stage.kernel_calls * SECONDS_PER_KERNEL_CALL)
    for (first, end, grid), cost in stage_costs.items():
        if first == 0:
            candidates.append((cost, MemorySchedule((PatchSpec(end, (grid, grid)),), True)))
    for (first, end, grid), cost in stage_costs.items():
        if first == 0:
            for (second_first, second_end, second_grid), second_cost in stage_costs.items():
                if second_first == end:
                    candidates.append((cost + second_cost, MemorySchedule(
                        (PatchSpec(end, (grid, grid)), PatchSpec(second_end, (second_grid, second_grid))), True)))
    ranked = sorted(candidates, key=lambda candidate: candidate[0])
    # Last, each in-place candidate again with strided backward in place: it costs no work, but its grown gradient
    # blocks live longer, so it is for the plans that nothing else fits.
    return ranked + [(cost, replace(schedule, in_place_strided_backward=True)) for cost, schedule in ranked
                     if schedule.in_place_depthwise]


def _family(schedule: MemorySchedule) -> tuple:
    return (schedule.in_place_depthwise, schedule.in_place_strided_backward) + tuple(
        spec.end_layer for spec in schedule.patches)


def _tiles(schedule: MemorySchedule) -> int:
    return sum(spec.grid[0] * spec.grid[1] for spec in schedule.patches)


def fit_schedule(graph: Graph, plan: UpdatePlan, arena_bytes: int, sgd: SGD = SGD(lr=0.0),
                 micro_batch: int = 1) -> FittedSchedule:
    """The cheapest candidate whose dry run fits `arena_bytes`; BudgetTooSmall if none does.

    Each candidate is first measured in a large arena: a family of stage boundaries whose finest grid has more bytes
    live at once than the budget is not tried at coarser grids. A candidate whose offsets, greedy by size, fit the
    budget there is run again in an arena of the budget's size, in checked mode (oplog.OpLog): every op is verified
    to have written only its own outputs, and nothing above the measured high water. One whose bytes live at once
    fit but whose greedy offsets do not is run there too, where the placement searches further (placement.py), for
    the first SEARCHED_SCHEDULES such candidates."""
    candidates = candidate_schedules(graph, plan)
    finest = {}
    for _, schedule in candidates:
        family = _family(schedule)
        if family not in finest or _tiles(schedule) > _tiles(finest[family]):
            finest[family] = schedule
    needs: dict[tuple, StepMemory] = {}

    def finest_need(family: tuple) -> StepMemory:
        if family not in needs:
            needs[family] = measure_training_step(graph, plan, MEASURING_ARENA_BYTES, sgd, micro_batch, finest[family])
        return needs[family]

    searches = 0
    for cost, schedule in candidates:
        if finest_need(_family(schedule)).whole_step_peak_bytes > arena_bytes:
            continue
        measured = measure_training_step(graph, plan, MEASURING_ARENA_BYTES, sgd, micro_batch, schedule)
        if measured.whole_step_peak_bytes > arena_bytes:
            continue
        if measured.high_water_bytes > arena_bytes:
            if searches == SEARCHED_SCHEDULES:
                continue
            searches += 1
        try:
            memory = measure_training_step(graph, plan, arena_bytes, sgd, micro_batch, schedule, checked=True)
        except ArenaOverflow:
            continue
        return FittedSchedule(schedule, memory, cost)
    family = min(finest, key=lambda family: finest_need(family).high_water_bytes)
    leanest = finest_need(family)
    raise BudgetTooSmall(_too_small_message(graph, finest[family], leanest, arena_bytes), finest[family], leanest)


def _too_small_message(graph: Graph, schedule: MemorySchedule, memory: StepMemory, arena_bytes: int) -> str:
    largest = max(memory.live_at_peak, key=lambda allocation: allocation.nbytes)
    return (f"no memory schedule fits the {arena_bytes:,} B arena. The leanest ({schedule.describe(graph)}) needs "
            f"{memory.high_water_bytes:,} B: at its fullest moment {memory.whole_step_peak_bytes:,} B of tensors "
            f"are live, the largest {largest.name!r} ({largest.nbytes:,} B), which does not fit beside the rest.\n"
            f"  Fix: an arena of at least {memory.high_water_bytes:,} B (--arena-bytes), a lower resolution, or "
            "fewer trained layers (a later --first-block or --bias-from-block).")
