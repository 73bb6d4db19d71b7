"""Measure one training step of pretrained MobileNetV2 per policy: whole-step arena peak, features, update ratio."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from tqdm import tqdm

from tinytrain.arena import DEFAULT_CAPACITY, KINDS, ArenaOverflow
from tinytrain.memory import MEASURING_ARENA_BYTES, measure_inference, measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import UpdatePlan
from tinytrain.sparse import POLICIES, Coverage, conv_weight_fraction
from tinytrain.train import TrainConfig, block_or_none, training_policy
from tinytrain.weights import load_pretrained



def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run one training step (batch 1, float32) of ImageNet MobileNetV2-1.0 with a new 10-class head "
                    "inside a byte arena and report what the arena measured. Two memory figures, always both: the "
                    "whole-step arena peak (every tensor the step writes: the strict on-chip claim) and the feature "
                    "memory (tensors saved in forward for backward), for the policy and for dense training in the "
                    "same engine. Nothing is estimated: every byte figure is counted by the arena. Policies are "
                    "configured as the fine-tuning defaults (TrainConfig) configure them.")
    parser.add_argument("--resolution", type=int, nargs="+", default=[128], help="input side(s) in pixels "
                        "(default 128)")
    parser.add_argument("--policy", choices=POLICIES, nargs="+", default=["dynamic"],
                        help="update policy or policies (default dynamic)")
    parser.add_argument("--ratio", type=float, default=0.02,
                        help="target fraction of all conv weights updated per step by static/dynamic (default 0.02)")
    parser.add_argument("--last-k", type=int, default=2, help="layers trained by last-k, classifier included "
                        "(default 2)")
    parser.add_argument("--bias-from-block", type=block_or_none, default=TrainConfig.bias_from_block,
                        help="static, dynamic: also train every bias from this block on, or 'none' (default "
                             f"{TrainConfig.bias_from_block}, as fine-tuning)")
    parser.add_argument("--arena-bytes", type=int, default=DEFAULT_CAPACITY,
                        help=f"the on-chip budget the step is dry-run in (default {DEFAULT_CAPACITY:,} B); a step "
                             "that overflows it is reported as not fitting and measured in a larger arena")
    parser.add_argument("--steps", type=int, default=50_000,
                        help="simulated steps for coverage, the fraction of the trained layers' weights updated at "
                             "least once (default 50,000: one CIFAR-10 epoch at batch 1)")
    parser.add_argument("--steps-per-epoch", type=int, default=50_000,
                        help="steps between the redraws of dynamic-epoch during the coverage simulation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the channel draws and the head")
    parser.add_argument("--data-dir", help="folder with the pretrained weights (default: $TINYTRAIN_DATA, then the "
                                           "user cache)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: one object, or a list of objects for several policies/resolutions")
    return parser.parse_args(argv)


def measure(graph, plan, budget: int):
    """Dry-run in the budget; if it overflows, measure in a large arena and say it does not fit."""
    try:
        return measure_training_step(graph, plan, budget), True
    except ArenaOverflow:
        return measure_training_step(graph, plan, MEASURING_ARENA_BYTES), False


def writable_bytes(graph, plan) -> int:
    """Parameters a run writes: every weight of a trained layer (a policy keeps its layers and redraws only their
    channels, so over a run any channel may be written), and the trained biases."""
    return sum(graph.layer(name).weight.nbytes * update.trains_weight + graph.layer(name).bias.nbytes * update.bias
               for name, update in plan.updates.items())


def report(resolution: int, policy_name: str, args, weights) -> dict:
    graph = build_mobilenetv2(num_classes=10, resolution=resolution, weights=weights, seed=args.seed)
    policy = training_policy(replace(TrainConfig(), policy=policy_name, ratio=args.ratio, last_k=args.last_k,
                                     seed=args.seed, bias_from_block=args.bias_from_block), graph)
    plan = policy.plan(0, 0)
    step, fits = measure(graph, plan, args.arena_bytes)
    dense, _ = measure(graph, UpdatePlan.dense(graph), args.arena_bytes)
    coverage = Coverage(graph)
    previous = None
    for index in tqdm(range(args.steps), desc=f"coverage {policy_name} {resolution}px", leave=False):
        step_plan = policy.plan(index, index // args.steps_per_epoch)
        if step_plan is not previous:  # fixed policies hand out one plan object: record it once
            coverage.record(step_plan)
            previous = step_plan
    return {
        "resolution": resolution,
        "policy": policy_name,
        "arena_bytes": args.arena_bytes,
        "fits": fits,
        "whole_step_peak_bytes": step.whole_step_peak_bytes,
        "high_water_bytes": step.high_water_bytes,
        "feature_bytes": step.feature_bytes,
        "dense_feature_bytes": dense.feature_bytes,
        "feature_reduction": 1.0 - step.feature_bytes / dense.feature_bytes,
        "peak_bytes_by_kind": step.peak_bytes_by_kind,
        "inference_peak_bytes": measure_inference(graph, MEASURING_ARENA_BYTES).whole_step_peak_bytes,
        "conv_weight_fraction_per_step": conv_weight_fraction(graph, plan),
        "coverage": coverage.fraction,
        "coverage_steps": args.steps,
        "parameter_bytes": graph.parameter_bytes(),
        "writable_parameter_bytes": writable_bytes(graph, plan),
    }


def print_table(rows: list[dict]) -> None:
    print("MobileNetV2-1.0 (ImageNet), 10-class head, batch 1, float32. Bytes counted by the arena.")
    print()
    print("| resolution | policy | whole-step peak (B) | fits budget | feature memory (B) | dense features (B) | "
          "reduction | conv weights per step | coverage | inference peak (B) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['resolution']} | {row['policy']} | {row['whole_step_peak_bytes']:,} | "
              f"{'yes' if row['fits'] else 'no'} ({row['arena_bytes']:,}) | {row['feature_bytes']:,} | "
              f"{row['dense_feature_bytes']:,} | {row['feature_reduction']:.2%} | "
              f"{row['conv_weight_fraction_per_step']:.2%} | {row['coverage']:.1%} | "
              f"{row['inference_peak_bytes']:,} |")
    print()
    print("Peak per kind (B): " + "; ".join(
        f"{row['resolution']}px {row['policy']}: " + ", ".join(
            f"{kind} {row['peak_bytes_by_kind'][kind]:,}" for kind in KINDS if row['peak_bytes_by_kind'][kind])
        for row in rows))


def main(argv=None) -> int:
    args = parse_args(argv)
    weights = load_pretrained(data_dir=args.data_dir)
    rows = [report(resolution, policy, args, weights) for resolution in args.resolution for policy in args.policy]
    if args.json:
        json.dump(rows[0] if len(rows) == 1 else rows, sys.stdout, indent=2)
        print()
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
