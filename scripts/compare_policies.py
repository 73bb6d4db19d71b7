"""Train every update policy with the same data and schedule; write policy x accuracy x memory as Markdown and JSON."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from tinytrain.cli import add_debug_flag, run_script
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.sparse import POLICIES
from tinytrain.train import TrainConfig, Trainer, validate_config

DEFAULTS = TrainConfig()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Fine-tune pretrained MobileNetV2-1.0 on CIFAR-10 once per update policy (batch 1, the same "
                    "images, schedule and seed for all), and tabulate test accuracy, whole-step arena peak, feature "
                    "memory, fraction of conv weights updated per step, coverage and time per step, all measured "
                    "in the same engine. dense runs in the arena it needs; the others in --arena-bytes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="policies to train")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution, help="input side in pixels")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the training images")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak SGD learning rate")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps, help="linear warm-up steps")
    parser.add_argument("--ratio", type=float, default=DEFAULTS.ratio,
                        help="target fraction of conv weights per step for static and dynamic")
    parser.add_argument("--arena-bytes", type=int, default=DEFAULTS.arena_bytes, help="arena of the sparse policies")
    parser.add_argument("--train-subset", type=int, help="train on this many images (default: all 50,000)")
    parser.add_argument("--test-subset", type=int, help="evaluate on the first this many test images (default all)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the head, shuffling and draws")
    parser.add_argument("--pruned-model", help="also train `dynamic` on this pruned model (scripts/prune_model.py) "
                                               "and add it as the row 'dynamic, pruned'")
    parser.add_argument("--output-dir", default="runs/compare", help="one folder per policy, plus the tables")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/ (default: $TINYTRAIN_DATA)")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def markdown(rows: list[dict]) -> str:
    lines = ["| policy | test accuracy | whole-step peak (B) | feature memory (B) | reduction vs dense | "
             "conv weights per step | coverage | ms per step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['policy']} | {row['test_accuracy']:.2%} | {row['whole_step_peak_bytes']:,} | "
                     f"{row['feature_bytes']:,} | {row['feature_reduction']:.2%} | "
                     f"{row['conv_weight_fraction_per_step']:.2%} | {row['coverage']:.1%} | "
                     f"{row['seconds_per_step'] * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    base = TrainConfig(resolution=args.resolution, epochs=args.epochs, lr=args.lr, warmup_steps=args.warmup_steps,
                       ratio=args.ratio, arena_bytes=args.arena_bytes, train_subset=args.train_subset,
                       test_subset=args.test_subset, seed=args.seed)
    output = Path(args.output_dir)
    runs = [(policy, replace(base, policy=policy, arena_bytes=MEASURING_ARENA_BYTES if policy == "dense"
                             else base.arena_bytes)) for policy in args.policies]  # dense needs about 11 MB
    if args.pruned_model:
        runs.append(("dynamic, pruned", replace(base, policy="dynamic", model=args.pruned_model)))
    return run_script(lambda: compare(runs, output, args), args.debug)


def compare(runs: list[tuple[str, TrainConfig]], output: Path, args) -> int:
    for _, config in runs:  # every run's values, before the first one trains for hours
        validate_config(config)
    rows = []
    for label, config in runs:
        results = Trainer(config, output / label.replace(", ", "-"), data_dir=args.data_dir).run()
        rows.append({"policy": label, **{key: getattr(results, key) for key in (
            "test_accuracy", "test_images", "whole_step_peak_bytes", "feature_bytes", "dense_feature_bytes",
            "feature_reduction", "conv_weight_fraction_per_step", "coverage", "seconds_per_step", "steps",
            "arena_bytes")}})
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown(rows)
    (output / "comparison.md").write_text(
        f"MobileNetV2-1.0 (ImageNet), CIFAR-10 (JPEG q75 copy), {args.resolution}x{args.resolution}, batch 1, "
        f"{args.epochs} epoch(s), {rows[0]['steps']:,} steps, {rows[0]['test_images']:,} test images.\n\n" + table)
    (output / "comparison.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
