"""Time every convolution kernel at the shapes a graph gives it: ms per call and GFLOP/s (2 x MACs / time)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinytrain.kernels.conv2d import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from tinytrain.kernels.depthwise import depthwise_backward_input, depthwise_backward_weight, depthwise_forward
from tinytrain.kernels.depthwise_inplace import (depthwise_backward_input_inplace, depthwise_forward_inplace,
                                                 scratch_shape)
from tinytrain.kernels.pointwise import parallel_blocks, pointwise_backward_input
from tinytrain.kernels.relu6 import relu6_backward, relu6_forward

# Patch-based execution runs the front convs on tiles with halos: (op, C in, C out, H, W, stride, pad_top, pad_left).
# An inner tile reads its padding from its neighbours (pad 0); a corner tile pads with zeros. The stride-2 shapes
# are the commonest tiles of the default run at 128x128 (the stem's and features.2's), whose input holds the row
# and column that the last output's third tap reads.
TILE_SHAPES = (("conv2d", 3, 32, 31, 31, 2, 0, 0), ("depthwise", 96, 96, 13, 13, 2, 0, 0),
               ("depthwise", 144, 144, 10, 10, 1, 0, 0), ("depthwise", 32, 32, 18, 18, 1, 1, 1))


@dataclass(frozen=True)
class KernelCase:
    kernel: str
    shape: str  # the input (C, H, W), stride and top/left padding
    calls: int  # layers of the graph with this shape (0: a tile shape, not a whole layer)
    flops: int  # per call: 2 x MACs (relu6: a max and a min per element)
    run: Callable[[], None]
    reset: Callable[[], None]  # restores what an in-place kernel overwrote, before each timed call


@dataclass(frozen=True)
class KernelTiming:
    case: KernelCase
    seconds: float  # the fastest of the timed calls

    @property
    def gflops(self) -> float:
        return self.case.flops / self.seconds / 1e9


def _nothing() -> None:
    pass


def _random(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _spatial_cases(rng, op_type, in_shape, out_shape, weight_shape, stride, pad_top, pad_left, calls):
    """Forward, input and weight gradient of a conv2d or depthwise layer; depthwise also in place."""
    x, out, dout = _random(rng, *in_shape), _random(rng, *out_shape), _random(rng, *out_shape)
    dx = np.empty(in_shape, np.float32)
    weight, bias = _random(rng, *weight_shape), _random(rng, weight_shape[0])
    dweight = np.empty(weight_shape, np.float32)
    channels = np.arange(weight_shape[0], dtype=np.int64)  # dense: every channel
    label = f"{in_shape} s{stride} p{pad_top}{pad_left}"
    flops = 2 * int(np.prod(weight_shape)) * out_shape[1] * out_shape[2]
    geometry = (stride, pad_top, pad_left)
    if op_type == "conv2d":
        return [
            KernelCase("conv2d_forward", label, calls, flops,
                       lambda: conv2d_forward(out, x, weight, bias, *geometry, False), _nothing),
            KernelCase("conv2d_backward_input", label, calls, flops,
                       lambda: conv2d_backward_input(dx, dout, weight, *geometry, False), _nothing),
            KernelCase("conv2d_backward_weight", label, calls, flops,
                       lambda: conv2d_backward_weight(dweight, dout, x, channels, *geometry), _nothing),
        ]
    # in place: one buffer, the output over the first floats of the input (forward) or dout under dx (backward)
    buffer, pristine = np.empty(x.size, np.float32), x.reshape(-1).copy()
    out_in_buffer, x_in_buffer = buffer[:out.size].reshape(out.shape), buffer.reshape(in_shape)
    plane_scratch = np.empty(scratch_shape(in_shape, out_shape), np.float32)
    out_plane_scratch = np.empty(scratch_shape(out_shape, in_shape), np.float32)
    return [
        KernelCase("depthwise_forward", label, calls, flops,
                   lambda: depthwise_forward(out, x, weight, bias, *geometry, False), _nothing),
        KernelCase("depthwise_backward_input", label, calls, flops,
                   lambda: depthwise_backward_input(dx, dout, weight, *geometry, False), _nothing),
        KernelCase("depthwise_backward_weight", label, calls, flops,
                   lambda: depthwise_backward_weight(dweight, dout, x, channels, *geometry), _nothing),
        KernelCase("depthwise_forward_inplace", label, calls, flops,
                   lambda: depthwise_forward_inplace(out_in_buffer, x_in_buffer, plane_scratch, weight, bias,
                                                     *geometry, False),
                   lambda: np.copyto(buffer, pristine)),
        KernelCase("depthwise_backward_input_inplace", label, calls, flops,
                   lambda: depthwise_backward_input_inplace(x_in_buffer, out_in_buffer, out_plane_scratch, weight,
                                                            *geometry),
                   lambda: np.copyto(buffer, pristine)),
    ]


def _pointwise_cases(rng, n_in, n_out, n_pixels, calls):
    dx, dout, weight = _random(rng, n_in, n_pixels), _random(rng, n_out, n_pixels), _random(rng, n_out, n_in)
    label = f"({n_in}, {n_pixels}) <- {n_out}"
    flops = 2 * n_in * n_out * n_pixels
    blocks = parallel_blocks(n_in * n_out * n_pixels, n_in, n_pixels)
    return [KernelCase(f"pointwise_backward_input{'_accumulate' if accumulate else ''}", label, calls, flops,
                       lambda accumulate=accumulate: pointwise_backward_input(dx, dout, weight, accumulate, blocks),
                       _nothing)
            for accumulate in (False, True)]


def _relu6_cases(rng, n_elements, calls):
    x = 8 * _random(rng, n_elements)
    pristine = x.copy()
    mask = np.empty((n_elements + 7) // 8, np.uint8)
    label = f"{n_elements} elements"
    return [KernelCase("relu6_forward", label, calls, 2 * n_elements, lambda: relu6_forward(x, mask, True),
                       lambda: np.copyto(x, pristine)),
            KernelCase("relu6_backward", label, calls, 2 * n_elements, lambda: relu6_backward(x, mask),
                       lambda: np.copyto(x, pristine))]


def kernel_cases(graph, seed: int = 0) -> list[KernelCase]:
    """One case per kernel and distinct layer shape of `graph`, then the conv kernels on TILE_SHAPES."""
    rng = np.random.default_rng(seed)
    spatial, pointwise, relu6 = Counter(), Counter(), Counter()
    for layer in graph.layers:
        in_shape, out_shape = graph.shapes[layer.inputs[0]], graph.shapes[layer.output]
        if layer.op_type in ("conv2d", "depthwise"):
            spatial[(layer.op_type, in_shape, out_shape, layer.weight.shape, layer.stride, layer.padding[0],
                     layer.padding[1])] += 1
        elif layer.op_type == "pointwise":
            pointwise[(in_shape[0], out_shape[0], in_shape[1] * in_shape[2])] += 1
        if getattr(layer, "relu6", False):
            relu6[int(np.prod(out_shape))] += 1
    cases = []
    for key, calls in spatial.items():
        cases += _spatial_cases(rng, *key, calls)
    for key, calls in pointwise.items():
        cases += _pointwise_cases(rng, *key, calls)
    for n_elements, calls in relu6.items():
        cases += _relu6_cases(rng, n_elements, calls)
    for op_type, n_in, n_out, height, width, stride, pad_top, pad_left in TILE_SHAPES:
        out_shape = (n_out, (height + pad_top - 3) // stride + 1, (width + pad_left - 3) // stride + 1)
        weight_shape = (n_out, n_in, 3, 3) if op_type == "conv2d" else (n_out, 3, 3)
        cases += _spatial_cases(rng, op_type, (n_in, height, width), out_shape, weight_shape, stride, pad_top,
                                pad_left, 0)
    return cases


def time_case(case: KernelCase, repeats: int) -> KernelTiming:
    """The fastest of `repeats` timed calls, after one untimed call that compiles or loads the kernel."""
    case.reset()
    case.run()
    best = float("inf")
    for _ in range(repeats):
        case.reset()
        start = time.perf_counter()
        case.run()
        best = min(best, time.perf_counter() - start)
    return KernelTiming(case, best)


@dataclass(frozen=True)
class KernelTotal:
    kernel: str
    seconds: float  # one call per layer of the graph, at each layer's best time
    flops: int

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9


def graph_totals(timings: list[KernelTiming]) -> list[KernelTotal]:
    """Per kernel, the time and work of calling it once on every layer of the graph (tile shapes left out)."""
    seconds, flops = Counter(), Counter()
    for timing in timings:
        seconds[timing.case.kernel] += timing.seconds * timing.case.calls
        flops[timing.case.kernel] += timing.case.flops * timing.case.calls
    return [KernelTotal(kernel, seconds[kernel], flops[kernel]) for kernel in seconds if flops[kernel]]
