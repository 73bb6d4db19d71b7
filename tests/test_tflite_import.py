"""Importing a .tflite as pretrained weights: the int8 MobileNetV2 against the TF-slim import, a float export read
back exactly, and one-line errors for a .tflite that is not MobileNetV2 or is not a TFLite file at all."""

import numpy as np
import pytest

pytest.importorskip("flatbuffers")
pytest.importorskip("tflite")

from tinytrain.graph import Graph  # noqa: E402
from tinytrain.layers import Conv2d, GlobalAvgPool, Linear  # noqa: E402
from tinytrain.models.mobilenetv2 import build_mobilenetv2  # noqa: E402
from tinytrain.tflite.export import export_tflite  # noqa: E402
from tinytrain.weights import TF_PREPROCESSING, WeightsFormatError, import_tfslim_npy  # noqa: E402
from tinytrain.weights.tflite import import_tflite  # noqa: E402

INT8_MODEL = "tf2_mobilenet_v2_1.0_224_ptq.tflite"
INT8_MODEL_SHA256 = "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c"


def test_the_int8_mobilenetv2_matches_the_tfslim_weights(data_dir):
    imported = import_tflite(data_dir / INT8_MODEL)
    assert imported.source == "tflite" and imported.source_sha256 == INT8_MODEL_SHA256
    assert imported.preprocessing == TF_PREPROCESSING
    tfslim = import_tfslim_npy(data_dir / "mobilenet_v2_1.0_224_tfslim")
    assert imported.tensors.keys() == tfslim.tensors.keys()
    # BatchNorm folded the same way on both sides: compare what the graph holds
    from_tflite = build_mobilenetv2(resolution=32, weights=imported)
    from_tfslim = build_mobilenetv2(resolution=32, weights=tfslim)
    assert [layer.name for layer in from_tflite.layers] == [layer.name for layer in from_tfslim.layers]
    for ours, theirs in zip(from_tflite.weighted_layers[:-1], from_tfslim.weighted_layers[:-1]):  # not the new head
        assert ours.weight.shape == theirs.weight.shape, ours.name
        # int8 keeps 127 steps of each output channel's largest weight; the file's float weights were not quite
        # TF-slim's, so allow a few steps (measured: 7 at most, in features.17.depthwise 14 of its smallest channel)
        largest = np.abs(theirs.weight).max()
        assert np.abs(ours.weight - theirs.weight).max() <= 0.12 * largest, ours.name
        assert np.corrcoef(ours.weight.ravel(), theirs.weight.ravel())[0, 1] > 0.999, ours.name
        assert np.abs(ours.bias - theirs.bias).max() <= 0.01 * np.abs(theirs.bias).max(), ours.name


def test_a_float_export_reads_back_exactly(tmp_path):
    graph = build_mobilenetv2(resolution=32, seed=3)
    export_tflite(graph, tmp_path / "model.tflite", progress=False)
    again = build_mobilenetv2(resolution=32, weights=import_tflite(tmp_path / "model.tflite"))
    for ours, theirs in zip(again.weighted_layers[:-1], graph.weighted_layers[:-1]):  # the backbone, not the head
        np.testing.assert_allclose(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7, err_msg=ours.name)
        np.testing.assert_allclose(ours.bias, theirs.bias, rtol=1e-6, atol=1e-7, err_msg=ours.name)


def one_line_error(path) -> str:
    with pytest.raises(WeightsFormatError) as raised:
        import_tflite(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_tflite_that_is_not_mobilenetv2_is_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    stem = Conv2d("stem", ("input",), "stem", rng.normal(size=(8, 3, 3, 3)), np.zeros(8), stride=2,
                  padding=(0, 0, 1, 1), relu6=True)
    layers = [stem, GlobalAvgPool("pool", ("stem",), "pool"),
              Linear("classifier", ("pool",), "classifier", rng.normal(size=(2, 8)), np.zeros(2), relu6=False)]
    export_tflite(Graph(layers, "input", (3, 16, 16), TF_PREPROCESSING), tmp_path / "small.tflite", progress=False)
    assert "not a MobileNetV2-1.0: it has 1 convolutions" in one_line_error(tmp_path / "small.tflite")


def test_a_mobilenetv2_of_another_width_is_refused_naming_the_layer(tmp_path):
    export_tflite(build_mobilenetv2(resolution=32, width_mult=0.5), tmp_path / "half.tflite", progress=False)
    message = one_line_error(tmp_path / "half.tflite")
    assert "not a MobileNetV2-1.0: operator 0 (CONV_2D, weight (16, 3, 3, 3)" in message and "features.0.0" in message


def test_a_file_that_is_not_tflite_or_is_truncated_is_refused_in_one_line(data_dir, tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    assert "not a TFLite flatbuffer" in one_line_error(text)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes((data_dir / INT8_MODEL).read_bytes()[:100_000])
    assert "truncated or corrupt" in one_line_error(truncated)


def test_fine_tuning_starts_from_the_tflite_weights_given_by_weights(data_dir, cache_dir, tmp_path):
    from tinytrain.train import TrainConfig, Trainer

    config = TrainConfig(weights=str(data_dir / INT8_MODEL), resolution=32, train_subset=10, test_subset=10)
    trainer = Trainer(config, tmp_path / "run", data_dir=data_dir, cache_dir=cache_dir, progress=False)
    expected = build_mobilenetv2(resolution=32, weights=import_tflite(data_dir / INT8_MODEL))
    for ours, theirs in zip(trainer.graph.weighted_layers[:-1], expected.weighted_layers[:-1]):  # not the new head
        np.testing.assert_array_equal(ours.weight, theirs.weight, err_msg=ours.name)
