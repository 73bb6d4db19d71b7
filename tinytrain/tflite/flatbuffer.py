"""A TFLite model as plain records (tensors, operators), serialized with the schema classes of the `tflite` package.

The records follow schema.fbs: a Model holds operator codes, one SubGraph (tensors, operators, inputs, outputs) and
buffers; buffer 0 is the empty one that every non-constant tensor points to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .packages import require

SCHEMA_VERSION = 3  # Model.version: the flatbuffer schema in use since TFLite 1.0
FILE_IDENTIFIER = b"TFL3"  # bytes 4 to 8 of every TFLite flatbuffer
BUFFER_ALIGNMENT = 16  # schema.fbs: Buffer.data is force_align 16, so kernels may read it in place


@dataclass(frozen=True)
class Quantization:
    """real = scale * (quantized - zero_point), per tensor (one scale) or per channel along `axis`."""

    scale: np.ndarray  # (1,) or (channels,) float32
    zero_point: np.ndarray  # same shape, int64
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype  # float32, int8 or int32
    data: np.ndarray | None = None  # a constant's values, in `shape`; None for activations
    quantization: Quantization | None = None


@dataclass(frozen=True)
class Options:
    """An operator's builtin options: the union member's type name and its fields, as schema.fbs spells them
    (e.g. "Conv2DOptions", {"Padding": 0, "StrideW": 2}); the writer calls tflite.<type>Add<field> for each."""

    type_name: str
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Operator:
    builtin: str  # BuiltinOperator name, e.g. "CONV_2D"
    inputs: tuple[int, ...]  # tensor indices
    outputs: tuple[int, ...]
    options: Options | None = None
    version: int = 1  # the kernel version a runtime must provide (operator versioning)


@dataclass
class ModelRecord:
    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    description: str = ""

    def add_tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1


_TENSOR_TYPES = {np.dtype(np.float32): "FLOAT32", np.dtype(np.int8): "INT8", np.dtype(np.int32): "INT32"}


def serialize(model: ModelRecord) -> bytes:
    """The flatbuffer bytes of `model`, with the TFLite file identifier."""
    flatbuffers = require("flatbuffers")
    tflite = require("tflite")
    builder = flatbuffers.Builder(1 << 20)
    constants = [tensor for tensor in model.tensors if tensor.data is not None]
    buffer_of = {id(tensor): index + 1 for index, tensor in enumerate(constants)}  # buffer 0 stays empty
    buffers = [_buffer(builder, tflite, None)] + [_buffer(builder, tflite, tensor.data) for tensor in constants]
    tensors = [_tensor(builder, tflite, tensor, buffer_of.get(id(tensor), 0)) for tensor in model.tensors]
    builtins = sorted({(operator.builtin, operator.version) for operator in model.operators})
    codes = [_operator_code(builder, tflite, name, version) for name, version in builtins]
    opcode_index = {key: index for index, key in enumerate(builtins)}
    operators = [_operator(builder, tflite, operator, opcode_index[(operator.builtin, operator.version)])
                 for operator in model.operators]
    name = builder.CreateString("main")
    tensor_vector = _offsets(builder, tensors)
    operator_vector = _offsets(builder, operators)
    inputs = _int32_vector(builder, model.inputs)
    outputs = _int32_vector(builder, model.outputs)
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, tensor_vector)
    tflite.SubGraphAddInputs(builder, inputs)
    tflite.SubGraphAddOutputs(builder, outputs)
    tflite.SubGraphAddOperators(builder, operator_vector)
    tflite.SubGraphAddName(builder, name)
    subgraph = tflite.SubGraphEnd(builder)
    code_vector = _offsets(builder, codes)
    subgraph_vector = _offsets(builder, [subgraph])
    buffer_vector = _offsets(builder, buffers)
    description = builder.CreateString(model.description)
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(builder, code_vector)
    tflite.ModelAddSubgraphs(builder, subgraph_vector)
    tflite.ModelAddDescription(builder, description)
    tflite.ModelAddBuffers(builder, buffer_vector)
    builder.Finish(tflite.ModelEnd(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _offsets(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):  # flatbuffers are built back to front
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _int32_vector(builder, values) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype=np.int32))


def _buffer(builder, tflite, data: np.ndarray | None) -> int:
    vector = None
    if data is not None:
        raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()  # little-endian
        builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
        builder.head -= len(raw)
        builder.Bytes[builder.head:builder.head + len(raw)] = raw
        vector = builder.EndVector()
    tflite.BufferStart(builder)
    if vector is not None:
        tflite.BufferAddData(builder, vector)
    return tflite.BufferEnd(builder)


def _tensor(builder, tflite, tensor: Tensor, buffer: int) -> int:
    name = builder.CreateString(tensor.name)
    shape = _int32_vector(builder, tensor.shape)
    quantization = None
    if tensor.quantization is not None:
        scale = builder.CreateNumpyVector(np.asarray(tensor.quantization.scale, dtype=np.float32))
        zero_point = builder.CreateNumpyVector(np.asarray(tensor.quantization.zero_point, dtype=np.int64))
        tflite.QuantizationParametersStart(builder)
        tflite.QuantizationParametersAddScale(builder, scale)
        tflite.QuantizationParametersAddZeroPoint(builder, zero_point)
        tflite.QuantizationParametersAddQuantizedDimension(builder, tensor.quantization.axis)
        quantization = tflite.QuantizationParametersEnd(builder)
    tflite.TensorStart(builder)
    tflite.TensorAddShape(builder, shape)
    tflite.TensorAddType(builder, getattr(tflite.TensorType, _TENSOR_TYPES[np.dtype(tensor.dtype)]))
    tflite.TensorAddBuffer(builder, buffer)
    tflite.TensorAddName(builder, name)
    if quantization is not None:
        tflite.TensorAddQuantization(builder, quantization)
    return tflite.TensorEnd(builder)


def _operator_code(builder, tflite, builtin: str, version: int) -> int:
    code = getattr(tflite.BuiltinOperator, builtin)
    tflite.OperatorCodeStart(builder)
    # Codes below 127 also go in the old int8 field, which readers of older schemas still look at.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, 127))
    tflite.OperatorCodeAddBuiltinCode(builder, code)
    tflite.OperatorCodeAddVersion(builder, version)
    return tflite.OperatorCodeEnd(builder)


def _operator(builder, tflite, operator: Operator, opcode_index: int) -> int:
    options = None
    if operator.options is not None:
        type_name = operator.options.type_name
        getattr(tflite, f"{type_name}Start")(builder)
        for name, value in operator.options.fields.items():
            getattr(tflite, f"{type_name}Add{name}")(builder, value)
        options = getattr(tflite, f"{type_name}End")(builder)
    inputs = _int32_vector(builder, operator.inputs)
    outputs = _int32_vector(builder, operator.outputs)
    tflite.OperatorStart(builder)
    tflite.OperatorAddOpcodeIndex(builder, opcode_index)
    tflite.OperatorAddInputs(builder, inputs)
    tflite.OperatorAddOutputs(builder, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(builder, getattr(tflite.BuiltinOptions, operator.options.type_name))
        tflite.OperatorAddBuiltinOptions(builder, options)
    return tflite.OperatorEnd(builder)
