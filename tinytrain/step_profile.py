"""Where a training step's time goes: every kernel call of its recorded steps timed by the op it serves, and the
time outside the kernels (the policy's draw, the channel refill, the loop over the recorded calls)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinytrain.engine import SGD, Engine
from tinytrain.kernels.channels import bias_backward, gather_channels
from tinytrain.kernels.channels_last import (conv2d_forward_channels_last, depthwise_forward_channels_last,
                                             pointwise_forward_channels_last)
from tinytrain.kernels.conv2d import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from tinytrain.kernels.depthwise import depthwise_backward_input, depthwise_backward_weight, depthwise_forward
from tinytrain.kernels.depthwise_inplace import depthwise_backward_input_inplace, depthwise_forward_inplace
from tinytrain.kernels.image import normalize_image_forward
from tinytrain.kernels.linear import linear_backward_input, linear_backward_weight, linear_forward
from tinytrain.kernels.pointwise import pointwise_backward_input, pointwise_backward_weight, pointwise_forward
from tinytrain.kernels.pointwise_residual import pointwise_residual_forward
from tinytrain.kernels.pool import global_avg_pool_backward, global_avg_pool_forward
from tinytrain.kernels.relu6 import relu6_backward, relu6_forward
from tinytrain.kernels.residual import add_forward
from tinytrain.plan import LAYER_BY_LAYER
from tinytrain.sparse import Policy

# What a recorded step calls: the kernels, and the engine's per-step calls (which read the step's image, label and
# learning rate). Forward kernels are named by the layer type that runs them, so that its MACs give their GFLOP/s.
_OPS = {
    conv2d_forward: ("forward", "Conv2d"), depthwise_forward: ("forward", "Depthwise"),
    depthwise_forward_inplace: ("forward", "Depthwise in place"), pointwise_forward: ("forward", "Pointwise"),
    pointwise_residual_forward: ("forward", "Pointwise into residual"), linear_forward: ("forward", "Linear"),
    global_avg_pool_forward: ("forward", "GlobalAvgPool"), relu6_forward: ("forward", "ReLU6"),
    gather_channels: ("forward", "gather of saved input channels"), np.add: ("forward", "residual add (tiles)"),
    normalize_image_forward: ("forward", "input normalisation"), Engine._load_image: ("forward", "input normalisation"),
    Engine._copy_image: ("forward", "input frame copy"),
    conv2d_forward_channels_last: ("forward", "Conv2d"), depthwise_forward_channels_last: ("forward", "Depthwise"),
    pointwise_forward_channels_last: ("forward", "Pointwise"),
    Engine._loss_forward: ("loss", "softmax cross-entropy"), Engine._loss_backward: ("loss", "softmax cross-entropy"),
    relu6_backward: ("backward", "ReLU6"), conv2d_backward_input: ("backward", "Conv2d dinput"),
    conv2d_backward_weight: ("backward", "Conv2d dweight"), depthwise_backward_input: ("backward", "Depthwise dinput"),
    depthwise_backward_input_inplace: ("backward", "Depthwise dinput in place"),
    depthwise_backward_weight: ("backward", "Depthwise dweight"),
    pointwise_backward_input: ("backward", "Pointwise dinput"),
    pointwise_backward_weight: ("backward", "Pointwise dweight"),
    linear_backward_input: ("backward", "Linear dinput"), linear_backward_weight: ("backward", "Linear dweight"),
    global_avg_pool_backward: ("backward", "GlobalAvgPool dinput"), bias_backward: ("backward", "dbias"),
    Engine._sgd_step: ("backward", "SGD update"),
    add_forward: ("step", "residual add, gradient sums"), np.copyto: ("step", "array copies"),
    Engine._copy_out: ("step", "host copies"),
}
OUTSIDE_KERNELS = ("step", "outside kernels: draw, channel refill, call loop")


def op_of(kernel: Callable) -> tuple[str, str]:
    """(phase, op) of one recorded call; a bound method of the engine by its function."""
    function = getattr(kernel, "__func__", kernel)
    return _OPS.get(function, ("step", getattr(function, "__name__", repr(function))))


class CallTimer:
    """Set as `engine.call_timer`: runs a recorded step's calls, adding each one's time to its op."""

    def __init__(self):
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self._ops: dict[int, tuple[tuple, list]] = {}  # id of a recorded call tuple -> (that tuple, each call's op)
        self.steps = 0  # recorded steps run
        self.calls = 0  # kernel calls run, over all steps

    def run(self, calls: tuple) -> None:
        cached = self._ops.get(id(calls))
        if cached is None or cached[0] is not calls:  # the tuple is kept, so its id is never another's
            cached = self._ops[id(calls)] = (calls, [op_of(kernel) for kernel, _ in calls])
        ops = cached[1]
        self.steps += 1
        self.calls += len(calls)
        seconds, clock = self.seconds, time.perf_counter
        for (kernel, arguments), op in zip(calls, ops):
            start = clock()
            kernel(*arguments)
            seconds[op] += clock() - start


@dataclass(frozen=True)
class StepProfile:
    ms: dict[tuple[str, str], float]  # (phase, op) -> mean ms per step; OUTSIDE_KERNELS is the rest of the step
    step_ms: float  # mean step, the policy's draw included
    kernel_calls: int  # per step
    forward_macs: dict[str, int]  # layer type -> MACs of all its forward calls, for GFLOP/s; layer by layer only


def profile_training(engine: Engine, policy: Policy, image: np.ndarray, steps: int, sgd: SGD,
                     num_classes: int) -> StepProfile:
    """Mean over `steps` recorded training steps of where the time goes, after two steps that record them (the
    first step of each shape plans and records it, see recorded_step.py). The label cycles with the step."""
    if not engine.replays_steps:
        raise ValueError("the engine does not record its steps (a tracing arena, an op log, or plan_offsets=False): "
                         "profile one with Arena(..., tracing=False)")
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
    if engine.memory_schedule == LAYER_BY_LAYER:  # else patches recompute halos and ops run under other names
        for layer in graph.layers:
            forward_macs[type(layer).__name__] += layer.macs([graph.shapes[name] for name in layer.inputs])
    return StepProfile({op: 1000 * value / steps for op, value in seconds.items()}, 1000 * total / steps,
                       timer.calls // steps, dict(forward_macs))
