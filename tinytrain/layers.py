"""Graph layers: each owns its frozen parameters (flash) and calls the kernels on arena views it is handed.

Every method that computes takes `call`, which runs each kernel on its final arguments: by default at once; the
engine's also records the call, so that a recorded step calls the kernel itself (recorded_step.py).
"""

from __future__ import annotations

import numpy as np

from tinytrain.kernels.channels import bias_backward
from tinytrain.kernels.channels_last import (conv2d_forward_channels_last, depthwise_forward_channels_last,
                                             pointwise_forward_channels_last)
from tinytrain.kernels.conv2d import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from tinytrain.kernels.depthwise import depthwise_backward_input, depthwise_backward_weight, depthwise_forward
from tinytrain.kernels.depthwise_inplace import depthwise_backward_input_inplace, depthwise_forward_inplace
from tinytrain.kernels.linear import linear_backward_input, linear_backward_weight, linear_forward
from tinytrain.kernels.pointwise import (ALIGNMENT, parallel_blocks, pointwise_backward_input,
                                        pointwise_backward_weight, pointwise_forward)
from tinytrain.kernels.pointwise_residual import pointwise_residual_forward
from tinytrain.kernels.pool import global_avg_pool_backward, global_avg_pool_forward
from tinytrain.kernels.relu6 import relu6_backward, relu6_forward
from tinytrain.kernels.residual import add_forward

Shape = tuple[int, ...]


def call_now(kernel, *arguments) -> None:
    kernel(*arguments)


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after): output ceil(size / stride); odd totals pad more after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_padding(rule: str, size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) for a square input: "tf_same" pads from the input size, "symmetric" k // 2 a side."""
    if rule == "tf_same":
        before, after = same_padding(size, kernel, stride)
    else:
        before, after = kernel // 2, kernel // 2
    return before, before, after, after


class Layer:
    """A node of the graph: reads the tensors named `inputs`, writes the tensor named `output`."""

    has_weight = False
    relu6 = False
    fuses_relu6 = False  # its forward kernel can clip its own output (`clip=True`), when no ReLU6 mask is saved
    op_type = ""  # the name an exported memory plan gives its ops

    def __init__(self, name: str, inputs: tuple[str, ...], output: str):
        self.name = name
        self.inputs = inputs
        self.output = output

    def output_shape(self, input_shapes: list[Shape]) -> Shape:
        raise NotImplementedError

    def macs(self, input_shapes: list[Shape]) -> int:
        return 0


class WeightedLayer(Layer):
    """A layer with a weight and a bias (BatchNorm already folded in), optionally followed by an in-place ReLU6."""

    has_weight = True
    is_convolution = True
    selects_input_by_output = False  # depthwise: the trained channels pick both weight rows and saved input

    def __init__(self, name, inputs, output, weight: np.ndarray, bias: np.ndarray, relu6: bool):
        super().__init__(name, inputs, output)
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.relu6 = relu6

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def weight_rows_cols(self) -> np.ndarray:
        """The weight as (rows, cols, taps), the one layout the SGD kernel updates."""
        return self.weight.reshape(self.weight.shape[0], self.weight.shape[1], -1)

    def dweight_shape(self, n_out: int, n_in: int) -> Shape:
        return (n_out, n_in) + self.weight.shape[2:]

    def apply_relu6(self, out: np.ndarray, mask: np.ndarray, save_mask: bool, call=call_now) -> None:
        if self.relu6:
            call(relu6_forward, out.reshape(-1), mask, save_mask)

    def relu6_backward(self, dout: np.ndarray, mask: np.ndarray, call=call_now) -> None:
        if self.relu6:
            call(relu6_backward, dout.reshape(-1), mask)

    def backward_bias(self, dbias: np.ndarray, dout: np.ndarray, out_channels: np.ndarray, call=call_now) -> None:
        call(bias_backward, dbias, dout.reshape(dout.shape[0], -1), out_channels)


class SpatialConv(WeightedLayer):
    """What a dense and a depthwise k x k convolution share: a stride and a padding (top, left, bottom, right), so
    an output shape, MACs, and the forward of a patch tile, channels last, with the padding of its own origin."""

    fuses_relu6 = True

    def __init__(self, name, inputs, output, weight, bias, stride: int, padding: tuple[int, int, int, int], relu6):
        super().__init__(name, inputs, output, weight, bias, relu6)
        self.stride = stride
        self.padding = padding

    def output_shape(self, input_shapes):
        _, height, width = input_shapes[0]
        top, left, bottom, right = self.padding
        kernel_h, kernel_w = self.weight.shape[-2:]
        return (self.out_channels, conv_output_size(height, kernel_h, self.stride, top, bottom),
                conv_output_size(width, kernel_w, self.stride, left, right))

    def macs(self, input_shapes):
        _, out_h, out_w = self.output_shape(input_shapes)
        return int(self.weight.size) * out_h * out_w

    def forward(self, out, x, clip=False, call=call_now):
        """`clip`: the ReLU6 clipped in the same kernel."""
        raise NotImplementedError

    def channels_last_weight(self) -> np.ndarray:
        """A view of the weight in the layout forward_channels_last reads."""
        raise NotImplementedError

    def forward_channels_last(self, out, x, weight, pad_top, pad_left, clip=False, call=call_now):
        """The forward of a patch tile: out (h, w, K) from x (H, W, C), with `weight` a copy of channels_last_weight()
        and the padding of the tile's origin (patches.py)."""
        raise NotImplementedError


class Conv2d(SpatialConv):
    """Dense k x k convolution (the stem). weight (K, C, kh, kw)."""

    op_type = "conv2d"

    def forward(self, out, x, clip=False, call=call_now):
        call(conv2d_forward, out, x, self.weight, self.bias, self.stride, self.padding[0], self.padding[1], clip)

    def channels_last_weight(self):
        return self.weight.transpose(1, 2, 3, 0)  # (C, kh, kw, K)

    def forward_channels_last(self, out, x, weight, pad_top, pad_left, clip=False, call=call_now):
        call(conv2d_forward_channels_last, out, x, weight, self.bias, self.stride, pad_top, pad_left, clip)

    def backward_input(self, dx, dout, accumulate, call=call_now):
        call(conv2d_backward_input, dx, dout, self.weight, self.stride, self.padding[0], self.padding[1], accumulate)

    def backward_weight(self, dweight, dout, saved_input, out_channels, call=call_now):
        call(conv2d_backward_weight, dweight, dout, saved_input, out_channels, self.stride, self.padding[0],
             self.padding[1])


class Depthwise(SpatialConv):
    """Depthwise k x k convolution. weight (C, kh, kw); channel c reads only input channel c."""

    op_type = "depthwise"

    selects_input_by_output = True

    @property
    def in_channels(self) -> int:
        return self.out_channels

    @property
    def weight_rows_cols(self):
        return self.weight.reshape(self.weight.shape[0], 1, -1)

    def dweight_shape(self, n_out, n_in):
        return (n_out,) + self.weight.shape[1:]

    def forward(self, out, x, clip=False, call=call_now):
        call(depthwise_forward, out, x, self.weight, self.bias, self.stride, self.padding[0], self.padding[1], clip)

    def channels_last_weight(self):
        return self.weight.transpose(1, 2, 0)  # (kh, kw, C)

    def forward_channels_last(self, out, x, weight, pad_top, pad_left, clip=False, call=call_now):
        call(depthwise_forward_channels_last, out, x, weight, self.bias, self.stride, pad_top, pad_left, clip)

    def forward_in_place(self, out, x, scratch, clip=False, call=call_now):
        """`out` overwrites `x`'s own bytes; scratch of scratch_shape(x.shape, out.shape)
        (kernels/depthwise_inplace.py)."""
        call(depthwise_forward_inplace, out, x, scratch, self.weight, self.bias, self.stride, self.padding[0],
             self.padding[1], clip)

    def backward_input_in_place(self, dx, dout, scratch, call=call_now):
        """`dx` is written over the bytes of `dout`, which are its first dout.size floats; scratch of
        scratch_shape(dout.shape, dx.shape)."""
        call(depthwise_backward_input_inplace, dx, dout, scratch, self.weight, self.stride, self.padding[0],
             self.padding[1])

    def backward_input(self, dx, dout, accumulate, call=call_now):
        call(depthwise_backward_input, dx, dout, self.weight, self.stride, self.padding[0], self.padding[1],
             accumulate)

    def backward_weight(self, dweight, dout, saved_input, out_channels, call=call_now):
        call(depthwise_backward_weight, dweight, dout, saved_input, out_channels, self.stride, self.padding[0],
             self.padding[1])


class Pointwise(WeightedLayer):
    """1 x 1 convolution, a matrix product over flattened pixels. weight (K, C)."""

    op_type = "pointwise"
    fuses_relu6 = True

    def output_shape(self, input_shapes):
        _, height, width = input_shapes[0]
        return (self.out_channels, height, width)

    def macs(self, input_shapes):
        _, height, width = input_shapes[0]
        return int(self.weight.size) * height * width

    def forward(self, out, x, clip=False, call=call_now):
        """`clip`: the ReLU6 clipped in the same kernel."""
        out, x = flat_channels(out), flat_channels(x)
        call(pointwise_forward, out, x, self.weight, self.bias, parallel_blocks(out.size * x.shape[0], *out.shape),
             clip)

    def forward_channels_last(self, out, x, clip=False, call=call_now):
        """The forward of a patch tile: out (h, w, K) from x (h, w, C). Its pixels split into blocks for the cores,
        whole ALIGNMENT groups of them (kernels/pointwise.py)."""
        out, x = out.reshape(-1, out.shape[-1]), x.reshape(-1, x.shape[-1])  # (P, K), (P, C)
        n_pixels, n_out = out.shape
        blocks = min(parallel_blocks(out.size * x.shape[1], n_pixels, n_out), max(1, n_pixels // ALIGNMENT))
        call(pointwise_forward_channels_last, out, x, self.weight, self.bias, blocks, clip)

    def forward_into_residual(self, residual, x, call=call_now):
        """residual += this layer's output."""
        residual, x = flat_channels(residual), flat_channels(x)
        call(pointwise_residual_forward, residual, x, self.weight, self.bias,
             parallel_blocks(residual.size * x.shape[0], *residual.shape))

    def backward_input(self, dx, dout, accumulate, call=call_now):
        dx, dout = flat_channels(dx), flat_channels(dout)
        call(pointwise_backward_input, dx, dout, self.weight, accumulate,
             parallel_blocks(dx.size * dout.shape[0], *dx.shape))

    def backward_weight(self, dweight, dout, saved_input, out_channels, call=call_now):
        call(pointwise_backward_weight, dweight, flat_channels(dout), flat_channels(saved_input), out_channels)


class Linear(WeightedLayer):
    """Fully connected classifier. weight (K, C), input (C,)."""

    op_type = "linear"

    is_convolution = False

    def output_shape(self, input_shapes):
        return (self.out_channels,)

    def macs(self, input_shapes):
        return int(self.weight.size)

    def forward(self, out, x, call=call_now):
        call(linear_forward, out, x, self.weight, self.bias)

    def backward_input(self, dx, dout, accumulate, call=call_now):
        call(linear_backward_input, dx, dout, self.weight, accumulate)

    def backward_weight(self, dweight, dout, saved_input, out_channels, call=call_now):
        call(linear_backward_weight, dweight, dout, saved_input, out_channels)


class Add(Layer):
    """Residual add of two same-shaped tensors; its backward hands the output gradient to both inputs."""

    op_type = "add"

    def output_shape(self, input_shapes):
        if input_shapes[0] != input_shapes[1]:
            raise ValueError(f"{self.name}: residual add of different shapes {input_shapes[0]} and {input_shapes[1]}")
        return input_shapes[0]

    def forward(self, out, a, b, call=call_now):
        call(add_forward, out.reshape(-1), a.reshape(-1), b.reshape(-1))


class GlobalAvgPool(Layer):
    """Mean over all pixels of each channel: (C, H, W) -> (C,)."""

    op_type = "pool"

    def output_shape(self, input_shapes):
        return (input_shapes[0][0],)

    def forward(self, out, x, call=call_now):
        call(global_avg_pool_forward, out, flat_channels(x))

    def backward_input(self, dx, dout, accumulate, call=call_now):
        call(global_avg_pool_backward, flat_channels(dx), dout, accumulate)


def flat_channels(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, H*W) view."""
    return x.reshape(x.shape[0], -1)
