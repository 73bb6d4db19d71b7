"""Draw the arena's memory timeline of one training step, dense beside the dynamic sparse update, to a PNG."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from tinytrain.arena import DEFAULT_CAPACITY
from tinytrain.atomic import atomic_path
from tinytrain.budget import fit_schedule
from tinytrain.memory import StepMemory
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import LAYER_BY_LAYER
from tinytrain.timeline import Timeline, measure_timeline
from tinytrain.train import TrainConfig, training_policy
from tinytrain.weights import load_pretrained

# Stacked bottom to top: what forward keeps first, what backward adds on top. kind -> (legend label, colour)
KIND_STYLE = {
    "input": ("input", "#8c8c8c"),
    "saved": ("saved feature", "#d62728"),
    "activation": ("activation", "#1f77b4"),
    "grad": ("gradient", "#ff7f0e"),
    "wgrad": ("weight gradient", "#2ca02c"),
    "optim": ("optimizer", "#9467bd"),
    "scratch": ("scratch", "#e377c2"),
}


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


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        sys.exit("memory_timeline.py draws with matplotlib, an optional extra: pip install -e '.[plot]'")
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as pyplot
    return pyplot


def kib(nbytes: int) -> str:
    return f"{nbytes / 1024:,.0f} KiB"


def draw_panel(axes, timeline: Timeline, step: StepMemory, title: str, patched_ops: int) -> None:
    ops = range(len(timeline.op_names))
    kinds = list(KIND_STYLE)
    axes.stackplot(ops, [timeline.bytes_of(kind) / 1024 for kind in kinds], step="mid", linewidth=0,
                   colors=[KIND_STYLE[kind][1] for kind in kinds], labels=[KIND_STYLE[kind][0] for kind in kinds])
    peak_op, peak_bytes = timeline.peak_op_index, step.whole_step_peak_bytes
    # Linear, each panel on its own scale: stacked areas only read true on a linear axis (on a log axis a band's
    # thickness depends on what lies beneath it), and dense (~11 MB at 128 px) on dynamic's scale would hide
    # dynamic's detail. The budget line and the peak labels carry the comparison between panels.
    axes.set_ylim(0, peak_bytes / 1024 * 1.18)
    axes.set_xlim(0, len(ops) - 1)
    axes.axhline(DEFAULT_CAPACITY / 1024, color="black", linewidth=1.2)
    budget_height = DEFAULT_CAPACITY / 1024 / axes.get_ylim()[1]  # as a fraction of the panel
    axes.text(len(ops) - 1, DEFAULT_CAPACITY / 1024, f"{DEFAULT_CAPACITY // 1024} KiB arena ({DEFAULT_CAPACITY:,} B) ",
              ha="right", va="top" if budget_height > 0.7 else "bottom", fontsize=8)
    axes.axvline(timeline.loss_op_index, color="black", linestyle="--", linewidth=0.8)
    top = axes.get_ylim()[1]
    if patched_ops:
        # a patch stage's tiles all run at its last layer's op: the ops before hold nothing whole
        axes.axvspan(0, patched_ops - 1, color="#dddddd", zorder=0)
        axes.text((patched_ops - 1) / 2, top * 0.55, "frozen front\nin patches", ha="center", va="center",
                  fontsize=8)
    axes.text(timeline.loss_op_index, top * 0.985, "forward  ", ha="right", va="top", fontsize=8)
    axes.text(timeline.loss_op_index, top * 0.985, "  backward", ha="left", va="top", fontsize=8)
    # the label goes on the side away from the peak, where it covers no bars
    label_x, label_align = (0.97, "right") if peak_op < len(ops) / 2 else (0.03, "left")
    axes.annotate(f"whole-step peak {peak_bytes:,} B ({kib(peak_bytes)})\nat {timeline.op_names[peak_op]}",
                  xy=(peak_op, peak_bytes / 1024), xytext=(label_x, 0.62 if budget_height > 0.7 else 0.90),
                  textcoords="axes fraction",
                  ha=label_align, va="top", fontsize=8, arrowprops={"arrowstyle": "->", "linewidth": 0.8})
    last_busy_op = int(np.flatnonzero(timeline.total_bytes)[-1])
    if last_busy_op < len(ops) - 1:
        # right of the last bar, or flush with the right edge when the gap is too narrow for the text
        x, align = (last_busy_op + 1, "left") if last_busy_op < 0.75 * len(ops) else (len(ops) - 1, "right")
        axes.text(x, top * 0.75, "backward stops:\nearlier layers are frozen ", ha=align, va="center", fontsize=8)
    axes.set_title(f"{title}\nsaved features at most {step.feature_bytes:,} B ({kib(step.feature_bytes)})",
                   fontsize=10)
    axes.set_xlabel("op: forward layers, loss, backward layers in reverse")
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    axes.grid(axis="y", linewidth=0.3)


def save_atomically(figure, path: Path) -> None:
    """An interrupted run leaves the previous picture intact."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=150)


def main(argv=None) -> int:
    args = parse_args(argv)
    pyplot = import_pyplot()
    weights = load_pretrained() if args.weights == "pretrained" else None
    graph = build_mobilenetv2(num_classes=10, resolution=args.resolution, weights=weights)
    dense = training_policy(replace(TrainConfig(), policy="dense"), graph).plan(0, 0)
    dynamic = training_policy(TrainConfig(), graph).plan(0, 0)
    lean = fit_schedule(graph, dynamic, DEFAULT_CAPACITY).schedule
    panels_to_draw = {"dense, layer by layer": (dense, LAYER_BY_LAYER), "dynamic, layer by layer":
                      (dynamic, LAYER_BY_LAYER), "dynamic, lean": (dynamic, lean)}
    measured = {title: measure_timeline(graph, plan, memory_schedule=schedule)
                for title, (plan, schedule) in panels_to_draw.items()}
    figure, panels = pyplot.subplots(1, len(measured), figsize=(18, 5.4))
    for axes, (title, (timeline, step)) in zip(panels, measured.items()):
        schedule = panels_to_draw[title][1]
        patched = schedule.patches[-1].end_layer if schedule.patches else 0
        draw_panel(axes, timeline, step, f"{title}: MobileNetV2-1.0, {args.resolution}x{args.resolution}", patched)
        print(f"{title} ({schedule.describe(graph)}): whole-step peak {step.whole_step_peak_bytes:,} B, high water "
              f"{step.high_water_bytes:,} B, saved features {step.feature_bytes:,} B")
    panels[0].set_ylabel("live arena bytes (KiB)")
    handles, _ = panels[0].get_legend_handles_labels()
    # kinds no op of either step uses (optimizer state with plain SGD, scratch) still get a legend entry, marked
    labels = [label if any(timeline.bytes_of(kind).any() for timeline, _ in measured.values()) else f"{label} (none)"
              for kind, (label, _) in KIND_STYLE.items()]
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=9)
    figure.suptitle("Arena memory over one training step (batch 1, float32), stacked by kind (measured, not "
                    "estimated); each panel on its own scale", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    save_atomically(figure, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
