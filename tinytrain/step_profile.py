"""Where a training step's time goes: every kernel call of its recorded steps timed by the op it serves, and the
time outside the kernels (the policy's draw, the channel refill, the loop over the recorded calls)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from tinytrain.engine import SGD, Engine
from tinytrain.layers import Layer
from tinytrain.sparse import Policy

# Layer methods by what they compute; every method the engine records is one of these.
_LAYER_OPS = {
    "forward": ("forward", ""), "forward_padded": ("forward", ""), "forward_in_place": ("forward", "in place"),
    "forward_into_residual": ("forward", "into residual"), "apply_relu6": ("forward", "ReLU6"),
    "relu6_backward": ("backward", "ReLU6"), "backward_input": ("backward", "dinput"),
    "backward_input_in_place": ("backward", "dinput in place"), "backward_weight": ("backward", "dweight"),
    "backward_bias": ("backward", "dbias"),
}
# Everything else a recorded step calls, by function name (a jitted kernel by that of its Python function).
_OTHER_OPS = {
    "_load_image": ("forward", "input normalisation"), "_load_frame_window": ("forward", "input normalisation"),
    "_copy_image": ("forward", "input frame copy"), "_load_window": ("forward", "tile loads"),
    "_gather_channels": ("forward", "gather of saved input channels"), "add": ("forward", "residual add (tiles)"),
    "copyto": ("step", "array copies"), "_copy_out": ("step", "host copies"),
    "_loss_forward": ("loss", "softmax cross-entropy"), "_loss_backward": ("loss", "softmax cross-entropy"),
    "_add_forward": ("backward", "residual gradient sum"), "_sgd_step": ("backward", "SGD update"),
}
OUTSIDE_KERNELS = ("step", "outside kernels: draw, channel refill, call loop")


def op_of(kernel: Callable) -> tuple[str, str]:
    """(phase, op) of one recorded call: layer methods by layer type, the rest by function name."""
    if isinstance(kernel, partial):
        kernel = kernel.func
    owner = getattr(kernel, "__self__", None)
    name = kernel.__name__
    if isinstance(owner, Layer):
        phase, what = _LAYER_OPS[name]
        return phase, "ReLU6" if what == "ReLU6" else f"{type(owner).__name__} {what}".strip()
    return _OTHER_OPS.get(name, ("step", name))


class CallTimer:
    """Set as `engine.call_timer`: runs a recorded step's calls, adding each one's time to its op."""

    def __init__(self):
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self._ops: dict[int, list[tuple[str, str]]] = {}  # id of a recorded call tuple -> the op of each call
        self.steps = 0  # recorded steps run

    def run(self, calls: tuple) -> None:
        ops = self._ops.get(id(calls))
        if ops is None:
            ops = self._ops[id(calls)] = [op_of(kernel) for kernel, _ in calls]
        self.steps += 1
        seconds, clock = self.seconds, time.perf_counter
        for (kernel, arguments), op in zip(calls, ops):
            start = clock()
            kernel(*arguments)
            seconds[op] += clock() - start


@dataclass(frozen=True)
class StepProfile:
    ms: dict[tuple[str, str], float]  # (phase, op) -> mean ms per step; OUTSIDE_KERNELS is the rest of the step
    step_ms: float  # mean step, the policy's draw included
    forward_macs: dict[str, int]  # layer type -> MACs of all its forward calls, for GFLOP/s


def profile_training(engine: Engine, policy: Policy, image: np.ndarray, steps: int, sgd: SGD,
                     num_classes: int) -> StepProfile:
    """Mean over `steps` recorded training steps of where the time goes, after two steps that record them (the
    first step of each shape plans and records it, see recorded_step.py). The label cycles with the step."""
    for step in range(2):
        engine.train_step(image, step % num_classes, policy.plan(step, 0), sgd)
    timer = CallTimer()
    engine.call_timer = timer
    total = 0.0
    try:
        for step in range(2, 2 + steps):
            start = time.perf_counter()
            engine.train_step(image, step % num_classes, policy.plan(step, 0), sgd)
            total += time.perf_counter() - start
    finally:
        engine.call_timer = None
    if timer.steps != steps:
        raise ValueError(f"{steps - timer.steps} of {steps} profiled steps were not recorded ones (their shape "
                         "changed): the profile would miss their kernels")
    seconds = dict(timer.seconds)
    seconds[OUTSIDE_KERNELS] = total - sum(seconds.values())
    graph = engine.graph
    forward_macs = defaultdict(int)
    for layer in graph.layers:
        forward_macs[type(layer).__name__] += layer.macs([graph.shapes[name] for name in layer.inputs])
    return StepProfile({op: 1000 * value / steps for op, value in seconds.items()}, 1000 * total / steps,
                       dict(forward_macs))
