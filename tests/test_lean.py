"""The lean schedule (patches, depthwise in place, projections added into their residual, strided depthwise backward
in place, planned offsets) computes the layer-by-layer numbers, and fits the default run's step into 256 KiB."""

from dataclasses import replace

import numpy as np
import pytest

from tinytrain.arena import DEFAULT_CAPACITY, Arena, ArenaOverflow
from tinytrain.budget import BudgetTooSmall, fit_schedule
from tinytrain.engine import SGD, Engine
from tinytrain.layers import Add, Depthwise
from tinytrain.memory import MEASURING_ARENA_BYTES, measure_training_step, measured_step_table
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.oplog import ArenaCorruption
from tinytrain.patches import plan_patch_stage
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, PatchSpec, UpdatePlan
from tinytrain.torch_reference import TorchGraph
from tinytrain.train import TrainConfig, training_policy
from tinytrain.weights import load_pretrained



def lean_schedule(graph, grids=((5, 5), (4, 4))) -> MemorySchedule:
    """Two patch stages, features.0 to features.2.project and features.3 to features.4.project, and in place."""
    ends = [index + 1 for index, layer in enumerate(graph.layers)
            if layer.name in ("features.2.project", "features.4.project")]
    return MemorySchedule(tuple(PatchSpec(end, grid) for end, grid in zip(ends, grids)), True)


def image(resolution, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.fixture(scope="module")
def pretrained_weights(data_dir, tmp_path_factory):
    return load_pretrained(data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("cache"), allow_download=False)


@pytest.fixture(scope="module")
def pretrained_graphs(pretrained_weights):
    return {resolution: build_mobilenetv2(num_classes=10, resolution=resolution, weights=pretrained_weights)
            for resolution in (128, 72)}


@pytest.mark.parametrize("resolution", [128, 72])  # at 72 the 4x4 grid splits a 9x9 output unevenly
def test_lean_forward_equals_layer_by_layer_on_the_pretrained_model(pretrained_graphs, resolution):
    graph = pretrained_graphs[resolution]
    schedule = lean_schedule(graph)
    stage = plan_patch_stage(graph, schedule.patches[0].end_layer, schedule.patches[1].end_layer, (4, 4))
    if resolution == 72:
        assert graph.shapes[stage.output][1] % 4 != 0
    read = tuple(layer.output for layer in graph.layers[schedule.patches[-1].end_layer - 1:])
    plain = Engine(graph, Arena(MEASURING_ARENA_BYTES)).infer(image(resolution), read)
    lean = Engine(graph, Arena(MEASURING_ARENA_BYTES), memory_schedule=schedule).infer(image(resolution), read)
    for name in read:
        assert relative_error(lean[name], plain[name]) < 1e-5, name


def observed_step(graph, plan, schedule, arena_bytes, seed=0):
    gradients = {}

    def observe(parameter, dparameter, rows, cols):
        gradients[parameter] = dparameter.copy()

    engine = Engine(graph, Arena(arena_bytes), memory_schedule=schedule)
    result = engine.train_step(image(graph.input_shape[1], seed), 3, plan, SGD(lr=0.0), observe_gradient=observe)
    return result.loss, gradients, engine.arena


def test_lean_training_step_equals_layer_by_layer_on_the_pretrained_model(pretrained_graphs):
    graph = pretrained_graphs[128]
    plan = training_policy(TrainConfig(), graph).plan(5, 0)
    loss, gradients, _ = observed_step(graph, plan, LAYER_BY_LAYER, MEASURING_ARENA_BYTES)
    lean_loss, lean_gradients, arena = observed_step(graph, plan, lean_schedule(graph), DEFAULT_CAPACITY)
    assert arena.high_water_bytes <= DEFAULT_CAPACITY
    assert lean_loss == pytest.approx(loss, rel=1e-5)
    assert gradients.keys() == lean_gradients.keys() and len(gradients) > 20
    for name, gradient in gradients.items():
        assert relative_error(lean_gradients[name], gradient) < 1e-5, name


def test_lean_step_matches_torch_autograd_restricted_to_the_same_channels(pretrained_weights):
    """Tolerance as for the dense step: within 1e-4 of the largest magnitude of torch's gradient."""
    graph = build_mobilenetv2(num_classes=10, resolution=96, weights=pretrained_weights, seed=3)
    plan = training_policy(TrainConfig(), graph).plan(2, 0)
    pixels = image(96, seed=2)
    mean, std = np.array(graph.preprocessing.mean), np.array(graph.preprocessing.std)
    preprocessed = ((pixels.transpose(2, 0, 1) / 255.0 - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    reference_loss, reference = TorchGraph(graph).gradients(preprocessed, label=5)
    ours = {}

    def observe(parameter, dparameter, rows, cols):
        ours[parameter] = (dparameter.copy(), rows.copy(), cols.copy())

    engine = Engine(graph, Arena(DEFAULT_CAPACITY), memory_schedule=lean_schedule(graph))
    result = engine.train_step(pixels, 5, plan, SGD(lr=0.0), observe_gradient=observe)
    assert result.loss == pytest.approx(reference_loss, rel=1e-5)
    expected_names = {f"{name}.bias" for name, update in plan.updates.items() if update.bias}
    expected_names |= {f"{name}.weight" for name, update in plan.updates.items() if update.trains_weight}
    assert set(ours) == expected_names
    for name, (gradient, rows, cols) in ours.items():
        full = reference[name].reshape(reference[name].shape[0], -1 if name.endswith(".weight") else 1)
        in_channels = graph.layer(name.rsplit(".", 1)[0]).in_channels
        if name.endswith(".weight") and full.shape[1] != in_channels:  # conv: (rows, cols, taps)
            full = reference[name].reshape(reference[name].shape[0], in_channels, -1)
        expected = full[rows][:, cols]
        assert np.abs(gradient.reshape(expected.shape) - expected).max() <= 1e-4 * np.abs(full).max(), name


def test_the_lean_schedule_uses_every_technique_it_names(pretrained_graphs):
    graph = pretrained_graphs[128]
    plan = training_policy(TrainConfig(), graph).plan(0, 0)
    _, _, arena = observed_step(graph, plan, lean_schedule(graph), DEFAULT_CAPACITY)
    allocated = {event.name for event in arena.trace if event.action == "alloc"}
    reused = {event.name for event in arena.trace if event.reuses}
    assert "input.frame" in allocated and "input" not in allocated  # the float image never exists whole
    assert "features.1.depthwise.tile" in allocated and "features.1.depthwise" not in allocated
    in_place = {layer.output for layer in graph.layers[21:] if isinstance(layer, Depthwise)}
    assert in_place & reused == in_place  # every depthwise after the patches writes over its input
    assert {layer.output for layer in graph.layers[21:] if isinstance(layer, Add)} <= reused
    assert "dfeatures.13.expand" in reused  # a stride-1 depthwise backward writes dx over dout


def test_strided_backward_in_place_equals_layer_by_layer_on_the_pretrained_model(pretrained_graphs):
    """First block 11: block 14's stride-2 depthwise writes its 576x8x8 input gradient over its 576x4x4 output
    gradient, made in a block of the larger size, and the step computes the layer-by-layer numbers."""
    graph = pretrained_graphs[128]
    plan = training_policy(TrainConfig(first_block=11), graph).plan(5, 0)
    schedule = replace(lean_schedule(graph), in_place_strided_backward=True)
    loss, gradients, _ = observed_step(graph, plan, LAYER_BY_LAYER, MEASURING_ARENA_BYTES)
    lean_loss, lean_gradients, arena = observed_step(graph, plan, schedule, DEFAULT_CAPACITY)
    assert arena.high_water_bytes <= DEFAULT_CAPACITY
    grown = [event for event in arena.trace if event.action == "alloc" and event.name == "dfeatures.14.depthwise"]
    assert [event.nbytes for event in grown] == [graph.tensor_bytes("features.14.expand")]
    assert "dfeatures.14.expand" in {event.name for event in arena.trace if event.reuses}
    assert lean_loss == pytest.approx(loss, rel=1e-5)
    assert gradients.keys() == lean_gradients.keys() and len(gradients) > 20
    for name, gradient in gradients.items():
        assert relative_error(lean_gradients[name], gradient) < 1e-5, name


def test_first_block_11_fits_256_kib_only_with_strided_backward_in_place():
    graph = build_mobilenetv2(num_classes=10, resolution=128)
    default = fit_schedule(graph, training_policy(TrainConfig(), graph).plan(0, 0), DEFAULT_CAPACITY)
    assert not default.schedule.in_place_strided_backward  # the default fits without it: its plan is unchanged
    plan = training_policy(TrainConfig(first_block=11), graph).plan(0, 0)
    fitted = fit_schedule(graph, plan, DEFAULT_CAPACITY)
    assert fitted.schedule.in_place_strided_backward
    assert fitted.memory.high_water_bytes <= DEFAULT_CAPACITY
    without = measure_training_step(graph, plan, MEASURING_ARENA_BYTES,
                                    memory_schedule=replace(fitted.schedule, in_place_strided_backward=False))
    assert without.high_water_bytes > DEFAULT_CAPACITY


def test_the_default_run_fits_256_kib_at_128_pixels():
    graph = build_mobilenetv2(num_classes=10, resolution=128)  # memory depends on shapes, not on weights
    config = TrainConfig()
    assert config.arena_bytes == 262_144 and config.resolution == 128
    plan = training_policy(config, graph).plan(0, 0)
    fitted = fit_schedule(graph, plan, config.arena_bytes)
    dense = measure_training_step(graph, UpdatePlan.dense(graph), MEASURING_ARENA_BYTES)
    assert fitted.memory.arena_bytes == 262_144
    assert fitted.memory.whole_step_peak_bytes <= fitted.memory.high_water_bytes <= 262_144
    assert 1 - fitted.memory.feature_bytes / dense.feature_bytes >= 0.98
    # layer by layer, the same plan needs the 1,966,080 B of the float32 forward
    with pytest.raises(ArenaOverflow):
        measure_training_step(graph, plan, config.arena_bytes, memory_schedule=LAYER_BY_LAYER)


def test_biases_from_block_6_fit_256_kib_by_searching_the_placement():
    """Greedy by size leaves a hole at its fullest moment (its offsets overflow the budget although the bytes live
    at once fit it); the search finds offsets that fit, and the checked dry run in the budget's arena proves them."""
    graph = build_mobilenetv2(num_classes=10, resolution=128)
    plan = training_policy(TrainConfig(bias_from_block=6), graph).plan(0, 0)
    fitted = fit_schedule(graph, plan, DEFAULT_CAPACITY)
    greedy = measure_training_step(graph, plan, MEASURING_ARENA_BYTES, memory_schedule=fitted.schedule)
    assert greedy.high_water_bytes > DEFAULT_CAPACITY >= greedy.whole_step_peak_bytes
    assert fitted.memory.whole_step_peak_bytes == greedy.whole_step_peak_bytes
    assert fitted.memory.high_water_bytes <= DEFAULT_CAPACITY


def test_a_budget_no_schedule_meets_fails_naming_the_tensor_and_the_budget_that_would():
    graph = build_mobilenetv2(num_classes=10, resolution=64)
    plan = training_policy(TrainConfig(), graph).plan(0, 0)
    with pytest.raises(BudgetTooSmall) as failure:
        fit_schedule(graph, plan, 48 << 10)
    message = str(failure.value)
    smallest = int(message.split("an arena of at least ")[1].split(" B")[0].replace(",", ""))
    assert "the largest '" in message and smallest > 48 << 10
    fitted = fit_schedule(graph, plan, smallest)  # the budget it names is enough
    assert fitted.memory.high_water_bytes <= smallest


def test_checked_mode_catches_an_op_that_writes_outside_its_outputs(monkeypatch):
    graph = build_mobilenetv2(num_classes=10, resolution=64)
    plan = training_policy(TrainConfig(), graph).plan(0, 0)
    schedule = lean_schedule(graph, grids=((2, 2), (2, 2)))
    table = measured_step_table(graph, plan, MEASURING_ARENA_BYTES, memory_schedule=schedule, checked=True)
    assert len(table.ops) > 100 and table.high_water_bytes > 0  # the honest step passes
    layer = graph.layer("features.9.project")
    forward = layer.forward_into_residual  # the lean schedule adds this projection into its residual stream

    def forward_that_also_writes_its_input(out, x, call):
        forward(out, x, call=call)
        x[0, 0, 0] = 1.0  # a wrong view: its input is not its output

    monkeypatch.setattr(layer, "forward_into_residual", forward_that_also_writes_its_input)
    with pytest.raises(ArenaCorruption, match="fwd features.9.project.*features.9.depthwise"):
        measured_step_table(graph, plan, MEASURING_ARENA_BYTES, memory_schedule=schedule, checked=True)
