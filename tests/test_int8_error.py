"""The int8 error budget: each row is what rounding its part does to the logits, the rounded weights lie on the
int8 grids, and the script refuses bad input in one line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinytrain.arena import Arena
from tinytrain.data import Augmenter, Dataset
from tinytrain.engine import Engine
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.tflite import run_data
from tinytrain.tflite.error_budget import measure_error_budget, rounded_weights_graph
from tinytrain.tflite.export import prepare_int8
from tinytrain.tflite.quantization import (WEIGHT_MAX, activation_quantizations, dequantize, quantize,
                                          quantize_layer)

REPOSITORY = Path(__file__).resolve().parents[1]
RESOLUTION = 32


def pixels(count, seed):
    return np.random.default_rng(seed).integers(0, 256, (count, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def quantized():
    graph = build_mobilenetv2(num_classes=4, resolution=RESOLUTION, seed=1)
    calibration = Augmenter(pixels(8, seed=2), np.zeros(8, np.uint8), RESOLUTION, shuffle=False)
    return prepare_int8(graph, calibration, progress=False)


def relative_rms(logits, reference):
    return np.sqrt(np.mean((logits - reference) ** 2)) / np.sqrt(np.mean(reference ** 2))


def test_a_rows_error_is_the_logit_change_of_rounding_that_tensor_alone(quantized):
    graph, calibration = quantized
    inputs = [graph.preprocessing.normalize(image) for image in pixels(3, seed=3)]
    budget = measure_error_budget(graph, calibration, inputs, len(inputs), progress=False)
    names = {graph.input_name} | {layer.output for layer in graph.layers}
    assert {row.tensor for row in budget.by_tensor} == names and budget.images == 3
    errors = [row.rounding.relative_rms for row in budget.by_tensor]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    grids = activation_quantizations(graph, calibration)
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    reference = np.stack([engine.infer(x)[graph.output_name] for x in inputs])
    rows = {row.tensor: row for row in budget.by_tensor}
    # the input rounded: the engine's own inference of the rounded input
    grid = grids[graph.input_name]
    rounded_input = np.stack([engine.infer(dequantize(quantize(x, grid), grid))[graph.output_name] for x in inputs])
    assert rows[graph.input_name].rounding.relative_rms == pytest.approx(relative_rms(rounded_input, reference),
                                                                        rel=1e-3)
    # the logits rounded: nothing after them
    grid = grids[graph.output_name]
    rounded_logits = dequantize(quantize(reference, grid), grid)
    assert rows[graph.output_name].rounding.relative_rms == pytest.approx(relative_rms(rounded_logits, reference),
                                                                         rel=1e-3)
    assert rows[graph.output_name].step == pytest.approx(float(grid.scale[0]))
    assert 0 < budget.weights.relative_rms and 0 < budget.activations.relative_rms


def test_rounded_weights_are_the_exports_integers_dequantized(quantized):
    graph, calibration = quantized
    rounded = rounded_weights_graph(graph, calibration)
    grids = activation_quantizations(graph, calibration)
    for original, layer in zip(graph.weighted_layers, rounded.weighted_layers):
        exported = quantize_layer(original, grids[original.inputs[0]], calibration)  # what the .tflite holds
        assert np.abs(exported.weight.astype(np.int32)).max() <= WEIGHT_MAX
        levels = layer.weight.reshape(len(exported.weight_scale), -1) / exported.weight_scale[:, None]
        np.testing.assert_allclose(levels, exported.weight.reshape(levels.shape), atol=1e-3, err_msg=layer.name)
        np.testing.assert_allclose(layer.bias / exported.bias_scale, exported.bias, atol=1e-2, err_msg=layer.name)
        assert not np.array_equal(layer.weight, original.weight), layer.name  # rounding moved them
        assert not np.shares_memory(layer.weight, original.weight)  # a copy: the graph keeps its float weights


def test_calibration_asks_for_at_most_the_training_split(monkeypatch):
    split = Dataset(pixels(5, seed=4), np.zeros(5, np.uint8), ("only",), "five random images")
    monkeypatch.setattr(run_data, "load_run_split", lambda *arguments, **options: split)
    subset = run_data.calibration_images({}, RESOLUTION, 5, seed=0)
    assert len(subset) == 5 and [image.shape for image, _ in subset.epoch(0)] == [(RESOLUTION, RESOLUTION, 3)] * 5
    with pytest.raises(run_data.TooFewImages, match="--calibration-images 6: the run's training split has 5 images"):
        run_data.calibration_images({}, RESOLUTION, 6, seed=0)


@pytest.mark.parametrize("arguments, message", [
    (("--images", "0"), "--images must be at least 1, got 0"),
    (("--calibration-images", "-5"), "--calibration-images must be at least 1, got -5"),
    (("--seed", "-1"), "--seed must be 0 or more, got -1"),
])
def test_the_script_refuses_bad_input_in_one_line(tmp_path, arguments, message):
    checkpoint = tmp_path / "checkpoint.h5"
    checkpoint.write_bytes(b"")
    done = subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "int8_error.py"), "--checkpoint",
                           str(checkpoint), *arguments], capture_output=True, text=True, cwd=REPOSITORY)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "int8_error.py"), "--checkpoint",
                              str(tmp_path / "none.h5")], capture_output=True, text=True, cwd=REPOSITORY)
    assert missing.returncode == 2 and "no such file" in missing.stderr
