"""The TFLite export: float32 and int8 flatbuffers of a fine-tuned MobileNetV2, run in TFLite Micro and LiteRT and
compared with tinytrain's own inference; the int8 tensors as the TFLite spec has them; the script and its errors."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("flatbuffers")
tflite = pytest.importorskip("tflite")
pytest.importorskip("tflite_micro")
pytest.importorskip("ai_edge_litert")

from tinytrain.arena import Arena  # noqa: E402
from tinytrain.checkpoint import TrainingState, save_checkpoint  # noqa: E402
from tinytrain.data import Augmenter  # noqa: E402
from tinytrain.engine import Engine  # noqa: E402
from tinytrain.memory import MEASURING_ARENA_BYTES  # noqa: E402
from tinytrain.models.mobilenetv2 import build_mobilenetv2  # noqa: E402
from tinytrain.tflite.agreement import load_runtimes, measure_agreement, measure_inference_arena  # noqa: E402
from tinytrain.tflite.export import export_tflite  # noqa: E402
from tinytrain.tflite.packages import MissingPackageError, require  # noqa: E402
from tinytrain.tflite.runtimes import LiteRT, TFLiteMicro  # noqa: E402
from tinytrain.weights import load_pretrained  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
RESOLUTION = 64  # small enough for fast runtimes, large enough that the ImageNet features are alive
CLASSES = ("first", "second", "third", "fourth")


def exact_images(data_dir: Path, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` pixel-exact CIFAR-10 images of `split` (N, 32, 32, 3) uint8, and their labels."""
    arrays = np.load(data_dir / "cifar10" / "cifar10_exact_subset.npz")
    rows = arrays[f"{split}_subset_data"][:count]
    labels = arrays[f"{split}_labels"][arrays[f"{split}_subset_index"][:count]]
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


@pytest.fixture(scope="module")
def weights(data_dir, tmp_path_factory):
    return load_pretrained(data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("cache"), allow_download=False)


def with_prototype_head(graph, data_dir):
    """`graph` with its 4-class head set to the pooled features of four training images, one per class: a head with
    real margins, as fine-tuning gives, without training."""
    images, _ = exact_images(data_dir, "train", len(CLASSES))
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    head = graph.layer("classifier")
    for row, (image, _) in enumerate(Augmenter(images, np.zeros(len(images), np.uint8), RESOLUTION,
                                               shuffle=False).epoch(0)):
        features = engine.infer(image, read=("pool",))["pool"]
        head.weight[row] = 8.0 * features / np.linalg.norm(features)
        head.bias[row] = 0.0
    return graph


@pytest.fixture(scope="module")
def graph(weights, data_dir):
    """Pretrained MobileNetV2 at 64x64 with a prototype head."""
    return with_prototype_head(build_mobilenetv2(num_classes=len(CLASSES), resolution=RESOLUTION, weights=weights),
                               data_dir)


@pytest.fixture(scope="module")
def test_samples(data_dir):
    images, labels = exact_images(data_dir, "test", 8)
    return [(image.copy(), int(label)) for image, label in Augmenter(images, labels, RESOLUTION, shuffle=False).epoch(0)]


@pytest.fixture(scope="module")
def float_model(graph, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("float") / "model.tflite"
    summary = export_tflite(graph, path, progress=False)
    assert summary.calibration_images == 0 and summary.input_quantization is None
    return path.read_bytes()


@pytest.fixture(scope="module")
def int8_model(graph, data_dir, tmp_path_factory) -> bytes:
    images, labels = exact_images(data_dir, "train", 32)
    path = tmp_path_factory.mktemp("int8") / "model.tflite"
    summary = export_tflite(graph, path, Augmenter(images, labels, RESOLUTION, shuffle=False), progress=False)
    assert summary.calibration_images == 32 and summary.input_quantization is not None
    return path.read_bytes()


def agreement(graph, model: bytes, samples):
    return measure_agreement(graph, load_runtimes(graph, model), samples, len(samples), progress=False)


def test_float32_logits_match_tinytrain_in_both_runtimes(graph, float_model, test_samples):
    measured = agreement(graph, float_model, test_samples)
    assert [runtime.runtime for runtime in measured.runtimes] == ["TFLite Micro", "LiteRT"]
    for runtime in measured.runtimes:
        assert runtime.max_relative_error < 1e-4, runtime
        assert runtime.top1_agreement == 1.0 and runtime.accuracy == measured.tinytrain_accuracy
        assert runtime.top1_ties == 0.0


def test_padding_other_than_same_becomes_an_explicit_pad(weights, data_dir, test_samples, tmp_path):
    """Symmetric padding (torchvision's) pads a stride-2 convolution on top and left too, which TFLite's SAME does
    not: the export puts a PAD before a VALID convolution, and the runtimes still match tinytrain."""
    symmetric = replace(weights, preprocessing=replace(weights.preprocessing, padding="symmetric"))
    graph = with_prototype_head(build_mobilenetv2(num_classes=len(CLASSES), resolution=RESOLUTION, weights=symmetric),
                                data_dir)
    summary = export_tflite(graph, tmp_path / "model.tflite", progress=False)
    assert summary.operators["PAD"] == 5  # the stem and the four stride-2 depthwise convolutions
    measured = agreement(graph, (tmp_path / "model.tflite").read_bytes(), test_samples)
    assert all(runtime.max_relative_error < 1e-4 for runtime in measured.runtimes), measured


def test_int8_agrees_with_float_tinytrain_in_both_runtimes(graph, int8_model, test_samples):
    measured = agreement(graph, int8_model, test_samples)
    for runtime in measured.runtimes:
        assert runtime.top1_agreement >= 7 / 8, runtime
        assert 0 <= runtime.top1_ties <= 1 - runtime.top1_agreement, runtime
        assert 0 < runtime.max_relative_error < 0.5, runtime  # quantized: close, but not float-exact


class LevelLogits:
    """A stand-in runtime whose logits are fixed: level (every class shares the largest) or class 0 ahead."""

    def __init__(self, logits):
        self.name, self.logits = "stand-in", np.asarray(logits, np.float32)
        self.input = {"shape": np.array([1, RESOLUTION, RESOLUTION, 3]), "dtype": np.int8}
        self.output = {"shape": np.array([1, len(CLASSES)])}

    def run(self, sample):
        return self.logits


def test_a_disagreement_is_lost_to_a_tie_only_where_float_top1_shares_the_largest_logit(graph, test_samples,
                                                                                      monkeypatch):
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    float_top1 = np.array([np.argmax(engine.infer(graph.preprocessing.normalize(image))[graph.output_name])
                           for image, _ in test_samples])
    assert (float_top1 != 0).any()
    stand_ins = [lambda model: LevelLogits([1.0, 1.0, 1.0, 1.0]), lambda model: LevelLogits([2.0, 1.0, 1.0, 1.0])]
    monkeypatch.setattr("tinytrain.tflite.agreement.RUNTIMES", stand_ins)
    level, ahead = agreement(graph, b"", test_samples).runtimes
    assert level.top1_agreement == ahead.top1_agreement == np.mean(float_top1 == 0)
    assert level.top1_ties == np.mean(float_top1 != 0) and ahead.top1_ties == 0.0


def test_int8_runtimes_compute_the_same_integers(graph, int8_model, test_samples):
    """Both runtimes implement the TFLite integer arithmetic; LiteRT's XNNPACK kernels round their rescaling
    differently, and over 60 layers those roundings move a logit by a few output steps (up to 4 on these images),
    where a wrong scale or zero point would move it by tens."""
    micro, lite = TFLiteMicro(int8_model), LiteRT(int8_model)
    step = float(lite.output["quantization_parameters"]["scales"][0])
    for image, _ in test_samples[:4]:
        sample = graph.preprocessing.normalize(image).transpose(1, 2, 0)[np.newaxis]  # (1, H, W, C)
        assert np.abs(micro.run(sample) - lite.run(sample)).max() <= 5.01 * step


def test_int8_tensors_follow_the_tflite_int8_spec(int8_model):
    model = tflite.Model.GetRootAsModel(int8_model, 0)
    subgraph = model.Subgraphs(0)
    kinds = {tflite.BuiltinOperator.CONV_2D: 0, tflite.BuiltinOperator.DEPTHWISE_CONV_2D: 3,
             tflite.BuiltinOperator.FULLY_CONNECTED: 0}  # builtin -> axis of the output channels in its weight
    checked = 0
    for index in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex()).BuiltinCode()
        activations = [subgraph.Tensors(operator.Inputs(0)), subgraph.Tensors(operator.Outputs(0))]
        assert all(tensor.Type() == tflite.TensorType.INT8 for tensor in activations)
        assert all(tensor.Quantization().ScaleLength() == 1 for tensor in activations)  # per tensor
        if code not in kinds:
            continue
        weight, bias = subgraph.Tensors(operator.Inputs(1)), subgraph.Tensors(operator.Inputs(2))
        channels = weight.Shape(kinds[code])
        assert weight.Type() == tflite.TensorType.INT8 and bias.Type() == tflite.TensorType.INT32
        assert weight.Quantization().QuantizedDimension() == kinds[code]
        assert weight.Quantization().ScaleLength() == channels  # per output channel
        assert not weight.Quantization().ZeroPointAsNumpy().any()  # symmetric
        values = np.frombuffer(model.Buffers(weight.Buffer()).DataAsNumpy().tobytes(), np.int8)
        assert values.min() >= -127  # -128 is never used, as the spec requires
        input_scale = activations[0].Quantization().Scale(0)
        np.testing.assert_allclose(bias.Quantization().ScaleAsNumpy(),
                                   input_scale * weight.Quantization().ScaleAsNumpy(), rtol=1e-6)
        checked += 1
    assert checked == 35 + 17 + 1  # every conv, depthwise conv and the classifier


def test_tflite_micro_reports_its_arena_beside_tinytrain_peak(graph, float_model, int8_model):
    float_arena = measure_inference_arena(graph, float_model)
    int8_arena = measure_inference_arena(graph, int8_model)
    assert float_arena.tinytrain_peak_bytes == int8_arena.tinytrain_peak_bytes > 0
    # both plan whole float32 tensors layer by layer; TFLite Micro adds its kernels' persistent data
    assert float_arena.tflite_micro_bytes > float_arena.tinytrain_peak_bytes
    # int8 activations take a quarter of float32's bytes; persistent quantization data adds some back
    assert 0 < int8_arena.tflite_micro_bytes < float_arena.tflite_micro_bytes / 2


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flatbuffers", None)  # makes `import flatbuffers` fail
    with pytest.raises(MissingPackageError, match=r'pip install -e "\.\[tflite\]"') as raised:
        require("flatbuffers")
    assert "\n" not in str(raised.value)


def run_script(*arguments: str, script: str = "export_tflite.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPOSITORY / "scripts" / script), "--no-progress", *arguments],
                          capture_output=True, text=True, cwd=REPOSITORY)


def test_script_exports_a_checkpoint_and_refuses_bad_input(graph, tmp_path):
    checkpoint = tmp_path / "checkpoint.h5"
    save_checkpoint(checkpoint, graph, TrainingState(0, [], {}, {}, {}, class_names=list(CLASSES)))
    done = run_script("--checkpoint", str(checkpoint), "--output", str(tmp_path / "model.tflite"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {tmp_path / 'model.tflite'}: float32") and "first, second" in done.stdout
    assert (tmp_path / "model.tflite").read_bytes()[4:8] == b"TFL3"
    for int8_only in (["--calibration-images", "10"], ["--seed", "1"], ["--data-dir", str(tmp_path)]):
        refused = run_script("--checkpoint", str(checkpoint), "--output", str(tmp_path / "m.tflite"), *int8_only)
        assert refused.returncode == 2 and f"{int8_only[0]} is for calibrating" in refused.stderr, refused.stderr
    under_a_file = tmp_path / "model.tflite" / "int8.tflite"
    refused = run_script("--checkpoint", str(checkpoint), "--output", str(under_a_file), "--int8")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    assert "calibration" not in refused.stderr and not under_a_file.exists()  # refused before calibrating


def test_verify_refuses_every_model_that_does_not_fit_before_comparing_any(graph, float_model, weights, data_dir,
                                                                         tmp_path):
    checkpoint = tmp_path / "checkpoint.h5"
    save_checkpoint(checkpoint, graph, TrainingState(0, [], {}, {}, {}, class_names=list(CLASSES)))
    fitting = tmp_path / "model.tflite"
    fitting.write_bytes(float_model)
    three_classes = tmp_path / "three_classes.tflite"
    export_tflite(build_mobilenetv2(num_classes=3, resolution=RESOLUTION, weights=weights), three_classes,
                  progress=False)
    not_tflite = tmp_path / "notes.tflite"
    not_tflite.write_bytes(b"\x00" * 64)
    for bad, says in ((three_classes, "maps (1, 64, 64, 3) to (1, 3)"), (not_tflite, "cannot load the model")):
        done = run_script("--checkpoint", str(checkpoint), "--model", str(fitting), str(bad), "--images", "8",
                          "--data-dir", str(data_dir), script="verify_tflite.py")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: --model {bad}: ") and says in lines[0], lines[0]
        assert done.stdout == ""  # the fitting model came first, and was not compared either
    done = run_script("--checkpoint", str(checkpoint), "--model", str(fitting), "--images", "8", "--data-dir",
                      str(data_dir), script="verify_tflite.py")
    assert done.returncode == 0 and done.stderr == "", done.stderr  # LiteRT's delegate notice held back
    assert done.stdout.startswith(f"{fitting} (float32) on 8 test images") and "TFLite Micro" in done.stdout


def test_a_checkpoint_of_another_model_or_a_corrupt_one_is_one_line(graph, tmp_path):
    other = tmp_path / "other.h5"
    save_checkpoint(other, graph, TrainingState(0, [], {}, {}, {}, class_names=list(CLASSES)))
    with h5py.File(other, "r+") as file:  # the stem of another network: 16 filters of 5x5
        del file["parameters/features.0/weight"]
        file["parameters/features.0/weight"] = np.zeros((16, 3, 5, 5), np.float32)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(other.read_bytes()[:5000])
    not_checkpoint = tmp_path / "weights.tflite"
    not_checkpoint.write_bytes(b"\x00" * 64)
    for path in (other, corrupt, not_checkpoint):
        done = run_script("--checkpoint", str(path), "--output", str(tmp_path / "out.tflite"))
        assert done.returncode == 1, done.stdout
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], done.stderr
        assert not (tmp_path / "out.tflite").exists()
