"""The first layers' int8 weights fitted to the int8 model's inputs: the fit is the least-squares one, only layers
with enough calibration samples per weight column are fitted, and the export rounds the fitted weights."""

import numpy as np
import pytest

from tinytrain.data import Augmenter
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.tflite import reconstruction
from tinytrain.tflite.emulation import round_to_grid
from tinytrain.tflite.export import prepare_int8
from tinytrain.tflite.quantization import activation_quantizations, quantize_layer, quantize_weight_and_bias, tap_means
from tinytrain.tflite.rounding import input_columns

RESOLUTION = 64
IMAGES = 32


@pytest.fixture(scope="module")
def prepared():
    """A random model calibrated on random images: (the graph it quantizes, its calibration, the images)."""
    images = np.random.default_rng(2).integers(0, 256, (IMAGES, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    graph, calibration = prepare_int8(build_mobilenetv2(num_classes=4, resolution=RESOLUTION, seed=1),
                                      Augmenter(images, np.zeros(IMAGES, np.uint8), RESOLUTION, shuffle=False),
                                      progress=False)
    return graph, calibration, images


def test_only_layers_with_enough_samples_per_weight_column_are_fitted(prepared):
    graph, calibration, _ = prepared
    expected = {layer.name for layer in graph.weighted_layers
                if IMAGES * np.prod(graph.shapes[layer.output][1:]) >= 1000 * layer.weight[0].size}
    assert set(calibration.fitted) == expected
    assert "features.0" in expected and "classifier" not in expected and len(expected) < len(graph.weighted_layers)
    for name, (weight, bias) in calibration.fitted.items():
        layer = graph.layer(name)
        assert weight.shape == layer.weight.shape and bias.shape == layer.bias.shape
        assert not np.array_equal(weight, layer.weight), name


def test_a_fit_without_damping_is_the_least_squares_map_from_int8_inputs_to_float_outputs(prepared, monkeypatch):
    graph, calibration, images = prepared
    stem = graph.weighted_layers[0]
    grid = activation_quantizations(graph, calibration)[graph.input_name]
    inputs = [graph.preprocessing.normalize(image) for image in images[:8]]
    pairs = [(x, round_to_grid(x, grid)) for x in inputs]
    monkeypatch.setattr(reconstruction, "DAMPING", 0.0)
    fit = reconstruction.fit_layer(stem, pairs, lambda: None)
    # the same problem by np.linalg.lstsq: [W' b'] [q; 1] closest to W x + b, over every position of every image
    q = np.concatenate([input_columns(stem, q) for _, q in pairs], axis=1).astype(np.float64)  # (27, P)
    x = np.concatenate([input_columns(stem, x) for x, _ in pairs], axis=1).astype(np.float64)
    weight = stem.weight.reshape(stem.out_channels, -1).astype(np.float64)
    target = weight @ x + stem.bias[:, None]  # (K, P)
    design = np.vstack([q, np.ones((1, q.shape[1]))])
    solution, *_ = np.linalg.lstsq(design.T, target.T, rcond=None)  # (28, K)
    np.testing.assert_allclose(fit.weight.reshape(weight.shape), solution[:-1].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.bias, solution[-1], rtol=1e-4, atol=1e-5)
    float_error = np.mean((weight @ q + stem.bias[:, None] - target) ** 2)
    fitted_error = np.mean((fit.weight.reshape(weight.shape) @ q + fit.bias[:, None] - target) ** 2)
    assert fitted_error < 0.9 * float_error


def test_a_fitted_layer_is_rounded_from_its_fitted_weights_and_its_int8_inputs_statistics(prepared):
    graph, calibration, images = prepared
    stem = graph.weighted_layers[0]
    grid = activation_quantizations(graph, calibration)[graph.input_name]
    rounded_inputs = [round_to_grid(graph.preprocessing.normalize(image), grid) for image in images]
    np.testing.assert_allclose(calibration.means[graph.input_name], np.mean(rounded_inputs, axis=0), atol=1e-6)
    moment = sum(input_columns(stem, q).astype(np.float64) @ input_columns(stem, q).astype(np.float64).T
                 for q in rounded_inputs)
    np.testing.assert_allclose(calibration.moments[stem.name], moment, rtol=1e-9)
    weight, bias = calibration.fitted[stem.name]
    exported = quantize_layer(stem, grid, calibration)
    expected = quantize_weight_and_bias(weight, bias, float(grid.scale[0]),
                                        tap_means(stem, calibration.means[graph.input_name]), moment, False)
    np.testing.assert_array_equal(exported.weight, expected.weight)
    np.testing.assert_array_equal(exported.bias, expected.bias)
