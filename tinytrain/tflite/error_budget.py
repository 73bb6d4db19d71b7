"""Where an int8 model's error comes from, measured in float: the graph the export quantizes, run with its weights
rounded as the export rounds them, with its activations rounded to their int8 grids, with both, and with one
activation at a time rounded, each against its float logits on the same images.

Rounding is emulated (round(x / scale) + zero point, saturated, then back to float), so the figures are of the
quantization itself, not of a runtime's integer arithmetic; the real runtimes' agreement is agreement.py's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tinytrain.graph import Graph
from tinytrain.layers import WeightedLayer

from .emulation import round_to_grid, rounded_layer, run_layer
from .flatbuffer import Quantization
from .quantization import Calibration, activation_quantizations


@dataclass(frozen=True)
class Rounding:
    """What rounding some of the model did to its logits over the images."""

    relative_rms: float  # RMS of the logit change over the RMS of the float logits
    top1_agreement: float  # fraction of images whose top-1 class stayed the float one


@dataclass(frozen=True)
class TensorRounding:
    tensor: str
    shape: tuple[int, ...]
    step: float  # its int8 scale: the real value of one level
    rounding: Rounding


@dataclass(frozen=True)
class ErrorBudget:
    images: int
    weights: Rounding  # the int8 weights and int32 biases, activations float
    activations: Rounding  # every activation on its int8 grid, weights float
    both: Rounding
    by_tensor: list[TensorRounding]  # each activation rounded alone, largest error first


def rounded_weights_graph(graph: Graph, calibration: Calibration) -> Graph:
    """A copy of `graph` whose weights and biases are the export's int8 and int32 ones, dequantized."""
    grids = activation_quantizations(graph, calibration)
    layers = [rounded_layer(layer, grids[layer.inputs[0]], calibration) if isinstance(layer, WeightedLayer) else layer
              for layer in graph.layers]
    return Graph(layers, graph.input_name, graph.input_shape, graph.preprocessing, graph.blocks)


def measure_error_budget(graph: Graph, calibration: Calibration, images: Iterable[np.ndarray], count: int,
                         progress: bool = True) -> ErrorBudget:
    """The budget over `count` preprocessed images (C, H, W) float32, for `graph` as the export quantizes it
    (export.prepare_int8) with its `calibration`."""
    grids = activation_quantizations(graph, calibration)
    rounded = rounded_weights_graph(graph, calibration)
    reference, weights, activations, both = [], [], [], []
    alone: dict[str, list[np.ndarray]] = {name: [] for name in grids}
    for x in tqdm(images, total=count, desc="error budget", unit="img", disable=not progress):
        tensors = _forward(graph, {graph.input_name: x}, 0, {})
        reference.append(tensors[graph.output_name])
        weights.append(_forward(rounded, {graph.input_name: x}, 0, {})[graph.output_name])
        activations.append(_forward(graph, {graph.input_name: x}, 0, grids)[graph.output_name])
        both.append(_forward(rounded, {graph.input_name: x}, 0, grids)[graph.output_name])
        for start, name in enumerate((graph.input_name,) + tuple(layer.output for layer in graph.layers)):
            # the layers up to its writer are not rerun: what the rest reads of theirs is taken as computed
            known = {source: tensors[source] for source in _read_from(graph, start)}
            known[name] = round_to_grid(tensors[name], grids[name])
            alone[name].append(_forward(graph, known, start, {})[graph.output_name])
    reference = np.stack(reference)  # (images, classes)
    by_tensor = [TensorRounding(name, graph.shapes[name], float(grids[name].scale[0]),
                                _compare(np.stack(logits), reference)) for name, logits in alone.items()]
    return ErrorBudget(len(reference), _compare(np.stack(weights), reference),
                       _compare(np.stack(activations), reference), _compare(np.stack(both), reference),
                       sorted(by_tensor, key=lambda row: -row.rounding.relative_rms))


def _read_from(graph: Graph, start: int) -> set[str]:
    """The tensors that layers from index `start` on read and that were written before it."""
    written_after = {layer.output for layer in graph.layers[start:]}
    return {name for layer in graph.layers[start:] for name in layer.inputs if name not in written_after}


def _forward(graph: Graph, tensors: dict[str, np.ndarray], start: int,
             grids: dict[str, Quantization]) -> dict[str, np.ndarray]:
    """`tensors` completed by running the layers from index `start` on, on the host; a tensor named in `grids` is
    rounded to its grid as it is written (the input too, when `start` is 0)."""
    tensors = dict(tensors)
    if start == 0 and graph.input_name in grids:
        tensors[graph.input_name] = round_to_grid(tensors[graph.input_name], grids[graph.input_name])
    for layer in graph.layers[start:]:
        out = run_layer(graph, layer, [tensors[name] for name in layer.inputs])
        tensors[layer.output] = round_to_grid(out, grids[layer.output]) if layer.output in grids else out
    return tensors


def _compare(logits: np.ndarray, reference: np.ndarray) -> Rounding:
    """logits and reference (images, classes)."""
    rms = float(np.sqrt(np.mean((logits - reference) ** 2)) / max(np.sqrt(np.mean(reference ** 2)), 1e-30))
    return Rounding(rms, float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1))))


def describe_error_budget(budget: ErrorBudget, rows: int) -> str:
    """The budget as lines a person reads, the `rows` largest tensors."""
    lines = [f"int8 rounding in float on {budget.images:,} test images: logit change (RMS, relative to the float "
             "logits' RMS) and top-1 agreement with float"]
    for label, rounding in (("weights alone", budget.weights), ("activations alone", budget.activations),
                            ("both", budget.both)):
        lines.append(f"  {label:<44}{rounding.relative_rms:>8.2%}{rounding.top1_agreement:>10.2%}")
    lines.append(f"activations rounded one at a time, the {min(rows, len(budget.by_tensor))} largest:")
    for row in budget.by_tensor[:rows]:
        shape = "x".join(map(str, row.shape))
        lines.append(f"  {row.tensor:<26}{shape:>11} step {row.step:<8.4g}{row.rounding.relative_rms:>8.2%}"
                     f"{row.rounding.top1_agreement:>10.2%}")
    return "\n".join(lines)
