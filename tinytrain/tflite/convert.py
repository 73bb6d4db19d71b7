"""A tinytrain graph as a TFLite model: float32 as trained (BatchNorm is already folded), or full-integer int8.

Layouts change from tinytrain's (C, H, W) to TFLite's NHWC: activations (1, H, W, C), conv weights OHWI
(K, kh, kw, C), depthwise weights (1, kh, kw, C). The input is the preprocessed image, (pixel / 255 - mean) / std,
as the graph takes it; the int8 model takes it quantized with the input tensor's scale and zero point.
"""

from __future__ import annotations

import numpy as np

from tinytrain.graph import Graph
from tinytrain.layers import Add, Conv2d, Depthwise, GlobalAvgPool, Layer, Linear, Pointwise, SpatialConv, same_padding

from .flatbuffer import ModelRecord, Operator, Options, Quantization, Tensor
from .quantization import Calibration, activation_quantizations, quantize_layer

# ActivationFunctionType and Padding values of schema.fbs
NO_ACTIVATION, RELU6 = 0, 3
SAME, VALID = 0, 1
# Operator versions for int8 kernels (TFLite's op versioning: the int8 variant of each op); float32 ops are version 1.
INT8_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MEAN": 2, "FULLY_CONNECTED": 4, "PAD": 3}


class ExportError(ValueError):
    """A graph that has no TFLite equivalent here (a layer type the exporter does not know)."""


def graph_to_tflite(graph: Graph, calibration: Calibration | None = None) -> ModelRecord:
    """The model of `graph`: float32 when `calibration` is None, else int8 quantized as `calibration` says
    (quantization.calibrate)."""
    return _Converter(graph, calibration).model


class _Converter:
    def __init__(self, graph: Graph, calibration: Calibration | None):
        self.graph = graph
        self.calibration = calibration
        self.model = ModelRecord()
        self.index: dict[str, int] = {}  # tinytrain tensor name -> TFLite tensor index
        # int8 only: tinytrain tensor name -> its quantization
        self.quantization = {} if calibration is None else activation_quantizations(graph, calibration)
        self.index[graph.input_name] = self._activation(graph.input_name)
        for layer in graph.layers:
            self._layer(layer)
        self.model.inputs = (self.index[graph.input_name],)
        self.model.outputs = (self.index[graph.output_name],)
        mean, std = graph.preprocessing.mean, graph.preprocessing.std
        self.model.description = (f"tinytrain {'int8' if self.int8 else 'float32'}: input (1, H, W, 3) RGB = "
                                  f"(pixel / 255 - mean) / std, mean {mean}, std {std}")

    @property
    def int8(self) -> bool:
        return self.calibration is not None

    def _activation(self, name: str) -> int:
        """A new activation tensor for tinytrain tensor `name`, NHWC, quantized as activation_quantizations says."""
        shape = self.graph.shapes[name]
        nhwc = (1,) + shape[1:] + shape[:1] if len(shape) == 3 else (1,) + shape
        return self.model.add_tensor(Tensor(name, nhwc, np.int8 if self.int8 else np.float32,
                                            quantization=self.quantization.get(name)))

    def _constant(self, name: str, data: np.ndarray, quantization: Quantization | None = None) -> int:
        return self.model.add_tensor(Tensor(name, data.shape, data.dtype, data, quantization))

    def _operator(self, builtin: str, inputs: tuple[int, ...], output: int, options: Options | None) -> None:
        version = INT8_VERSIONS[builtin] if self.int8 else 1
        self.model.operators.append(Operator(builtin, inputs, (output,), options, version))

    def _layer(self, layer: Layer) -> None:
        if isinstance(layer, (Conv2d, Depthwise, Pointwise)):
            self._convolution(layer)
        elif isinstance(layer, Add):
            output = self._activation(layer.output)
            self._operator("ADD", tuple(self.index[name] for name in layer.inputs), output,
                           Options("AddOptions", {"FusedActivationFunction": NO_ACTIVATION}))
            self.index[layer.output] = output
        elif isinstance(layer, GlobalAvgPool):
            axes = self._constant(f"{layer.name}/axes", np.array([1, 2], np.int32))  # H and W of NHWC
            output = self._activation(layer.output)
            self._operator("MEAN", (self.index[layer.inputs[0]], axes), output,
                           Options("ReducerOptions", {"KeepDims": False}))
            self.index[layer.output] = output
        elif isinstance(layer, Linear):
            self._linear(layer)
        else:
            raise ExportError(f"layer {layer.name!r} is a {type(layer).__name__}, which the TFLite export does not "
                              "know; export a MobileNetV2 graph")

    def _convolution(self, layer: SpatialConv | Pointwise) -> None:
        source = layer.inputs[0]
        x = self.index[source]
        builtin, type_name, channel_axis = "CONV_2D", "Conv2DOptions", 0
        if isinstance(layer, Depthwise):
            builtin, type_name, channel_axis = "DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions", 3
        stride, padding = 1, SAME
        if isinstance(layer, SpatialConv):
            stride = layer.stride
            x, padding = self._padding(layer, x, source)
        weight_index, bias_index = self._weight_and_bias(layer, channel_axis, source)
        output = self._activation(layer.output)
        fields = {"Padding": padding, "StrideW": stride, "StrideH": stride,
                  "FusedActivationFunction": RELU6 if layer.relu6 else NO_ACTIVATION,
                  "DilationWFactor": 1, "DilationHFactor": 1}
        if isinstance(layer, Depthwise):
            fields["DepthMultiplier"] = 1
        self._operator(builtin, (x, weight_index, bias_index), output, Options(type_name, fields))
        self.index[layer.output] = output

    def _padding(self, layer: SpatialConv, x: int, source: str) -> tuple[int, int]:
        """(input tensor, Padding): SAME or VALID when the layer's padding is one of them, else an explicit PAD
        (zeros; in int8 the input's zero point) before a VALID convolution."""
        _, height, width = self.graph.shapes[source]
        kernel_h, kernel_w = layer.weight.shape[-2:]
        top, left, bottom, right = layer.padding
        if (top, bottom) == same_padding(height, kernel_h, layer.stride) and \
                (left, right) == same_padding(width, kernel_w, layer.stride):
            return x, SAME
        if not any(layer.padding):
            return x, VALID
        paddings = self._constant(f"{layer.name}/paddings", np.array([[0, 0], [top, bottom], [left, right], [0, 0]],
                                                                     np.int32))
        shape = self.model.tensors[x].shape
        padded = self.model.add_tensor(Tensor(f"{layer.name}/padded", (1, shape[1] + top + bottom,
                                                                         shape[2] + left + right, shape[3]),
                                              self.model.tensors[x].dtype,
                                              quantization=self.quantization.get(source)))
        self._operator("PAD", (x, paddings), padded, None)
        return padded, VALID

    def _weight_and_bias(self, layer, channel_axis: int, source: str) -> tuple[int, int]:
        """The weight in TFLite's layout and the bias, as constants: float32, or int8 per output channel (along
        `channel_axis` of that layout) and int32."""
        if not self.int8:
            return (self._constant(f"{layer.name}/weight", _tflite_layout(layer, layer.weight)),
                    self._constant(f"{layer.name}/bias", layer.bias.copy()))
        quantized = quantize_layer(layer, self.quantization[source], self.calibration)
        zeros = np.zeros(len(quantized.bias), np.int64)
        return (self._constant(f"{layer.name}/weight", _tflite_layout(layer, quantized.weight),
                               Quantization(quantized.weight_scale, zeros, channel_axis)),
                self._constant(f"{layer.name}/bias", quantized.bias, Quantization(quantized.bias_scale, zeros, 0)))

    def _linear(self, layer: Linear) -> None:
        source = layer.inputs[0]
        weight_index, bias_index = self._weight_and_bias(layer, 0, source)  # (K, C)
        output = self._activation(layer.output)
        self._operator("FULLY_CONNECTED", (self.index[source], weight_index, bias_index), output,
                       Options("FullyConnectedOptions", {"FusedActivationFunction": NO_ACTIVATION}))
        self.index[layer.output] = output


def _tflite_layout(layer: Layer, weight: np.ndarray) -> np.ndarray:
    """A weight of `layer`, in its tinytrain layout, in TFLite's."""
    if isinstance(layer, Depthwise):
        return np.ascontiguousarray(weight.transpose(1, 2, 0)[np.newaxis])  # (C, kh, kw) -> (1, kh, kw, C)
    if isinstance(layer, Conv2d):
        return np.ascontiguousarray(weight.transpose(0, 2, 3, 1))  # (K, C, kh, kw) -> (K, kh, kw, C)
    if isinstance(layer, Pointwise):
        return np.ascontiguousarray(weight[:, np.newaxis, np.newaxis, :])  # (K, C) -> (K, 1, 1, C)
    return weight  # Linear: (K, C), as FULLY_CONNECTED has it
