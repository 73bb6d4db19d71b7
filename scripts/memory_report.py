"""Measure the arena over one training step of pretrained MobileNetV2: whole-step peak, peak per kind, features."""

from __future__ import annotations

import argparse
import json
import sys

from tinytrain.arena import KINDS
from tinytrain.memory import measure_inference, measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import UpdatePlan
from tinytrain.weights import load_pretrained

POLICIES = ("dense",)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run one training step (batch 1, float32) of ImageNet MobileNetV2-1.0 with a new 10-class head "
                    "inside a byte arena and report what the arena measured: the whole-step peak (every tensor the "
                    "step writes), the peak of each kind, and the feature memory (tensors saved in forward for "
                    "backward). Also the inference-only peak. Nothing here is estimated: every figure is counted "
                    "by the arena.")
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 128],
                        help="input side(s) in pixels (default: 32 128)")
    parser.add_argument("--policy", choices=POLICIES, default="dense", help="which layers/channels train")
    parser.add_argument("--arena-bytes", type=int, default=64 << 20,
                        help="arena capacity; large by default so that dense training fits (default 64 MiB)")
    parser.add_argument("--data-dir", help="folder with the pretrained weights (default: $TINYTRAIN_DATA, then the "
                                           "user cache)")
    parser.add_argument("--json", action="store_true", help="print one JSON list, one object per resolution")
    return parser.parse_args(argv)


def report(resolution: int, policy: str, arena_bytes: int, weights) -> dict:
    graph = build_mobilenetv2(num_classes=10, resolution=resolution, weights=weights)
    plan = UpdatePlan.dense(graph)
    step = measure_training_step(graph, plan, arena_bytes)
    inference = measure_inference(graph, arena_bytes)
    return {
        "resolution": resolution,
        "policy": policy,
        "arena_bytes": arena_bytes,
        "whole_step_peak_bytes": step.whole_step_peak_bytes,
        "feature_bytes": step.feature_bytes,
        "peak_bytes_by_kind": step.peak_bytes_by_kind,
        "high_water_bytes": step.high_water_bytes,
        "inference_peak_bytes": inference.whole_step_peak_bytes,
        "parameter_bytes": graph.parameter_bytes(),
    }


def print_table(rows: list[dict]) -> None:
    def kib(nbytes: int) -> str:
        return f"{nbytes / 1024:,.1f}"

    header = ["resolution", "policy", "inference peak", "step peak", "features"] + [f"{k} peak" for k in KINDS]
    print("MobileNetV2-1.0, batch 1, float32; KiB measured by the arena (1 KiB = 1024 B)")
    print(" | ".join(header))
    for row in rows:
        cells = [f"{row['resolution']}x{row['resolution']}", row["policy"], kib(row["inference_peak_bytes"]),
                 kib(row["whole_step_peak_bytes"]), kib(row["feature_bytes"])]
        cells += [kib(row["peak_bytes_by_kind"][kind]) for kind in KINDS]
        print(" | ".join(cells))
    print(f"parameters (flash): {kib(rows[0]['parameter_bytes'])} KiB")


def main(argv=None) -> int:
    args = parse_args(argv)
    weights = load_pretrained(data_dir=args.data_dir)
    rows = [report(resolution, args.policy, args.arena_bytes, weights) for resolution in args.resolution]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
