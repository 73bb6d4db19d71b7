"""Fine-tune once per combination of a grid of settings, on Ray (this machine's cores, or a cluster), and tabulate
the results with mean ± spread over seeds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.cli import add_debug_flag, run_script
from tinytrain.sweep import DEFAULT_RETRIES, INSTALL_HINT, run_and_summarize
from tinytrain.sweep_grid import (FIELD_ORDER, grid_caption, grid_trials, merge_grids, parse_grid_arguments,
                                  read_grid_file)
from tinytrain.sweep_summary import markdown_table


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run a grid of fine-tuning runs (scripts/finetune_cifar.py's, one per combination of values) on "
                    "Ray and write one table, sweep.md and sweep.json, to --output-dir: one row per configuration, "
                    "with test accuracy, time per step, whole-step peak, feature memory, conv weights per step and "
                    "coverage as mean ± standard deviation over its seeds. "
                    "THE GRID: '--grid FIELD=V1,V2,...' once per setting, for example "
                    "'--grid policy=dense,dynamic --grid seed=0,1 --grid epochs=2' (a single value fixes a setting "
                    "for every trial); or --grid-file, a JSON object of the same, "
                    "'{\"policy\": [\"dense\", \"dynamic\"], \"seed\": [0, 1], \"epochs\": 2}'. Fields are the "
                    f"settings of a fine-tuning run: {', '.join(FIELD_ORDER)}; 'none' clears an optional one "
                    "(bias_from_block=none). Every combination is checked, as fine-tuning checks its flags, before "
                    "any trial starts. Each trial trains in --output-dir/<field>-<value>_..., named from its grid "
                    "values, on one core with NUMBA_NUM_THREADS=1. A trial whose worker dies is retried from its "
                    "last checkpoint; rerunning the same command skips finished trials and resumes stopped ones. "
                    f"Needs Ray: {INSTALL_HINT}.")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                        help="a setting and the values to sweep (repeat for each setting)")
    parser.add_argument("--grid-file", metavar="JSON", help="a JSON object {field: [values]} to sweep")
    parser.add_argument("--output-dir", default="runs/sweep",
                        help="one folder per trial, plus sweep.md and sweep.json (default: runs/sweep)")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/, at the same path on every node "
                                           "(default: $TINYTRAIN_DATA, then the user cache)")
    parser.add_argument("--address", help="join the Ray cluster at this address (HOST:PORT of its head, or auto) "
                                          "instead of starting Ray on this machine")
    parser.add_argument("--cpus", type=int, help="without --address: trials run at once (default: every core)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help="times a trial whose worker or node died is restarted from its checkpoint (default: "
                             f"{DEFAULT_RETRIES})")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_script(lambda: sweep(args), args.debug)


def sweep(args) -> int:
    grid = merge_grids(read_grid_file(args.grid_file) if args.grid_file else {}, parse_grid_arguments(args.grid))
    trials = grid_trials(grid)
    report = run_and_summarize(trials, args.output_dir, lambda outcomes: grid_caption(grid, trials),
                               data_dir=args.data_dir, address=args.address, num_cpus=args.cpus, retries=args.retries)
    print(f"{len(trials)} trials, {report.skipped} finished before this run; this run took "
          f"{report.wall_seconds / 60:.1f} min; table: {Path(args.output_dir) / 'sweep.md'}")
    print(markdown_table(report.rows))
    if report.failures:
        print(f"error: {report.failures}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
