"""The engine on MobileNetV2: conformance with PyTorch, gradients of a full step, memory bookkeeping, errors."""

import numpy as np
import pytest
import torch

from tinytrain.arena import Arena, ArenaOverflow
from tinytrain.engine import SGD, Engine, NonFiniteLoss
from tinytrain.memory import measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import UpdatePlan, full_update
from tinytrain.torch_reference import TorchGraph
from tinytrain.weights import load_pretrained

from reference_mobilenetv2 import build_reference

BIG_ARENA = 64 << 20


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    return load_pretrained(data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("cache"), allow_download=False)


@pytest.fixture(scope="module")
def cifar_images(data_dir) -> np.ndarray:
    """The first pixel-exact CIFAR-10 test images as (N, H, W, 3) uint8."""
    rows = np.load(data_dir / "cifar10" / "cifar10_exact_subset.npz")["test_subset_data"][:8]
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


@pytest.fixture(scope="module")
def cifar_image(cifar_images) -> np.ndarray:
    return cifar_images[0]


def preprocess(image: np.ndarray, graph) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, the weights' normalisation, done independently of the engine."""
    mean = np.array(graph.preprocessing.mean, np.float32)[:, None, None]
    std = np.array(graph.preprocessing.std, np.float32)[:, None, None]
    return ((image.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# At 32x32 the frozen ImageNet head is nearly dead (scripts/feature_liveness.py): its folded biases are all at or
# below -3.68, so many CIFAR images give an all-zero pooled feature. Image 7 has some alive; the test asserts it.
@pytest.mark.parametrize("resolution, image_index", [(224, 0), (32, 7)])
def test_pretrained_outputs_match_pytorch_reference(pretrained, cifar_images, resolution, image_index):
    graph = build_mobilenetv2(num_classes=10, resolution=resolution, weights=pretrained, seed=0)
    head = graph.layer("classifier")
    reference = build_reference(pretrained, head.weight, head.bias).eval()
    upscale = resolution // 32
    image = np.repeat(np.repeat(cifar_images[image_index], upscale, axis=0), upscale, axis=1)
    x = preprocess(image, graph)
    ours = Engine(graph, Arena(BIG_ARENA)).infer(x, read=("pool",))
    with torch.no_grad():
        logits = reference(torch.tensor(x[None]))[0].numpy()
        features = reference.features(torch.tensor(x[None]))[0].numpy()
    assert ours["pool"].shape == (1280,) and np.count_nonzero(features) > 0
    assert relative_error(ours["pool"], features) < 1e-4
    assert relative_error(ours["classifier"], logits) < 1e-4


def test_uint8_input_is_normalised_like_the_weights_say(pretrained, cifar_image):
    graph = build_mobilenetv2(resolution=32, weights=pretrained)
    engine = Engine(graph, Arena(BIG_ARENA))
    from_pixels = engine.infer(cifar_image)["classifier"]
    from_floats = engine.infer(preprocess(cifar_image, graph))["classifier"]
    np.testing.assert_allclose(from_pixels, from_floats, rtol=1e-5, atol=1e-6)


def collect_gradients(engine, image, label, plan, sgd):
    """Every parameter gradient the step applied, as (gradient (rows, cols, taps), rows, cols); tiles joined."""
    tiles = {}

    def observe(parameter, dparameter, rows, cols):
        tiles.setdefault(parameter, []).append((dparameter.copy(), rows.copy(), cols.copy()))

    result = engine.train_step(image, label, plan, sgd, observe_gradient=observe)
    gradients = {name: (np.concatenate([t[0] for t in parts]), np.concatenate([t[1] for t in parts]), parts[0][2])
                 for name, parts in tiles.items()}
    return result, gradients


def as_parameter_slice(graph, name, reference_gradient, rows, cols):
    """torch's full gradient of `name`, cut to the engine's (rows, cols, taps) layout."""
    layer = graph.layer(name.rsplit(".", 1)[0])
    if name.endswith(".bias"):
        return reference_gradient.reshape(-1, 1, 1)[rows][:, cols]
    if layer.selects_input_by_output:
        return reference_gradient.reshape(reference_gradient.shape[0], 1, -1)[rows][:, cols]
    return reference_gradient.reshape(reference_gradient.shape[0], reference_gradient.shape[1], -1)[rows][:, cols]


def test_dense_step_gradients_match_autograd_on_pretrained_model(pretrained, cifar_image):
    """Tolerance: every parameter gradient within 1e-4 of the largest magnitude of torch's gradient of it.
    At 64x64, unlike 32x32, the pretrained head is alive, so every parameter gets a non-zero gradient."""
    graph = build_mobilenetv2(resolution=64, weights=pretrained, seed=1)
    x = preprocess(np.repeat(np.repeat(cifar_image, 2, axis=0), 2, axis=1), graph)
    reference_loss, reference = TorchGraph(graph).gradients(x, label=3)
    result, ours = collect_gradients(Engine(graph, Arena(BIG_ARENA)), x, 3, UpdatePlan.dense(graph), SGD(lr=0.0))
    assert result.loss == pytest.approx(reference_loss, rel=1e-5)
    assert set(ours) == set(reference)
    for name, (gradient, rows, cols) in ours.items():
        expected = as_parameter_slice(graph, name, reference[name], rows, cols)
        assert np.abs(expected).max() > 0, name
        assert relative_error(gradient, expected) < 1e-4, name


def test_sgd_step_changes_weights_like_torch_sgd(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35, seed=2)
    x = preprocess(cifar_image, graph)
    torch_graph = TorchGraph(graph)
    _, reference = torch_graph.gradients(x, label=5)
    before = torch_graph.tinytrain_values()
    lr = 0.01
    Engine(graph, Arena(BIG_ARENA)).train_step(x, 5, UpdatePlan.dense(graph), SGD(lr=lr))
    for layer in graph.weighted_layers:
        for parameter in ("weight", "bias"):
            name = f"{layer.name}.{parameter}"
            np.testing.assert_allclose(getattr(layer, parameter), before[name] - lr * reference[name],
                                       rtol=1e-5, atol=1e-6, err_msg=name)


def test_label_smoothed_step_gradients_match_autograd(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35, seed=3)
    x = preprocess(cifar_image, graph)
    reference_loss, reference = TorchGraph(graph).gradients(x, label=7, label_smoothing=0.1)
    plain = Engine(graph, Arena(BIG_ARENA)).train_step(x, 7, UpdatePlan.dense(graph), SGD(lr=0.0))
    result, ours = collect_gradients(Engine(graph, Arena(BIG_ARENA), label_smoothing=0.1), x, 7,
                                     UpdatePlan.dense(graph), SGD(lr=0.0))
    assert result.loss == pytest.approx(reference_loss, rel=1e-5)
    assert result.loss != pytest.approx(plain.loss, rel=1e-3)
    for name, (gradient, rows, cols) in ours.items():
        expected = as_parameter_slice(graph, name, reference[name], rows, cols)
        assert relative_error(gradient, expected) < 1e-4, name


def test_weight_gradient_tiles_bound_the_wgrad_peak_and_change_nothing(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35, seed=3)
    plan = UpdatePlan.dense(graph)
    whole_arena, tiled_arena = Arena(BIG_ARENA), Arena(BIG_ARENA)
    _, whole = collect_gradients(Engine(graph, whole_arena), cifar_image, 4, plan, SGD(lr=0.0))
    _, tiled = collect_gradients(Engine(graph, tiled_arena, wgrad_tile_bytes=4096), cifar_image, 4, plan,
                                 SGD(lr=0.0))
    for name, (gradient, rows, cols) in whole.items():
        # the same sums; BLAS may block a smaller matrix product differently, so allow float32 rounding
        np.testing.assert_allclose(tiled[name][0], gradient, rtol=0, atol=1e-6 * np.abs(gradient).max(),
                                   err_msg=name)
        np.testing.assert_array_equal(tiled[name][1], rows, err_msg=name)
    widest_row = max(4 * layer.weight[0].size for layer in graph.weighted_layers)
    assert tiled_arena.peak_bytes_by_kind["wgrad"] <= max(4096, widest_row)
    assert whole_arena.peak_bytes_by_kind["wgrad"] > 4096


def test_a_step_leaves_nothing_live_and_balances_its_trace(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35)
    arena = Arena(BIG_ARENA)
    Engine(graph, arena).train_step(cifar_image, 1, UpdatePlan.dense(graph), SGD(lr=0.01))
    assert arena.live_bytes == 0
    allocated = sum(event.nbytes for event in arena.trace if event.action == "alloc")
    freed = sum(event.nbytes for event in arena.trace if event.action == "free")
    assert allocated == freed > 0
    assert arena.peak_bytes_by_kind["saved"] > 0 and arena.peak_bytes_by_kind["wgrad"] > 0


def test_backward_stops_at_the_earliest_trained_layer(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35)
    trained = ["features.17.project", "features.18", "classifier"]
    plan = UpdatePlan({name: full_update(graph.layer(name)) for name in trained})
    arena = Arena(BIG_ARENA)
    _, gradients = collect_gradients(Engine(graph, arena), cifar_image, 0, plan, SGD(lr=0.01))
    assert sorted(gradients) == sorted(f"{name}.{p}" for name in trained for p in ("weight", "bias"))
    gradient_names = {event.name for event in arena.trace if event.kind == "grad" and event.action == "alloc"}
    first_trained = [layer.name for layer in graph.layers].index("features.17.project")
    below = {f"d{layer.output}" for layer in graph.layers[:first_trained]} | {f"d{graph.input_name}"}
    assert gradient_names and not gradient_names & below
    assert arena.live_bytes == 0


def test_non_finite_loss_stops_the_step_and_leaves_weights_and_arena_clean(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35)
    graph.layer("classifier").bias[0] = np.nan
    stem_before = graph.layer("features.0").weight.copy()
    arena = Arena(BIG_ARENA)
    with pytest.raises(NonFiniteLoss, match="loss is nan"):
        Engine(graph, arena).train_step(cifar_image, 0, UpdatePlan.dense(graph), SGD(lr=0.01))
    np.testing.assert_array_equal(graph.layer("features.0").weight, stem_before)
    assert arena.live_bytes == 0


def test_plan_that_does_not_fit_fails_in_the_dry_run():
    graph = build_mobilenetv2(resolution=32, width_mult=0.35)
    with pytest.raises(ArenaOverflow, match="arena overflow"):
        measure_training_step(graph, UpdatePlan.dense(graph), arena_bytes=64 * 1024)


def test_bad_inputs_are_refused(cifar_image):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35)
    engine = Engine(graph, Arena(BIG_ARENA))
    with pytest.raises(ValueError, match="uint8 image must be"):
        engine.infer(cifar_image[:16])
    with pytest.raises(ValueError, match="NaN"):
        engine.infer(np.full((3, 32, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match="label 10 outside"):
        engine.train_step(cifar_image, 10, UpdatePlan.dense(graph), SGD(lr=0.01))
    assert engine.arena.live_bytes == 0
