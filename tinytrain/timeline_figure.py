"""The memory timeline of training steps as a PNG: one panel per step, the live arena bytes of each op stacked by
kind, each panel on its own scale with the 256 KiB budget drawn across it (matplotlib, optional: the `plot` extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytrain.arena import DEFAULT_CAPACITY
from tinytrain.atomic import atomic_path
from tinytrain.graph import Graph
from tinytrain.memory import StepMemory
from tinytrain.plan import MemorySchedule, UpdatePlan
from tinytrain.timeline import Timeline, measure_timeline

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


@dataclass(frozen=True)
class TimelinePanel:
    title: str
    schedule: MemorySchedule
    timeline: Timeline
    memory: StepMemory  # the dry run the timeline was checked against


def measure_panels(graph: Graph, steps: dict[str, tuple[UpdatePlan, MemorySchedule]]) -> list[TimelinePanel]:
    """One panel per step `title -> (plan, memory schedule)`, each measured in the arena."""
    panels = []
    for title, (plan, schedule) in steps.items():
        timeline, memory = measure_timeline(graph, plan, memory_schedule=schedule)
        panels.append(TimelinePanel(title, schedule, timeline, memory))
    return panels


def write_timeline_figure(panels: list[TimelinePanel], subtitle: str, path: Path) -> None:
    """The panels side by side, titled '<panel title>: <subtitle>', into the PNG `path` (written atomically: an
    interrupted run leaves the previous picture intact)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as pyplot

    figure, axes = pyplot.subplots(1, len(panels), figsize=(6 * len(panels), 5.4), squeeze=False)
    axes = axes[0]
    for panel_axes, panel in zip(axes, panels):
        patched = panel.schedule.patches[-1].end_layer if panel.schedule.patches else 0
        _draw_panel(panel_axes, panel.timeline, panel.memory, f"{panel.title}: {subtitle}", patched)
    axes[0].set_ylabel("live arena bytes (KiB)")
    handles, _ = axes[0].get_legend_handles_labels()
    # kinds no op of any step uses (optimizer state with plain SGD, scratch) still get a legend entry, marked
    labels = [label if any(panel.timeline.bytes_of(kind).any() for panel in panels) else f"{label} (none)"
              for kind, (label, _) in KIND_STYLE.items()]
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=9)
    figure.suptitle("Arena memory over one training step (batch 1, float32), stacked by kind (measured, not "
                    "estimated); each panel on its own scale", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(Path(path)) as temporary:
        figure.savefig(temporary, format="png", dpi=150)
    pyplot.close(figure)


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:,.0f} KiB"


def _draw_panel(axes, timeline: Timeline, step: StepMemory, title: str, patched_ops: int) -> None:
    ops = range(len(timeline.op_names))
    kinds = list(KIND_STYLE)
    axes.stackplot(ops, [timeline.bytes_of(kind) / 1024 for kind in kinds], step="mid", linewidth=0,
                   colors=[KIND_STYLE[kind][1] for kind in kinds], labels=[KIND_STYLE[kind][0] for kind in kinds])
    peak_op, peak_bytes = timeline.peak_op_index, step.whole_step_peak_bytes
    # Linear, each panel on its own scale: stacked areas only read true on a linear axis (on a log axis a band's
    # thickness depends on what lies beneath it), and dense (~11 MB at 128 px) on dynamic's scale would hide
    # dynamic's detail. The budget line and the peak labels carry the comparison between panels, so a panel whose
    # peak is far below the budget still reaches up to it.
    axes.set_ylim(0, max(peak_bytes * 1.18, DEFAULT_CAPACITY * 1.08) / 1024)
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
    axes.annotate(f"whole-step peak {peak_bytes:,} B ({_kib(peak_bytes)})\nat {timeline.op_names[peak_op]}",
                  xy=(peak_op, peak_bytes / 1024), xytext=(label_x, 0.62 if budget_height > 0.7 else 0.90),
                  textcoords="axes fraction",
                  ha=label_align, va="top", fontsize=8, arrowprops={"arrowstyle": "->", "linewidth": 0.8})
    last_busy_op = int(np.flatnonzero(timeline.total_bytes)[-1])
    if last_busy_op < len(ops) - 1:
        # right of the last bar, or flush with the right edge when the gap is too narrow for the text
        x, align = (last_busy_op + 1, "left") if last_busy_op < 0.75 * len(ops) else (len(ops) - 1, "right")
        axes.text(x, top * 0.75, "backward stops:\nearlier layers are frozen ", ha=align, va="center", fontsize=8)
    axes.set_title(f"{title}\nsaved features at most {step.feature_bytes:,} B ({_kib(step.feature_bytes)})",
                   fontsize=10)
    axes.set_xlabel("op: forward layers, loss, backward layers in reverse")
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    axes.grid(axis="y", linewidth=0.3)
