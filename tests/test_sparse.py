"""Sparse updates: selected-channel gradients are slices of the dense ones, memory is exact, draws behave."""

import numpy as np
import pytest

from tinytrain.arena import Arena
from tinytrain.engine import SGD, Engine, MicroBatch
from tinytrain.graph import Graph
from tinytrain.kernels.draw import draw_channels
from tinytrain.memory import measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import LayerUpdate, UpdatePlan, covers_all, full_update
from tinytrain.sparse import Coverage, conv_weight_fraction, make_policy, sparse_layers
from tinytrain.torch_reference import TorchGraph


BIG_ARENA = 64 << 20


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def small_model(seed=0):
    return build_mobilenetv2(resolution=64, width_mult=0.35, seed=seed)


def observed_gradients(graph, image, label, plan):
    gradients = {}

    def observe(parameter, dparameter, rows, cols):
        gradients[parameter] = (dparameter.copy(), rows.copy(), cols.copy())

    Engine(graph, Arena(BIG_ARENA)).train_step(image, label, plan, SGD(lr=0.0), observe_gradient=observe)
    return gradients


def channel_plan(graph, rng):
    """Random channel subsets in one layer of every type: stem conv, depthwise, pointwise, linear."""
    plan = {}
    for name in ("features.0", "features.3.depthwise", "features.3.project", "features.18", "classifier"):
        layer = graph.layer(name)
        rows = np.sort(rng.choice(layer.out_channels, size=max(1, layer.out_channels // 3), replace=False))
        cols = np.sort(rng.choice(layer.in_channels, size=max(1, layer.in_channels // 4), replace=False))
        plan[name] = LayerUpdate(rows.astype(np.int64), rows.astype(np.int64) if layer.selects_input_by_output
                                 else cols.astype(np.int64))
    return UpdatePlan(plan)


def test_policies_freeze_the_front_by_the_graph_s_blocks_not_by_layer_names():
    graph = build_mobilenetv2(resolution=32)
    trained = [x.name for x in sparse_layers(graph, 0.02, first_block=13)]
    assert trained[0] == "features.13.expand" and trained[-1] == "features.18"
    # the same layers, with the blocks renumbered by one: the first trained layer moves with them
    shifted = Graph(graph.layers, graph.input_name, graph.input_shape, graph.preprocessing,
                    {name: block + 1 for name, block in graph.blocks.items()})
    assert sparse_layers(shifted, 0.02, first_block=13)[0].name == "features.12.expand"


def test_selected_channel_gradients_equal_the_slice_of_the_dense_gradient(image):
    graph = small_model()
    dense = observed_gradients(graph, image, 3, UpdatePlan.dense(graph))
    sparse = observed_gradients(graph, image, 3, channel_plan(graph, np.random.default_rng(1)))
    assert len(sparse) == 10
    for name, (gradient, rows, cols) in sparse.items():
        full = dense[name][0]
        expected = full[rows][:, cols] if name.endswith(".weight") else full[rows]
        np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-6 * np.abs(full).max(), err_msg=name)


def test_sparse_step_matches_torch_sgd_restricted_to_the_same_channels(image):
    graph = small_model(seed=4)
    plan = channel_plan(graph, np.random.default_rng(2))
    preprocessed = ((image.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5).astype(np.float32)
    torch_graph = TorchGraph(graph)
    _, reference = torch_graph.gradients(preprocessed, label=7)
    before = torch_graph.tinytrain_values()
    lr = 0.05
    Engine(graph, Arena(BIG_ARENA)).train_step(image, 7, plan, SGD(lr=lr))
    for layer in graph.weighted_layers:
        expected_weight = before[f"{layer.name}.weight"].copy()
        expected_bias = before[f"{layer.name}.bias"].copy()
        update = plan.updates.get(layer.name)
        if update is not None:
            rows = update.out_channels
            if layer.selects_input_by_output:
                expected_weight[rows] -= lr * reference[f"{layer.name}.weight"][rows]
            else:
                grid = np.ix_(rows, update.in_channels)
                expected_weight[grid] -= lr * reference[f"{layer.name}.weight"][grid]
            expected_bias -= lr * reference[f"{layer.name}.bias"]
        np.testing.assert_allclose(layer.weight, expected_weight, rtol=1e-5, atol=1e-6, err_msg=layer.name)
        np.testing.assert_allclose(layer.bias, expected_bias, rtol=1e-5, atol=1e-6, err_msg=layer.name)


def test_saved_feature_bytes_equal_the_hand_count():
    graph = small_model()  # width 0.35 at 64x64: the last blocks run at 2x2 pixels
    chosen = np.array([0, 5, 9, 100, 200, 300, 335], dtype=np.int64)
    plan = UpdatePlan({
        "features.17.project": LayerUpdate(np.arange(112, dtype=np.int64), chosen),
        "classifier": full_update(graph.layer("classifier")),
    })
    memory = measure_training_step(graph, plan, BIG_ARENA)
    compact_input = 7 * 2 * 2 * 4  # 7 of the 336 depthwise channels of block 17, 2x2 pixels, float32
    head_mask = 1280 * 2 * 2 // 8  # ReLU6 of features.18: backward passes through it, 1 bit per element
    pooled = 1280 * 4  # the classifier trains fully, so its whole (1280,) input is kept
    probabilities = 10 * 4  # softmax output for the loss gradient
    assert graph.shapes["features.17.depthwise"] == (336, 2, 2)
    assert memory.feature_bytes == compact_input + head_mask + pooled + probabilities


def test_dynamic_draws_differ_between_steps_and_repeat_with_the_seed():
    graph = small_model()
    first, again = make_policy("dynamic", graph, seed=11), make_policy("dynamic", graph, seed=11)
    plans = [first.plan(step, 0) for step in range(3)]
    for layer in plans[0].updates:
        if layer != "classifier":  # a handful of channels out of many: two equal draws are all but impossible
            channels = [plan.updates[layer].in_channels for plan in plans]
            assert not np.array_equal(channels[0], channels[1]), layer
            assert not np.array_equal(channels[1], channels[2]), layer
    for step, plan in enumerate(plans):
        repeated = again.plan(step, 0)
        for name, update in plan.updates.items():
            np.testing.assert_array_equal(update.in_channels, repeated.updates[name].in_channels)
    assert conv_weight_fraction(graph, plans[0]) <= 0.02


def test_a_draw_picks_every_subset_of_a_pool_equally_often_in_ascending_order():
    pools = np.array([10, 11, 12, 13, 14, 7, 3, 9], dtype=np.int64)  # two layers: 2 of the first 5, 3 of the last 3
    pool_starts, pick_starts = np.array([0, 5, 8]), np.array([0, 2, 5])
    seen, picks = np.zeros(5, dtype=np.bool_), np.empty(5, dtype=np.int64)
    draws = 20_000
    counts = {}
    for key in range(draws):
        draw_channels(picks, pick_starts, pools, pool_starts, seen, np.uint64(7), np.uint64(key))
        counts[tuple(picks[:2])] = counts.get(tuple(picks[:2]), 0) + 1
        assert list(picks[2:]) == [3, 7, 9] and not seen.any()
    assert set(counts) == {(a, b) for a in range(10, 15) for b in range(a + 1, 15)}
    expected = draws / 10  # each of the 10 pairs: binomial, standard deviation 42
    assert all(abs(count - expected) < 5 * 42 for count in counts.values()), counts


def test_static_never_changes_and_dynamic_epoch_redraws_once_per_epoch():
    graph = small_model()
    static = make_policy("static", graph)
    assert static.plan(0, 0) is static.plan(500, 3)
    per_epoch = make_policy("dynamic-epoch", graph, seed=1)
    assert per_epoch.plan(0, 0) is per_epoch.plan(9, 0)
    assert per_epoch.plan(10, 1) is not per_epoch.plan(0, 0)


def test_static_picks_the_largest_norm_channels():
    graph = small_model()
    layers = sparse_layers(graph, 0.02)
    plan = make_policy("static", graph).plan(0, 0)
    x = layers[-1]
    layer = graph.layer(x.name)
    norms = np.linalg.norm(layer.weight, axis=0)  # per input channel
    chosen = plan.updates[x.name].in_channels
    assert len(chosen) == x.channels
    assert norms[chosen].min() >= np.delete(norms, chosen).max()


def test_coverage_grows_to_all_weights_of_the_trained_layers():
    graph = small_model()
    policy = make_policy("dynamic", graph, seed=0)
    coverage = Coverage(graph)
    fractions = []
    for step in range(400):
        coverage.record(policy.plan(step, 0))
        fractions.append(coverage.fraction)
    assert fractions[0] < 0.5
    assert fractions == sorted(fractions)
    assert fractions[-1] > 0.99


@pytest.mark.parametrize("policy_name", ["dynamic", "static", "dense"])
def test_coverage_marks_exactly_the_updated_weights(policy_name):
    graph = small_model()
    policy = make_policy(policy_name, graph, seed=1)
    coverage = Coverage(graph)
    expected = {}
    for step in range(5):
        plan = policy.plan(step, 0)
        coverage.record(plan)
        for name, update in plan.updates.items():
            layer = graph.layer(name)
            if update.trains_weight and layer.is_convolution:
                marks = expected.setdefault(name, np.zeros(layer.weight_rows_cols.shape[:2], dtype=bool))
                for row in update.out_channels:
                    marks[row, [0] if layer.selects_input_by_output else update.in_channels] = True
    assert expected.keys() == coverage.touched.keys()
    for name, marks in expected.items():
        np.testing.assert_array_equal(coverage.touched[name], marks, err_msg=name)


def test_bias_from_block_trains_biases_only_and_adds_no_conv_weights(image):
    graph = small_model()
    plain = make_policy("dynamic", graph, seed=3).plan(0, 0)
    plan = make_policy("dynamic", graph, seed=3, bias_from_block=10).plan(0, 0)
    assert conv_weight_fraction(graph, plan) == conv_weight_fraction(graph, plain)
    bias_only = [name for name in plan.updates if name not in plain.updates]
    assert "features.10.depthwise" in bias_only and "features.9.project" not in plan.updates
    assert all(not plan.updates[name].trains_weight and plan.updates[name].bias for name in bias_only)
    before = {name: (graph.layer(name).weight.copy(), graph.layer(name).bias.copy()) for name in bias_only}
    Engine(graph, Arena(BIG_ARENA)).train_step(image, 3, plan, SGD(lr=0.1))
    for name, (weight, bias) in before.items():
        np.testing.assert_array_equal(graph.layer(name).weight, weight, err_msg=name)
    assert any(not np.array_equal(graph.layer(name).bias, bias) for name, (_, bias) in before.items())


def test_a_micro_batch_applies_the_mean_of_its_samples_gradients():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    labels = [1, 4, 7]
    graph = small_model()
    plan = make_policy("dynamic", graph, seed=2, bias_from_block=10).plan(0, 0)
    per_sample = [observed_gradients(graph, image, label, plan) for image, label in zip(images, labels)]
    lr = 0.05

    def parameter_view(parameter):  # (rows, cols, taps) like the gradients the engine observes
        layer_name, kind = parameter.rsplit(".", 1)
        layer = graph.layer(layer_name)
        return layer.weight_rows_cols if kind == "weight" else layer.bias.reshape(-1, 1, 1)

    expected = {}
    for parameter, (_, rows, cols) in per_sample[0].items():
        mean = np.mean([gradients[parameter][0] for gradients in per_sample], axis=0)
        expected[parameter] = parameter_view(parameter)[np.ix_(rows, cols)] - lr * mean
    before = {parameter: parameter_view(parameter).copy() for parameter in expected}
    arena = Arena(BIG_ARENA)
    engine = Engine(graph, arena)
    for index, (image, label) in enumerate(zip(images, labels)):
        engine.train_step(image, label, plan, SGD(lr=lr), micro_batch=MicroBatch(index, len(images)))
        if index == 0:  # nothing changes before the last sample
            for parameter, values in before.items():
                np.testing.assert_array_equal(parameter_view(parameter), values, err_msg=parameter)
    for parameter, (_, rows, cols) in per_sample[0].items():
        np.testing.assert_allclose(parameter_view(parameter)[np.ix_(rows, cols)], expected[parameter], rtol=1e-5,
                                   atol=1e-6, err_msg=parameter)
    assert arena.live_bytes == 0


def test_an_error_abandons_the_micro_batch_and_frees_its_sums(image):
    graph = small_model()
    plan = make_policy("dynamic", graph, seed=2).plan(0, 0)
    arena = Arena(BIG_ARENA)
    engine = Engine(graph, arena)
    sgd = SGD(lr=0.1, momentum=0.9)
    engine.train_step(image, 1, plan, sgd, micro_batch=MicroBatch(0, 2))
    assert arena.live_bytes_by_kind["wgrad"] > 0  # the sums wait for the last sample
    poisoned = np.full(graph.input_shape, np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        engine.train_step(poisoned, 1, plan, sgd, micro_batch=MicroBatch(1, 2))
    assert arena.live_bytes == 0
    for index in range(2):  # a new micro-batch starts from zero sums
        engine.train_step(image, 1 + index, plan, sgd, micro_batch=MicroBatch(index, 2))
    assert arena.live_bytes == arena.live_bytes_by_kind["optim"] > 0


def test_a_saved_input_is_whole_only_for_every_channel_in_order():
    assert covers_all(np.arange(6, dtype=np.int64), 6)
    assert not covers_all(np.array([0, 1, 2, 3, 5, 4], dtype=np.int64), 6)  # all of them, but not in order
    assert not covers_all(np.arange(5, dtype=np.int64), 6)
    assert covers_all(np.zeros(0, dtype=np.int64), 0)
