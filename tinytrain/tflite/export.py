"""Export a graph to a .tflite file: float32, or int8 calibrated on images of its task; written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tinytrain.atomic import atomic_path
from tinytrain.data import Augmenter
from tinytrain.graph import Graph

from .convert import graph_to_tflite
from .flatbuffer import Quantization, serialize
from .equalization import equalize
from .quantization import Calibration, calibrate, channel_ranges
from .reconstruction import fit_to_int8_inputs

DEFAULT_CALIBRATION_IMAGES = 500


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    model_bytes: int  # size of the flatbuffer (flash on a device)
    operators: dict[str, int]  # builtin -> count
    calibration_images: int  # 0: a float32 model
    input_shape: tuple[int, ...]  # (1, H, W, C)
    output_shape: tuple[int, ...]  # (1, classes)
    input_quantization: Quantization | None  # int8: how the preprocessed input is quantized
    output_quantization: Quantization | None  # int8: how the logits are
    mean: tuple[float, ...]  # the preprocessing the input must have had: (pixel / 255 - mean) / std
    std: tuple[float, ...]


def export_tflite(graph: Graph, output: str | Path, calibration: Augmenter | None = None,
                  progress: bool = True) -> ExportSummary:
    """Write `graph` to `output`: float32, or int8 when `calibration` yields the images (uint8 (H, W, C) at the
    graph's resolution) that set its activation ranges. The int8 model is of the graph with its linear bottlenecks
    equalized (equalization.py): the same float function, whose channels share one scale better; its first layers'
    weights are fitted to the inputs the int8 model gives them (reconstruction.py)."""
    quantization = None
    if calibration is not None:
        graph, quantization = prepare_int8(graph, calibration, progress)
    model = graph_to_tflite(graph, quantization)
    data = serialize(model)
    output = Path(output)
    with atomic_path(output) as temporary:
        temporary.write_bytes(data)
    operators: dict[str, int] = {}
    for operator in model.operators:
        operators[operator.builtin] = operators.get(operator.builtin, 0) + 1
    input_tensor, output_tensor = model.tensors[model.inputs[0]], model.tensors[model.outputs[0]]
    return ExportSummary(output, len(data), operators, len(calibration) if quantization is not None else 0,
                         input_tensor.shape, output_tensor.shape, input_tensor.quantization,
                         output_tensor.quantization, graph.preprocessing.mean, graph.preprocessing.std)


def prepare_int8(graph: Graph, calibration: Augmenter, progress: bool = True) -> tuple[Graph, Calibration]:
    """The graph an int8 export quantizes (its linear bottlenecks equalized) and its calibration over the images
    `calibration` yields: activation ranges, and the first layers' weights fitted to the int8 model's inputs."""
    def images():
        return (image for image, _ in calibration.epoch(0))

    graph = equalize(graph, channel_ranges(graph, images(), len(calibration), progress))
    ranges = calibrate(graph, images(), len(calibration), progress)
    return graph, fit_to_int8_inputs(graph, ranges, images, len(calibration), progress)


def describe_export(summary: ExportSummary, class_names: tuple[str, ...]) -> str:
    """What an export wrote, in lines a person reads: the file, the operators, the input and the output."""
    kind = f"int8, calibrated on {summary.calibration_images:,} images" if summary.calibration_images else "float32"
    operators = ", ".join(f"{name} {count}" for name, count in sorted(summary.operators.items()))
    lines = [f"wrote {summary.path}: {kind}, {summary.model_bytes:,} B, {sum(summary.operators.values())} operators "
             f"({operators})",
             f"input {summary.input_shape} {_encoding(summary.input_quantization)}: x = (pixel / 255 - mean) / std, "
             f"RGB, mean {summary.mean}, std {summary.std}",
             f"output {summary.output_shape} logits {_encoding(summary.output_quantization)}, classes "
             f"{', '.join(class_names)}"]
    return "\n".join(lines)


def _encoding(quantization: Quantization | None) -> str:
    if quantization is None:
        return "float32"
    zero_point = int(quantization.zero_point[0])
    return f"int8 (x = {float(quantization.scale[0]):.6g} * (q {'+' if zero_point < 0 else '-'} {abs(zero_point)}))"
