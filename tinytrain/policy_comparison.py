"""The policy comparison as a sweep: every update policy trained with the same data, schedule and seed, plus
`dynamic` on a pruned model when one is given."""

from __future__ import annotations

from dataclasses import replace

from tinytrain.budget import BudgetTooSmall, fit_schedule
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.sweep_grid import Trial, check_unique_names
from tinytrain.sweep_summary import TrialOutcome
from tinytrain.train import TrainConfig, training_policy

PRUNED_LABEL = "dynamic, pruned"


def comparison_trials(base: TrainConfig, policies: list[str], pruned_model: str | None = None,
                      seeds: list[int] | None = None) -> list[Trial]:
    """One trial per policy (and per seed of `seeds`, when several: base's seed otherwise) on `base`, named after it;
    each in base's arena if its step fits there (fits_arena), else in the measuring arena (dense needs about 11 MB at
    128x128)."""
    labelled = [(policy, replace(base, policy=policy, arena_bytes=base.arena_bytes
                                 if fits_arena(replace(base, policy=policy)) else MEASURING_ARENA_BYTES))
                for policy in policies]
    if pruned_model is not None:
        labelled.append((PRUNED_LABEL, replace(base, policy="dynamic", model=pruned_model)))
    seeds = seeds or [base.seed]
    trials = [Trial(label.replace(", ", "-") + (f"_seed-{seed}" if len(seeds) > 1 else ""), {"policy": label},
                    replace(config, seed=seed))
              for label, config in labelled for seed in seeds]
    check_unique_names(trials)
    return trials


def fits_arena(config: TrainConfig) -> bool:
    """Whether a training step of `config`'s policy on MobileNetV2-1.0 at its resolution fits its arena in some
    memory schedule, as the trainer's dry run would find (memory depends on shapes, so random weights do)."""
    graph = build_mobilenetv2(resolution=config.resolution, seed=config.seed)
    try:
        fit_schedule(graph, training_policy(config, graph).plan(0, 0), config.arena_bytes)
    except BudgetTooSmall:
        return False
    return True


def comparison_caption(base: TrainConfig, outcomes: list[TrialOutcome]) -> str:
    """The line above the comparison table: model, data, input size, schedule and how many test images."""
    finished = [outcome.results for outcome in outcomes if outcome.results is not None]
    counts = (f", {finished[0]['steps']:,} steps, {finished[0]['test_images']:,} test images" if finished else "")
    return (f"MobileNetV2-1.0 (ImageNet), CIFAR-10 (JPEG q75 copy), {base.resolution}x{base.resolution}, batch 1, "
            f"{base.epochs} epoch(s){counts}.")
