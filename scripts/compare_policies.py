"""Train every update policy with the same data and schedule, as a sweep on Ray; write policy x accuracy x memory as
Markdown and JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.cli import DefaultsHelpFormatter, add_debug_flag, run_script
from tinytrain.policy_comparison import comparison_caption, comparison_trials
from tinytrain.sparse import POLICIES
from tinytrain.sweep import DEFAULT_RETRIES, INSTALL_HINT, run_and_summarize
from tinytrain.sweep_summary import markdown_table
from tinytrain.train import TrainConfig

DEFAULTS = TrainConfig()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Fine-tune pretrained MobileNetV2-1.0 on CIFAR-10 once per update policy (batch 1, the same "
                    "images, schedule and seed for all), and tabulate test accuracy, whole-step arena peak, feature "
                    "memory, fraction of conv weights updated per step, coverage and time per step, all measured "
                    "in the same engine. Each policy runs in --arena-bytes if its step fits there in some memory "
                    "schedule (dry-run before any training), else in the arena it needs (dense, and at 128x128 "
                    "last-k and bias). The "
                    "policies run as a sweep (scripts/sweep.py) on Ray, one per core with NUMBA_NUM_THREADS=1, or on "
                    "a cluster with --address; rerunning the same command skips finished policies and resumes "
                    f"stopped ones. Needs Ray: {INSTALL_HINT}.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="policies to train")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution, help="input side in pixels")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the training images")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak SGD learning rate")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps, help="linear warm-up steps")
    parser.add_argument("--ratio", type=float, default=DEFAULTS.ratio,
                        help="target fraction of conv weights per step for static and dynamic")
    parser.add_argument("--arena-bytes", type=int, default=DEFAULTS.arena_bytes,
                        help="arena of every policy whose step fits it")
    parser.add_argument("--train-subset", type=int, help="train on this many images (default: all 50,000)")
    parser.add_argument("--test-subset", type=int, help="evaluate on the first this many test images (default all)")
    parser.add_argument("--seed", type=int, nargs="+", default=[DEFAULTS.seed],
                        help="seed of the head, shuffling and draws; with several, every policy trains once per seed "
                             "and the table gives mean ± standard deviation over them")
    parser.add_argument("--pruned-model", help="also train `dynamic` on this pruned model (scripts/prune_model.py) "
                                               "and add it as the row 'dynamic, pruned'")
    parser.add_argument("--output-dir", default="runs/compare", help="one folder per policy, plus the tables")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/ (default: $TINYTRAIN_DATA)")
    parser.add_argument("--address", help="join the Ray cluster at this HOST:PORT (None: start Ray on this machine)")
    parser.add_argument("--cpus", type=int, help="without --address: policies trained at once (None: one per core)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help="times a policy whose worker or node died is restarted from its checkpoint")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_script(lambda: compare(args), args.debug)


def compare(args) -> int:
    base = TrainConfig(resolution=args.resolution, epochs=args.epochs, lr=args.lr, warmup_steps=args.warmup_steps,
                       ratio=args.ratio, arena_bytes=args.arena_bytes, train_subset=args.train_subset,
                       test_subset=args.test_subset)
    trials = comparison_trials(base, args.policies, args.pruned_model, args.seed)
    report = run_and_summarize(trials, args.output_dir, lambda outcomes: comparison_caption(base, outcomes),
                               stem="comparison", data_dir=args.data_dir, address=args.address, num_cpus=args.cpus,
                               retries=args.retries)
    print(markdown_table(report.rows))
    print(f"{len(trials)} trials, {report.skipped} finished before this run; this run took "
          f"{report.wall_seconds / 60:.1f} min; table: {Path(args.output_dir) / 'comparison.md'}")
    if report.failures:
        print(f"error: {report.failures}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
