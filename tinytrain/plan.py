"""What one training step updates (UpdatePlan), and the schedule that follows from it before any data exists."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinytrain.graph import Graph
from tinytrain.kernels.channel_check import first_invalid_channel, is_every_channel


@dataclass(frozen=True)
class LayerUpdate:
    """The trained part of one layer. Empty `out_channels` means its weight is frozen (bias-only if `bias`)."""

    out_channels: np.ndarray  # (n_out,) int64 weight rows; for depthwise also the channels of the saved input
    in_channels: np.ndarray  # (n_in,) int64 input channels of the saved input; ignored by depthwise
    bias: bool = True

    @property
    def trains_weight(self) -> bool:
        return len(self.out_channels) > 0


@dataclass
class UpdatePlan:
    """Per-layer updates; a layer that is absent is frozen."""

    updates: dict[str, LayerUpdate] = field(default_factory=dict)

    @classmethod
    def dense(cls, graph: Graph) -> UpdatePlan:
        return cls({layer.name: full_update(layer) for layer in graph.layers if layer.has_weight})

    @classmethod
    def frozen(cls) -> UpdatePlan:
        return cls({})


def full_update(layer) -> LayerUpdate:
    return LayerUpdate(np.arange(layer.out_channels, dtype=np.int64), np.arange(layer.in_channels, dtype=np.int64))


def covers_all(channels: np.ndarray, count: int) -> bool:
    """Whether `channels` is every one of `count` channels, in order (checked without allocating: it runs every
    step)."""
    return len(channels) == count and is_every_channel(channels, count)


# Saved-input modes of a trained layer: keep its whole input alive, or keep a compact copy of the chosen channels.
RETAIN, GATHER = "retain", "gather"


@dataclass(frozen=True)
class LayerSchedule:
    runs_backward: bool  # its output needs a gradient
    input_needs_grad: tuple[bool, ...]  # per input: compute a gradient for it (False below the earliest trained layer)
    save_mask: bool  # keep the bit-packed ReLU6 mask for backward
    saved_input: str | None  # RETAIN, GATHER or None
    saved_channels: np.ndarray | None  # (n,) the input channels GATHER copies
    update: LayerUpdate | None


@dataclass
class StepSchedule:
    """The symbolic run of one step: per layer what it saves and computes, per tensor when it dies in forward."""

    layers: list[LayerSchedule]
    last_forward_use: dict[str, int]  # tensor -> index of its last consumer in forward
    retained_by: dict[str, int]  # tensor kept whole for backward -> how many layers hold it


def backward_macs(layer, input_shapes, step: LayerSchedule) -> int:
    """dX costs what forward costs; dW[rows, cols] costs rows * cols * taps per output pixel (chosen channels only)."""
    forward = layer.macs(input_shapes)
    macs = forward if step.input_needs_grad[0] else 0
    update = step.update
    if update is not None and update.trains_weight:
        rows, columns, taps = layer.weight_rows_cols.shape
        columns = columns if layer.selects_input_by_output else len(update.in_channels)
        output_pixels = forward // layer.weight.size
        macs += len(update.out_channels) * columns * taps * output_pixels
    return macs


def check_layer_names(graph: Graph, plan: UpdatePlan) -> None:
    unknown = set(plan.updates) - {layer.name for layer in graph.weighted_layers}
    if unknown:
        raise ValueError(f"update plan names layers the graph has no weights for: {sorted(unknown)}")


def check_channels(layer_name: str, what: str, channels: np.ndarray, count: int, seen: np.ndarray) -> None:
    """A 1-d int64 list of distinct channels in [0, count); `seen` is (>= count,) bool scratch."""
    if channels.dtype != np.int64 or channels.ndim != 1:
        raise ValueError(f"{layer_name}: {what} must be a 1-d int64 array, got {channels.dtype} {channels.shape}")
    position = first_invalid_channel(channels, count, seen)
    if position >= 0:
        channel = channels[position]
        problem = f"out of range [0, {count})" if not 0 <= channel < count else "repeated"
        raise ValueError(f"{layer_name}: {what}[{position}] = {channel} is {problem}")


def schedule_step(graph: Graph, plan: UpdatePlan) -> StepSchedule:
    check_layer_names(graph, plan)
    requires_grad = {graph.input_name: False}
    last_forward_use: dict[str, int] = {}
    retained_by: dict[str, int] = {}
    layers = []
    for index, layer in enumerate(graph.layers):
        update = plan.updates.get(layer.name)
        input_needs_grad = tuple(requires_grad[name] for name in layer.inputs)
        trained = update is not None and (update.trains_weight or update.bias)
        runs_backward = trained or any(input_needs_grad)
        requires_grad[layer.output] = runs_backward
        for name in layer.inputs:
            last_forward_use[name] = index
        saved_input, saved_channels = None, None
        if update is not None and update.trains_weight:
            channels = update.out_channels if layer.selects_input_by_output else update.in_channels
            _check_channels(layer, update, channels)
            if covers_all(channels, layer.in_channels):
                saved_input = RETAIN
                retained_by[layer.inputs[0]] = retained_by.get(layer.inputs[0], 0) + 1
            else:
                saved_input, saved_channels = GATHER, channels
        layers.append(LayerSchedule(runs_backward, input_needs_grad, layer.relu6 and runs_backward, saved_input,
                                    saved_channels, update))
    return StepSchedule(layers, last_forward_use, retained_by)


def _check_channels(layer, update: LayerUpdate, in_channels: np.ndarray) -> None:
    seen = np.zeros(max(layer.out_channels, layer.in_channels), dtype=np.bool_)
    check_channels(layer.name, "out_channels", update.out_channels, layer.out_channels, seen)
    check_channels(layer.name, "in_channels", in_channels, layer.in_channels, seen)


@dataclass(frozen=True)
class PatchSpec:
    """Layers up to `end_layer` (from where the previous stage ended) run tile by tile on a (rows, columns) grid."""

    end_layer: int
    grid: tuple[int, int]


@dataclass(frozen=True)
class MemorySchedule:
    """How a step is executed to save arena bytes; the numbers computed are the layer-by-layer ones.

    `patches`: consecutive patch stages from the first layer on (frozen layers only, see patches.py); each reads the
    previous stage's output whole and leaves its own whole; none runs every layer whole.
    `in_place_depthwise`: a depthwise conv whose input dies with it writes its output over that input, and a
    stride-1 depthwise conv whose weight does not train writes its input gradient over its output gradient.
    `in_place_strided_backward` (with `in_place_depthwise`): so does a strided one, whose input gradient is larger
    than its output gradient: the output gradient is made in a block of the input gradient's size. That block is live
    from the op that writes the output gradient on, so it is a choice for a plan that needs it, not a free saving.
    """

    patches: tuple[PatchSpec, ...] = ()
    in_place_depthwise: bool = False
    in_place_strided_backward: bool = False

    def describe(self, graph: Graph) -> str:
        parts = []
        first = 0
        for spec in self.patches:
            rows, columns = spec.grid
            parts.append(f"{graph.layers[first].name} to {graph.layers[spec.end_layer - 1].name} in {rows}x{columns} "
                         "patches")
            first = spec.end_layer
        if self.in_place_depthwise:
            parts.append("depthwise in place")
        if self.in_place_strided_backward:
            parts.append("strided depthwise backward in place")
        return ", ".join(parts) or "layer by layer"


LAYER_BY_LAYER = MemorySchedule()
