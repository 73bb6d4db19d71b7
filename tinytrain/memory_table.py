"""The memory table of a policy at a resolution: one dry-run step layer by layer and one lean, both measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from tqdm import tqdm

from tinytrain.arena import ArenaOverflow
from tinytrain.budget import BudgetTooSmall, fit_schedule
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES, StepMemory, measure_inference, measure_training_step
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, UpdatePlan
from tinytrain.sparse import Coverage, Policy, conv_weight_fraction

SCHEDULES = ("layer by layer", "lean")


@dataclass(frozen=True)
class MemoryRow:
    resolution: int
    policy: str
    schedule: str  # "layer by layer", or "lean": the fastest memory schedule that fits (budget.fit_schedule)
    memory_schedule: str  # what that schedule does
    arena_bytes: int  # the budget the step was dry-run in
    fits: bool  # False: it overflowed the budget, and the figures are of the leanest run in a large arena
    whole_step_peak_bytes: int
    high_water_bytes: int
    feature_bytes: int
    dense_feature_bytes: int
    feature_reduction: float
    peak_bytes_by_kind: dict[str, int]
    inference_peak_bytes: int  # a forward pass alone, under the same memory schedule
    conv_weight_fraction_per_step: float
    coverage: float
    coverage_steps: int
    parameter_bytes: int
    writable_parameter_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def writable_bytes(graph: Graph, plan: UpdatePlan) -> int:
    """Parameters a run writes: every weight of a trained layer (a policy keeps its layers and redraws only their
    channels, so over a run any channel may be written), and the trained biases."""
    return sum(graph.layer(name).weight.nbytes * update.trains_weight + graph.layer(name).bias.nbytes * update.bias
               for name, update in plan.updates.items())


def simulated_coverage(graph: Graph, policy: Policy, steps: int, steps_per_epoch: int, progress: bool = True) -> float:
    """The fraction of the trained layers' weights updated at least once over `steps` draws of `policy`."""
    coverage = Coverage(graph)
    previous = None
    for index in tqdm(range(steps), desc=f"coverage {policy.name}", leave=False, disable=not progress):
        plan = policy.plan(index, index // steps_per_epoch)
        if plan is not previous:  # fixed policies hand out one plan object: record it once
            coverage.record(plan)
            previous = plan
    return coverage.fraction


def measure_in_budget(graph: Graph, plan: UpdatePlan, budget: int, schedule: str
                      ) -> tuple[StepMemory, MemorySchedule, bool]:
    """The step's memory under `schedule`, in the budget if it fits there, else in a large arena."""
    if schedule == "lean":
        try:
            fitted = fit_schedule(graph, plan, budget)
            return fitted.memory, fitted.schedule, True
        except BudgetTooSmall as error:
            return error.leanest_memory, error.leanest, False
    try:
        return measure_training_step(graph, plan, budget), LAYER_BY_LAYER, True
    except ArenaOverflow:
        return measure_training_step(graph, plan, MEASURING_ARENA_BYTES), LAYER_BY_LAYER, False


def memory_rows(graph: Graph, policy: Policy, budget: int, coverage_steps: int, steps_per_epoch: int,
                schedules=SCHEDULES, progress: bool = True) -> list[MemoryRow]:
    """One row per schedule (of SCHEDULES) for the first step of `policy` on `graph`."""
    plan = policy.plan(0, 0)
    dense = measure_training_step(graph, UpdatePlan.dense(graph), MEASURING_ARENA_BYTES)
    coverage = simulated_coverage(graph, policy, coverage_steps, steps_per_epoch, progress)
    rows = []
    for schedule in schedules:
        step, memory_schedule, fits = measure_in_budget(graph, plan, budget, schedule)
        inference = measure_inference(graph, MEASURING_ARENA_BYTES, memory_schedule).whole_step_peak_bytes
        rows.append(MemoryRow(
            graph.input_shape[1], policy.name, schedule, memory_schedule.describe(graph), budget, fits,
            step.whole_step_peak_bytes, step.high_water_bytes, step.feature_bytes, dense.feature_bytes,
            1.0 - step.feature_bytes / dense.feature_bytes, step.peak_bytes_by_kind, inference,
            conv_weight_fraction(graph, plan), coverage, coverage_steps, graph.parameter_bytes(),
            writable_bytes(graph, plan)))
    return rows


def largest_fitting_resolution(plan_at: Callable[[int], tuple[Graph, UpdatePlan]], budget: int, start: int,
                               step: int) -> tuple[int, str] | None:
    """The largest of start, start + step, ... whose step fits `budget` under some memory schedule, searching
    upward until one does not; `plan_at(resolution)` builds the graph and the plan. Returns the resolution and its
    schedule, described; None if `start` does not fit."""
    best = None
    resolution = start
    while True:
        graph, plan = plan_at(resolution)
        try:
            best = (resolution, fit_schedule(graph, plan, budget).schedule.describe(graph))
        except BudgetTooSmall:
            return best
        resolution += step
