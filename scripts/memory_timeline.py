"""Draw the arena's memory timeline of one training step, dense beside the dynamic sparse update, to a PNG."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from tinytrain.arena import DEFAULT_CAPACITY
from tinytrain.budget import fit_schedule
from tinytrain.curves import INSTALL_HINT, plotting_available
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import LAYER_BY_LAYER
from tinytrain.timeline_figure import measure_panels, write_timeline_figure
from tinytrain.train import TrainConfig, training_policy
from tinytrain.weights import load_pretrained


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Dry-run one training step (batch 1, float32) of MobileNetV2-1.0 with a 10-class head under "
                    "dense training, under the dynamic sparse update layer by layer, and under the dynamic update "
                    "with the lean memory schedule that fine-tuning runs (the fastest that fits the 256 KiB arena: "
                    "the frozen front in patches, depthwise convs in place), and draw, side by side, the bytes live "
                    "in the arena at each op (forward layers, the loss, then backward layers in reverse), stacked "
                    "by kind. Every byte is counted by the arena; the top of each panel is its measured whole-step "
                    "peak. Needs matplotlib: pip install -e '.[plot]'.")
    parser.add_argument("--resolution", type=int, default=TrainConfig.resolution,
                        help=f"input side in pixels (default {TrainConfig.resolution}, the fine-tuning default)")
    parser.add_argument("--output", type=Path, default=Path("docs/memory_timeline.png"),
                        help="PNG to write; its folder is created (default docs/memory_timeline.png)")
    parser.add_argument("--weights", choices=("random", "pretrained"), default="random",
                        help="random: a randomly initialised model, needing no data (default; memory depends on "
                             "shapes, not values, so the picture is the same); pretrained: the ImageNet weights "
                             "from $TINYTRAIN_DATA or the user cache")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not plotting_available():
        sys.exit(f"memory_timeline.py draws with matplotlib, an optional extra: {INSTALL_HINT}")
    weights = load_pretrained() if args.weights == "pretrained" else None
    graph = build_mobilenetv2(num_classes=10, resolution=args.resolution, weights=weights)
    dense = training_policy(replace(TrainConfig(), policy="dense"), graph).plan(0, 0)
    dynamic = training_policy(TrainConfig(), graph).plan(0, 0)
    lean = fit_schedule(graph, dynamic, DEFAULT_CAPACITY).schedule
    panels = measure_panels(graph, {"dense, layer by layer": (dense, LAYER_BY_LAYER),
                                    "dynamic, layer by layer": (dynamic, LAYER_BY_LAYER),
                                    "dynamic, lean": (dynamic, lean)})
    write_timeline_figure(panels, f"MobileNetV2-1.0, {args.resolution}x{args.resolution}", args.output)
    for panel in panels:
        memory = panel.memory
        print(f"{panel.title} ({panel.schedule.describe(graph)}): whole-step peak {memory.whole_step_peak_bytes:,} "
              f"B, high water {memory.high_water_bytes:,} B, saved features {memory.feature_bytes:,} B")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
