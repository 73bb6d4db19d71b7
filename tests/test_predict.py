"""Predictions from a checkpoint: the engine's logits as top-k probabilities, the measured inference peak, and each
bad checkpoint or image refused in one line."""

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tinytrain.arena import Arena
from tinytrain.checkpoint import CheckpointError, TrainingState, load_trained_model, save_checkpoint
from tinytrain.data import read_image
from tinytrain.engine import Engine
from tinytrain.memory import measure_inference
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.patches import patch_boundaries
from tinytrain.plan import MemorySchedule, PatchSpec
from tinytrain.pruned_model import save_pruned

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "predict.py"
CLASS_NAMES = ["cat", "dog", "owl"]
ARENA_BYTES = 262_144


def predict_script():
    spec = importlib.util.spec_from_file_location("predict", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(capsys, *argv):
    status = predict_script().main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def make_graph(resolution=32):
    graph = build_mobilenetv2(num_classes=len(CLASS_NAMES), resolution=resolution, width_mult=0.35)
    graph.layer("classifier").bias[:] = (0.0, 1.5, -1.0)  # probabilities far from uniform, in a known order
    return graph


def write_checkpoint(path: Path, graph, memory_schedule=MemorySchedule()) -> Path:
    state = TrainingState(step=12, history=[], momentum={}, coverage={}, config={"resolution": 32},
                          class_names=CLASS_NAMES, arena_bytes=ARENA_BYTES, memory_schedule=memory_schedule)
    save_checkpoint(path, graph, state)
    return path


@pytest.fixture
def images(tmp_path):
    """A wide PNG and a small JPEG of different content."""
    rng = np.random.default_rng(0)
    wide, small = tmp_path / "wide.png", tmp_path / "small.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(wide)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(small)
    return [wide, small]


def softmax_of_the_engine(graph, image_path):
    """The probabilities computed apart from predict.py: a fresh engine, layer by layer, in a large arena."""
    logits = Engine(graph, Arena(8 << 20)).infer(read_image(image_path, (32, 32)))[graph.output_name]
    exponentials = np.exp(logits.astype(np.float64) - logits.max())
    return exponentials / exponentials.sum()


def test_text_output_lists_every_class_by_probability_and_the_measured_peak(tmp_path, images, capsys):
    graph = make_graph()
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", graph)
    status, out, _ = run_cli(capsys, "--checkpoint", str(checkpoint), *map(str, images))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"{checkpoint}: 3 classes at 32x32, step 12"
    for start, image in ((1, images[0]), (5, images[1])):
        assert lines[start] == str(image)
        expected = softmax_of_the_engine(graph, image)
        printed = [line.split() for line in lines[start + 1 : start + 4]]  # top-k is 5 or fewer: all 3
        assert [name for name, _ in printed] == [CLASS_NAMES[k] for k in np.argsort(-expected)]
        np.testing.assert_allclose([float(value) for _, value in printed], np.sort(expected)[::-1], atol=5e-5)
    peak = measure_inference(graph, ARENA_BYTES).whole_step_peak_bytes
    assert lines[-1] == f"inference peak {peak:,} B in the {ARENA_BYTES:,} B arena (layer by layer)"


def test_json_gives_the_top_k_with_probabilities_of_the_engine(tmp_path, images, capsys):
    graph = make_graph()
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", graph)
    status, out, _ = run_cli(capsys, "--checkpoint", str(checkpoint), "--top-k", "2", "--json", *map(str, images))
    assert status == 0
    document = json.loads(out)
    assert document["class_names"] == CLASS_NAMES and document["resolution"] == 32
    assert document["arena_bytes"] == ARENA_BYTES and 0 < document["inference_peak_bytes"] <= ARENA_BYTES
    for image, prediction in zip(images, document["predictions"], strict=True):
        expected = softmax_of_the_engine(graph, image)
        best = np.argsort(-expected)[:2]
        assert prediction["image"] == str(image)
        assert [entry["class"] for entry in prediction["top"]] == [CLASS_NAMES[k] for k in best]
        np.testing.assert_allclose([entry["probability"] for entry in prediction["top"]], expected[best], rtol=1e-5)


def test_the_runs_patch_schedule_gives_the_same_predictions_at_a_lower_peak(tmp_path, images, capsys):
    graph = make_graph(resolution=64)
    block_2_output = patch_boundaries(graph)[6]  # after features.2.project
    patched = MemorySchedule((PatchSpec(block_2_output, (2, 2)),), in_place_depthwise=True)
    outputs = []
    for name, schedule in (("whole", MemorySchedule()), ("patched", patched)):
        checkpoint = write_checkpoint(tmp_path / f"{name}.h5", graph, schedule)
        status, out, err = run_cli(capsys, "--checkpoint", str(checkpoint), "--json", "--arena-bytes", str(4 << 20),
                                   *map(str, images))
        assert status == 0, err
        outputs.append(json.loads(out))
    whole, lean = outputs
    assert lean["memory_schedule"] == patched.describe(graph)
    assert lean["inference_peak_bytes"] < whole["inference_peak_bytes"]
    for ours, theirs in zip(lean["predictions"], whole["predictions"], strict=True):
        assert [entry["class"] for entry in ours["top"]] == [entry["class"] for entry in theirs["top"]]
        np.testing.assert_allclose([entry["probability"] for entry in ours["top"]],
                                   [entry["probability"] for entry in theirs["top"]], rtol=1e-5)


def test_a_checkpoint_rebuilds_the_model_it_was_saved_from(tmp_path):
    graph = make_graph()
    model = load_trained_model(write_checkpoint(tmp_path / "checkpoint.h5", graph))
    assert model.class_names == tuple(CLASS_NAMES) and model.arena_bytes == ARENA_BYTES and model.step == 12
    assert [layer.name for layer in model.graph.layers] == [layer.name for layer in graph.layers]
    for ours, theirs in zip(model.graph.weighted_layers, graph.weighted_layers):
        np.testing.assert_array_equal(ours.weight, theirs.weight)
        assert getattr(ours, "padding", None) == getattr(theirs, "padding", None)


def older_format(path: Path) -> None:
    with h5py.File(path, "r+") as file:
        file.attrs["format_version"] = 2


def another_models_tensor(path: Path) -> None:
    with h5py.File(path, "r+") as file:
        del file["parameters/features.2.project/weight"]
        file["parameters/features.2.project/weight"] = np.zeros((24, 5), dtype=np.float32)


def more_names_than_classes(path: Path) -> None:
    with h5py.File(path, "r+") as file:
        file.attrs["class_names"] = json.dumps(CLASS_NAMES + ["fox"])


@pytest.mark.parametrize("damage, message", [
    (older_format, "was written by an older tinytrain (checkpoint format 2), without the model's layers and class "
                   "names; fine-tune again"),
    (another_models_tensor, "(features.2.project: weight (24, 5) and bias (8,) do not fit its input"),
    (more_names_than_classes, "names 4 classes for a 3-class classifier"),
])
def test_a_checkpoint_that_does_not_describe_one_model_is_refused_in_one_line(tmp_path, images, capsys, damage,
                                                                              message):
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", make_graph())
    damage(checkpoint)
    status, out, err = run_cli(capsys, "--checkpoint", str(checkpoint), str(images[0]))
    assert status == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and str(checkpoint) in err


def test_files_that_are_no_checkpoint_are_refused_in_one_line(tmp_path, images, capsys):
    graph = make_graph()
    pruned = tmp_path / "pruned.h5"
    save_pruned(pruned, graph, {}, {"ratio": 0.0})
    cases = [
        (tmp_path / "missing.h5", "no checkpoint at"),
        (images[0], "is not a readable checkpoint"),
        (pruned, "is not a tinytrain checkpoint (its format is 'tinytrain-pruned-model'); pass the checkpoint.h5"),
    ]
    for checkpoint, message in cases:
        status, _, err = run_cli(capsys, "--checkpoint", str(checkpoint), str(images[0]))
        assert status == 1 and err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err and str(checkpoint) in err, err


def test_a_missing_or_corrupt_image_is_refused_before_any_prediction(tmp_path, images, capsys):
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", make_graph())
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images[0].read_bytes()[:300])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("shopping list")
    cases = [
        (tmp_path / "missing.jpg", "no such image file"),
        (truncated, "corrupt or truncated image ("),
        (not_an_image, "corrupt or truncated image (not an image format Pillow knows)"),
    ]
    for image, message in cases:
        status, out, err = run_cli(capsys, "--checkpoint", str(checkpoint), str(images[0]), str(image))
        assert status == 1 and out == "", out  # the good image first: nothing is printed for it either
        assert err.startswith(f"error: {image}: {message}") and err.count("\n") == 1, err  # no progress bar either


def test_a_top_k_below_one_is_a_usage_error(tmp_path, images, capsys):
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", make_graph())
    with pytest.raises(SystemExit) as usage:
        run_cli(capsys, "--checkpoint", str(checkpoint), "--top-k", "0", str(images[0]))
    assert usage.value.code == 2 and "--top-k 0: must be at least 1" in capsys.readouterr().err


def test_an_arena_too_small_for_the_model_names_what_overflowed(tmp_path, images, capsys):
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", make_graph())
    status, out, err = run_cli(capsys, "--checkpoint", str(checkpoint), "--arena-bytes", "8192", str(images[0]))
    assert status == 1 and out == "" and "Traceback" not in err, err
    assert err.startswith("error: arena overflow") and "the arena has 8,192 B" in err, err  # before any progress bar


def test_a_checkpoint_keeps_its_schedule_and_reads_one_written_before_strided_backward_in_place(tmp_path):
    graph = make_graph()
    schedule = MemorySchedule((PatchSpec(patch_boundaries(graph)[6], (2, 2)),), True, True)
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", graph, schedule)
    assert load_trained_model(checkpoint).memory_schedule == schedule
    with h5py.File(checkpoint, "r+") as file:  # as a checkpoint of before the option existed has it
        record = json.loads(file.attrs["memory_schedule"])
        del record["in_place_strided_backward"]
        file.attrs["memory_schedule"] = json.dumps(record)
    assert load_trained_model(checkpoint).memory_schedule == replace(schedule, in_place_strided_backward=False)


def test_a_damaged_schedule_is_refused(tmp_path, images):
    graph = make_graph()
    checkpoint = write_checkpoint(tmp_path / "checkpoint.h5", graph)
    with h5py.File(checkpoint, "r+") as file:
        file.attrs["memory_schedule"] = json.dumps({"patches": [{"end_layer": 999, "grid": [2, 2]}],
                                                    "in_place_depthwise": False})
    with pytest.raises(CheckpointError, match="memory schedule .* does not fit a graph of"):
        load_trained_model(checkpoint)
