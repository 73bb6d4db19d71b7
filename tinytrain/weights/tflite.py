"""Import the backbone of a MobileNetV2-1.0 .tflite (int8 or float32), dequantized, into the canonical form, so
that the model a device already runs can be fine-tuned. Parsed with the schema classes of the `tflite` package.

A .tflite holds convolutions with BatchNorm already folded: per unit, a weight (OHWI for CONV_2D, (1, kh, kw, C)
for DEPTHWISE_CONV_2D) and a bias; int8 ones carry per-channel scales (real = scale * (q - zero_point)) and int32
biases at scale input_scale * weight_scale. The canonical form keeps BatchNorm unfolded, so each unit becomes the
identity BatchNorm that folds back to exactly this weight and bias: gamma 1, beta the bias, running mean 0 and
running variance 1 - eps (eps of TF_PREPROCESSING), since gamma / sqrt(var + eps) is then 1.
The 52 backbone convolutions are taken in execution order and checked against layout.UNITS (shape and stride);
what follows them (the ImageNet classifier) is not part of the canonical backbone.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tinytrain.tflite.packages import require

from .canonical import check_tensors
from .checksum import sha256_file
from .errors import WeightsFormatError
from .layout import UNITS, ConvUnit
from .tfslim import NAME
from .types import TF_PREPROCESSING, PretrainedWeights

SOURCE = "tflite"
FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer
# What the flatbuffers reader raises on a damaged file: offsets past the end (struct.error, IndexError), vectors
# that do not fit (ValueError), fields of the wrong kind (TypeError, AttributeError), undecodable names.
PARSE_ERRORS = (struct.error, IndexError, ValueError, TypeError, AttributeError, UnicodeDecodeError, OverflowError)
NOT_MOBILENETV2 = "not a MobileNetV2-1.0"
# TensorType values of schema.fbs this reader dequantizes
DTYPES = {"FLOAT32": np.float32, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32}


def import_tflite(path: str | Path) -> PretrainedWeights:
    """Read the MobileNetV2-1.0 .tflite at `path` into the canonical form (TF preprocessing: inputs in [-1, 1], TF
    "SAME" padding, as TF and Keras models are converted). A file that is not one raises WeightsFormatError."""
    path = Path(path)
    tflite = require("tflite")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise WeightsFormatError(path, f"not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} identifier); pass a "
                                       ".tflite file")
    try:
        convolutions = _convolutions(tflite, data)
    except PARSE_ERRORS as error:
        raise WeightsFormatError(path, f"not a readable TFLite file, truncated or corrupt ({type(error).__name__}: "
                                       f"{error})") from error
    if len(convolutions) < len(UNITS):
        raise WeightsFormatError(path, f"{NOT_MOBILENETV2}: it has {len(convolutions)} convolutions, a MobileNetV2-1.0 "
                                       f"backbone has {len(UNITS)}; pass the .tflite of a MobileNetV2-1.0")
    tensors: dict[str, np.ndarray] = {}
    for unit, convolution in zip(UNITS, convolutions):
        weight, bias = _unit_tensors(path, unit, convolution)
        tensors[f"{unit.torch_conv}.weight"] = weight
        tensors[f"{unit.torch_bn}.weight"] = np.ones(unit.out_channels, np.float32)
        tensors[f"{unit.torch_bn}.bias"] = bias
        tensors[f"{unit.torch_bn}.running_mean"] = np.zeros(unit.out_channels, np.float32)
        tensors[f"{unit.torch_bn}.running_var"] = np.full(unit.out_channels, 1.0 - TF_PREPROCESSING.bn_eps, np.float32)
    check_tensors(tensors, path)
    return PretrainedWeights(NAME, SOURCE, TF_PREPROCESSING, tensors, sha256_file(path))


class _Convolution:
    """One CONV_2D or DEPTHWISE_CONV_2D of the file: its kind, stride and dequantized weight and bias."""

    def __init__(self, index: int, depthwise: bool, stride: int, weight: np.ndarray, bias: np.ndarray):
        self.index = index  # position among the file's operators
        self.depthwise = depthwise
        self.stride = stride
        self.weight = weight  # (K, kh, kw, C) or depthwise (1, kh, kw, C)
        self.bias = bias  # (K,)


def _convolutions(tflite, data: bytes) -> list[_Convolution]:
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("no subgraph")
    subgraph = model.Subgraphs(0)
    if subgraph.OperatorsLength() > len(data) // 4:  # a damaged length would loop for billions of operators
        raise ValueError(f"{subgraph.OperatorsLength()} operators in {len(data)} bytes")
    kinds = {tflite.BuiltinOperator.CONV_2D: False, tflite.BuiltinOperator.DEPTHWISE_CONV_2D: True}
    found = []
    for index in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # the deprecated field holds codes < 127
        if builtin not in kinds:
            continue
        depthwise = kinds[builtin]
        options_class = tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions
        options = options_class()
        table = operator.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        weight = _dequantized(tflite, model, subgraph, operator.Inputs(1))
        bias = _dequantized(tflite, model, subgraph, operator.Inputs(2))
        found.append(_Convolution(index, depthwise, options.StrideH(), weight, bias))
    return found


def _dequantized(tflite, model, subgraph, tensor_index: int) -> np.ndarray:
    """A constant tensor as float32: real = scale * (q - zero_point), per tensor or along its quantized dimension."""
    tensor = subgraph.Tensors(tensor_index)
    type_names = {value: name for name, value in vars(tflite.TensorType).items() if not name.startswith("_")}
    type_name = type_names.get(tensor.Type())
    if type_name not in DTYPES:
        raise ValueError(f"tensor {tensor.Name()!r} has type {type_name}, not one of {', '.join(DTYPES)}")
    shape = tuple(int(size) for size in tensor.ShapeAsNumpy())
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    values = np.frombuffer(np.asarray(raw, np.uint8).tobytes(), dtype=np.dtype(DTYPES[type_name]).newbyteorder("<"))
    values = values.reshape(shape).astype(np.float64)
    quantization = tensor.Quantization()
    if type_name != "FLOAT32" and quantization is not None and quantization.ScaleLength() > 0:
        scale = quantization.ScaleAsNumpy().astype(np.float64)
        zero_point = (quantization.ZeroPointAsNumpy().astype(np.float64) if quantization.ZeroPointLength()
                      else np.zeros_like(scale))
        broadcast = [1] * len(shape)
        if scale.size > 1:
            broadcast[quantization.QuantizedDimension()] = scale.size
        values = (values - zero_point.reshape(broadcast)) * scale.reshape(broadcast)
    return values.astype(np.float32)


def _unit_tensors(path: Path, unit: ConvUnit, convolution: _Convolution) -> tuple[np.ndarray, np.ndarray]:
    """(torch-layout weight, bias) of `unit` from the file's convolution, or WeightsFormatError naming both."""
    k = unit.kernel_size
    expected = (1, k, k, unit.out_channels) if unit.depthwise else (unit.out_channels, k, k, unit.in_channels)
    kind = "DEPTHWISE_CONV_2D" if convolution.depthwise else "CONV_2D"
    if convolution.depthwise != unit.depthwise or convolution.weight.shape != expected or \
            convolution.stride != unit.stride or convolution.bias.shape != (unit.out_channels,):
        raise WeightsFormatError(path, f"{NOT_MOBILENETV2}: operator {convolution.index} ({kind}, weight "
                                       f"{convolution.weight.shape}, stride {convolution.stride}) is where "
                                       f"MobileNetV2-1.0 has {unit.torch_conv} (weight {expected}, stride "
                                       f"{unit.stride}); pass the .tflite of a MobileNetV2-1.0")
    # OHWI (K, kh, kw, C) -> OIHW (K, C, kh, kw); depthwise (1, kh, kw, C) -> (C, 1, kh, kw)
    weight = convolution.weight.transpose((3, 0, 1, 2) if unit.depthwise else (0, 3, 1, 2))
    return np.ascontiguousarray(weight), convolution.bias
