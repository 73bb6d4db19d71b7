"""Export the memory plan of one training step (every tensor's arena offset and lifetime, every op) as JSON and C."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from tinytrain.arena import ArenaOverflow
from tinytrain.budget import fit_schedule
from tinytrain.memory_plan import C_PREFIX_PATTERN, SCHEMA_VERSION, build_memory_plan
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.sparse import POLICIES
from tinytrain.train import TrainConfig, training_policy
from tinytrain.weights import WeightsError, load_pretrained

CIFAR10_TRAIN_IMAGES = 50_000  # one epoch at batch 1: the steps between dynamic-epoch redraws
NUM_CLASSES = 10


def parse_args(argv):
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description="Run one training step (batch 1, float32) of MobileNetV2-1.0 with a new 10-class head inside a "
                    "tracing byte arena, as a dry run that changes no weight, and export its memory plan: every "
                    "tensor with its kind, dtype, shape, bytes, the offset the arena placed it at and its first and "
                    "last op; every op with its type, input and output tensors, MACs and trained channels; the arena "
                    f"size and the measured peak. JSON follows the schema in tinytrain/memory_plan.py (version "
                    f"{SCHEMA_VERSION}); the C header is C99 with <stdint.h> only. Policy defaults are those of "
                    "TrainConfig, and the step runs in the fastest memory schedule that fits --arena-bytes (the frozen "
                    "front in patches, depthwise convs in place, offsets planned from the lifetimes), as fine-tuning "
                    "picks it, so the plan is the one a default training run uses.")
    parser.add_argument("--resolution", type=int, default=defaults.resolution,
                        help=f"input side in pixels (default {defaults.resolution}, as TrainConfig)")
    parser.add_argument("--policy", choices=POLICIES, default=defaults.policy,
                        help=f"update policy (default {defaults.policy})")
    parser.add_argument("--step", type=int, default=0,
                        help="the training step whose plan is exported: dynamic draws a new channel subset every "
                             "step, dynamic-epoch every epoch; the other policies give every step the same plan "
                             "(default 0)")
    parser.add_argument("--steps-per-epoch", type=int, default=CIFAR10_TRAIN_IMAGES,
                        help="steps per epoch, for dynamic-epoch: the epoch of --step is step // steps-per-epoch "
                             f"(default {CIFAR10_TRAIN_IMAGES:,}, CIFAR-10 at batch 1)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the channel draws, the new head and random weights (default {defaults.seed})")
    parser.add_argument("--ratio", type=float, default=defaults.ratio,
                        help=f"target fraction of all conv weights updated per step by static/dynamic (default "
                             f"{defaults.ratio})")
    parser.add_argument("--last-k", type=int, default=defaults.last_k,
                        help=f"layers trained by last-k, classifier included (default {defaults.last_k})")
    parser.add_argument("--arena-bytes", type=int, default=defaults.arena_bytes,
                        help=f"capacity of the arena the step runs in (default {defaults.arena_bytes:,} B, as "
                             "TrainConfig); offsets and peak do not depend on it as long as the step fits")
    parser.add_argument("--weights", choices=("random", "pretrained"), default="random",
                        help="random: a random-init model, needing no data (default; sizes, offsets and lifetimes "
                             "do not depend on weight values). pretrained: the ImageNet weights, needed only for the "
                             "channel indices of static, which ranks channels by weight norm")
    parser.add_argument("--data-dir", help="folder with the pretrained weights, for --weights pretrained (default: "
                                           "$TINYTRAIN_DATA, then the user cache)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the plan as JSON here")
    parser.add_argument("--header", type=Path, metavar="PATH", help="write the plan as a C header here")
    parser.add_argument("--prefix", default="TT", help="prefix of every C identifier in the header, upper-case "
                                                       "letters and digits (default TT)")
    args = parser.parse_args(argv)
    for flag, value, minimum in (("--resolution", args.resolution, 1), ("--step", args.step, 0),
                                 ("--steps-per-epoch", args.steps_per_epoch, 1), ("--last-k", args.last_k, 1),
                                 ("--arena-bytes", args.arena_bytes, 1)):
        if value < minimum:
            parser.error(f"{flag} must be at least {minimum}, got {value}")
    if not re.fullmatch(C_PREFIX_PATTERN, args.prefix):
        parser.error(f"--prefix must be upper-case letters and digits, starting with a letter; got {args.prefix!r}")
    if not 0.0 < args.ratio <= 1.0:
        parser.error(f"--ratio must be in (0, 1], got {args.ratio}")
    for flag, path in (("--json", args.json), ("--header", args.header)):
        if path is not None and path.is_dir():
            parser.error(f"{flag} {path} is a directory; give a file path")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        weights = load_pretrained(data_dir=args.data_dir) if args.weights == "pretrained" else None
        graph = build_mobilenetv2(num_classes=NUM_CLASSES, resolution=args.resolution, weights=weights,
                                  seed=args.seed)
        policy = training_policy(replace(TrainConfig(), policy=args.policy, ratio=args.ratio, last_k=args.last_k,
                                         seed=args.seed), graph)
        update_plan = policy.plan(args.step, args.step // args.steps_per_epoch)
        provenance = {"model": "mobilenetv2-1.0", "num_classes": NUM_CLASSES, "resolution": args.resolution,
                      "policy": args.policy, "step": args.step, "seed": args.seed, "weights": args.weights}
        schedule = fit_schedule(graph, update_plan, args.arena_bytes).schedule
        provenance["memory_schedule"] = schedule.describe(graph)
        plan = build_memory_plan(graph, update_plan, args.arena_bytes, provenance=provenance,
                                 memory_schedule=schedule)
    except (ArenaOverflow, WeightsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.resolution} px, policy {args.policy}, step {args.step}, {args.weights} weights, "
          f"{provenance['memory_schedule']}: "
          f"{len(plan.tensors)} tensors, {len(plan.ops)} ops, peak {plan.peak_bytes:,} B "
          f"({plan.peak_bytes / 1024:.1f} KiB), high water {plan.high_water_bytes:,} B, arena {plan.arena_bytes:,} B")
    try:
        if args.json is not None:
            plan.to_json(args.json)
            print(f"wrote {args.json}")
        if args.header is not None:
            plan.to_c_header(args.header, args.prefix)
            print(f"wrote {args.header}")
    except OSError as error:
        print(f"error: cannot write: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
