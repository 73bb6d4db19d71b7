"""A training step recorded once and run again: its kernel calls on planned arena views, and the channel arrays
that each later step refills with its own draw.

A step's allocations depend only on its shape (which layers train, how many channels, whether a saved input is
kept whole), never on which channels were drawn. So once a step of a shape has run at planned offsets, the next
step of that shape makes the same arena views and calls the same kernels with them: only the channel index arrays,
the image, the label and the learning rate change, and the recorded calls read those from where they are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinytrain.graph import Graph
from tinytrain.plan import LayerUpdate, UpdatePlan, check_channels, check_layer_names, covers_all


def plan_shape(graph: Graph, plan: UpdatePlan) -> tuple:
    """What decides a step's schedule and allocations, read off the plan: per trained layer, its channel counts,
    its bias, and whether its saved input is the whole input (RETAIN) rather than a gathered copy."""
    check_layer_names(graph, plan)
    shape = []
    for name, update in plan.updates.items():
        layer = graph.layer(name)
        saved = update.out_channels if layer.selects_input_by_output else update.in_channels
        whole = len(saved) == layer.in_channels and covers_all(saved, layer.in_channels)
        shape.append((name, len(update.out_channels), len(update.in_channels), update.bias, whole))
    return tuple(shape)


class ChannelSlots:
    """The channel arrays a recorded step reads: copies of the first plan's, refilled in place by every later plan
    of the same shape after the same checks schedule_step makes (in range, none repeated), without allocating.

    A read-only array that owns its data, once refilled (a policy's fixed part, such as every row of a layer whose
    input channels are drawn), cannot have changed since: it is not checked and copied again while plans keep
    passing the same one.
    """

    def __init__(self, graph: Graph, plan: UpdatePlan):
        self.graph = graph
        self.plan = UpdatePlan({name: LayerUpdate(update.out_channels.copy(), update.in_channels.copy(), update.bias)
                                for name, update in plan.updates.items()})
        widest = max((max(layer.out_channels, layer.in_channels) for layer in graph.weighted_layers), default=0)
        self._seen = np.zeros(widest, dtype=np.bool_)  # scratch of the repeat check
        self._held: dict[tuple[str, str], np.ndarray] = {}  # (layer, what) -> the unchanging array its slot copies

    def refill(self, plan: UpdatePlan) -> None:
        for name, slot in self.plan.updates.items():
            update = plan.updates[name]
            layer = self.graph.layer(name)
            self._refill(name, "out_channels", slot.out_channels, update.out_channels, layer.out_channels)
            if not layer.selects_input_by_output:  # depthwise ignores in_channels
                self._refill(name, "in_channels", slot.in_channels, update.in_channels, layer.in_channels)

    def _refill(self, name: str, what: str, slot: np.ndarray, channels: np.ndarray, count: int) -> None:
        unchanging = not channels.flags.writeable and channels.base is None
        if unchanging and self._held.get((name, what)) is channels:
            return
        check_channels(name, what, channels, count, self._seen)
        np.copyto(slot, channels)
        if unchanging:
            self._held[(name, what)] = channels
        else:
            self._held.pop((name, what), None)


@dataclass(frozen=True)
class RecordedStep:
    calls: tuple[tuple[Callable, tuple], ...]  # (kernel, arguments) in the order the step ran them
    channels: ChannelSlots | None  # None for inference, which trains nothing
