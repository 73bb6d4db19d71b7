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
from tinytrain.sparse import Policy

# What a recorded step calls, by function name: a jitted kernel by that of its Python function, the engine's
# per-step calls (which read the image, label and learning rate of the step) by their method names. Forward kernels
# are named by the layer type that runs them, so that the type's MACs give their GFLOP/s.
_OPS = {
    "_conv2d_forward": ("forward", "Conv2d"), "_depthwise_forward": ("forward", "Depthwise"),
    "_depthwise_forward_inplace": ("forward", "Depthwise in place"), "_pointwise_forward": ("forward", "Pointwise"),
    "_pointwise_residual_forward": ("forward", "Pointwise into residual"), "_linear_forward": ("forward", "Linear"),
    "_global_avg_pool_forward": ("forward", "GlobalAvgPool"), "_relu6_forward": ("forward", "ReLU6"),
    "_gather_channels": ("forward", "gather of saved input channels"), "add": ("forward", "residual add (tiles)"),
    "_load_image": ("forward", "input normalisation"), "_load_frame_window": ("forward", "input normalisation"),
    "_copy_image": ("forward", "input frame copy"), "_load_window": ("forward", "tile loads"),
    "_loss_forward": ("loss", "softmax cross-entropy"), "_loss_backward": ("loss", "softmax cross-entropy"),
    "_relu6_backward": ("backward", "ReLU6"), "_conv2d_backward_input": ("backward", "Conv2d dinput"),
    "_conv2d_backward_weight": ("backward", "Conv2d dweight"),
    "_depthwise_backward_input": ("backward", "Depthwise dinput"),
    "_depthwise_backward_input_inplace": ("backward", "Depthwise dinput in place"),
    "_depthwise_backward_weight": ("backward", "Depthwise dweight"),
    "_pointwise_backward_input": ("backward", "Pointwise dinput"),
    "_pointwise_backward_weight": ("backward", "Pointwise dweight"),
    "_linear_backward_input": ("backward", "Linear dinput"), "_linear_backward_weight": ("backward", "Linear dweight"),
    "_global_avg_pool_backward": ("backward", "GlobalAvgPool dinput"), "_bias_backward": ("backward", "dbias"),
    "_sgd_step": ("backward", "SGD update"),
    "_add_forward": ("step", "residual add, gradient sums"), "copyto": ("step", "array copies"),
    "_copy_out": ("step", "host copies"),
}
OUTSIDE_KERNELS = ("step", "outside kernels: draw, channel refill, call loop")


def op_of(kernel: Callable) -> tuple[str, str]:
    """(phase, op) of one recorded call."""
    if isinstance(kernel, partial):
        kernel = kernel.func
    return _OPS.get(kernel.__name__, ("step", kernel.__name__))


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
