"""Measure one training step of pretrained MobileNetV2 per policy: whole-step arena peak, features, update ratio."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from tinytrain.arena import DEFAULT_CAPACITY, KINDS
from tinytrain.cli import add_debug_flag, run_script
from tinytrain.memory_table import SCHEDULES, largest_fitting_resolution, memory_rows
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.sparse import POLICIES
from tinytrain.train import ConfigError, TrainConfig, block_or_none, training_policy, validate_config
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
    parser.add_argument("--first-block", type=int, default=TrainConfig.first_block,
                        help="static, dynamic: the earliest block whose convs train; earlier stages stay frozen "
                             f"(default {TrainConfig.first_block}, as fine-tuning)")
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
    parser.add_argument("--schedule", choices=SCHEDULES, nargs="+", default=["lean"],
                        help="memory schedules to measure: 'lean', the fastest schedule whose step fits the arena "
                             "(patches over the frozen front, depthwise in place; what fine-tuning runs), and/or "
                             "'layer by layer' (default: lean)")
    parser.add_argument("--largest-fitting", type=int, metavar="STEP",
                        help="also search upward from the largest --resolution in steps of STEP pixels for the "
                             "largest resolution whose whole step (first --policy) fits the arena under some memory "
                             "schedule")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: one object, or a list of objects for several policies/resolutions")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    for policy in args.policy:
        try:
            validate_config(config_of(policy, args))
        except ConfigError as error:
            parser.error(str(error))
    return args


def config_of(policy_name: str, args) -> TrainConfig:
    return replace(TrainConfig(), policy=policy_name, ratio=args.ratio, last_k=args.last_k, seed=args.seed,
                   first_block=args.first_block, bias_from_block=args.bias_from_block)


def policy_at(resolution: int, policy_name: str, args, weights):
    graph = build_mobilenetv2(num_classes=10, resolution=resolution, weights=weights, seed=args.seed)
    return graph, training_policy(config_of(policy_name, args), graph)


def first_plan_at(resolution: int, args, weights):
    graph, policy = policy_at(resolution, args.policy[0], args, weights)
    return graph, policy.plan(0, 0)


def print_table(rows: list[dict]) -> None:
    print("MobileNetV2-1.0 (ImageNet), 10-class head, batch 1, float32. Bytes counted by the arena.")
    print()
    print("| resolution | policy | schedule | whole-step peak (B) | high water (B) | fits budget | feature memory (B) "
          "| dense features (B) | reduction | conv weights per step | coverage | inference peak (B) |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['resolution']} | {row['policy']} | {row['schedule']} | {row['whole_step_peak_bytes']:,} | "
              f"{row['high_water_bytes']:,} | {'yes' if row['fits'] else 'no'} ({row['arena_bytes']:,}) | "
              f"{row['feature_bytes']:,} | "
              f"{row['dense_feature_bytes']:,} | {row['feature_reduction']:.2%} | "
              f"{row['conv_weight_fraction_per_step']:.2%} | {row['coverage']:.1%} | "
              f"{row['inference_peak_bytes']:,} |")
    print()
    print("Lean schedules: " + "; ".join(f"{row['resolution']}px {row['policy']}: {row['memory_schedule']}"
                                         for row in rows if row["schedule"] == "lean"))
    print()
    print("Peak per kind (B): " + "; ".join(
        f"{row['resolution']}px {row['policy']} {row['schedule']}: " + ", ".join(
            f"{kind} {row['peak_bytes_by_kind'][kind]:,}" for kind in KINDS if row['peak_bytes_by_kind'][kind])
        for row in rows))


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        weights = load_pretrained(data_dir=args.data_dir)
        rows = [row.as_dict() for resolution in args.resolution for policy in args.policy
                for row in memory_rows(*policy_at(resolution, policy, args, weights), args.arena_bytes, args.steps,
                                       args.steps_per_epoch, args.schedule)]
        if args.largest_fitting:
            found = largest_fitting_resolution(lambda size: first_plan_at(size, args, weights), args.arena_bytes,
                                               max(args.resolution), args.largest_fitting)
            largest = None if found is None else {"resolution": found[0], "policy": args.policy[0],
                                                  "memory_schedule": found[1]}
            rows.append({"largest_fitting": largest, "arena_bytes": args.arena_bytes,
                         "resolution_step": args.largest_fitting})
        if args.json:
            json.dump(rows[0] if len(rows) == 1 else rows, sys.stdout, indent=2)
            print()
        else:
            print_table([row for row in rows if "largest_fitting" not in row])
            if args.largest_fitting:
                largest = rows[-1]["largest_fitting"]
                print()
                print(f"Largest resolution whose whole {args.policy[0]} step fits {args.arena_bytes:,} B (searched "
                      f"upward from {max(args.resolution)} px in steps of {args.largest_fitting}): "
                      + ("none" if largest is None else f"{largest['resolution']} px ({largest['memory_schedule']})"))
        return 0

    return run_script(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
