"""Channel pruning: groups found from the graph, pruned = original with channels zeroed, identity at 0%, file
round trip at any resolution, L2 and Taylor against hand-made cases and autograd, the script end to end."""

import copy
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinytrain.arena import Arena
from tinytrain.engine import Engine
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.prune import (GROUP_KINDS, Calibration, calibration_set, channels_to_keep, find_channel_groups,
                             fit_probe_head, l2_importance, prune_graph, stage_count, taylor_importance)
from tinytrain.pruned_model import PrunedModelError, load_pruned, save_pruned
from tinytrain.torch_reference import TorchGraph


REPOSITORY = Path(__file__).resolve().parents[1]


def random_graph(resolution: int = 32, seed: int = 0):
    """Random MobileNetV2 with random folded biases too: with zero biases, ReLU6 of a zeroed channel is zero
    whether or not its bias was pruned, and the zeroing test below would prove less."""
    graph = build_mobilenetv2(num_classes=10, resolution=resolution, weights=None, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for layer in graph.weighted_layers:
        layer.bias[:] = rng.normal(0.0, 0.1, size=layer.bias.shape)
    return graph


def random_inputs(graph, count: int, seed: int = 0) -> list[np.ndarray]:
    """Preprocessed (C, H, W) float32 inputs."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=graph.input_shape).astype(np.float32) for _ in range(count)]


def random_calibration(resolution: int, count: int, seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, resolution, resolution, 3), dtype=np.uint8)
    return Calibration(images, rng.integers(0, 10, size=count))


def infer(graph, x: np.ndarray, read=()) -> dict[str, np.ndarray]:
    return Engine(graph, Arena(MEASURING_ARENA_BYTES)).infer(x, read=read)


def random_importance(groups, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {group.name: rng.random(group.channels) for group in groups}


@pytest.fixture(scope="module")
def graph():
    return random_graph()


@pytest.fixture
def one_torch_thread():
    """Torch's intra-op threads spin against Numba's on the same cores: 3 s per 32 px step instead of 15 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- groups -------------------------------------------

def test_groups_are_found_from_the_graph(graph):
    groups = find_channel_groups(graph)
    by_name = {group.name: group for group in groups}
    kinds = [group.kind for group in groups]
    # 17 blocks: the stem's channels are block 1's hidden ones, blocks 2-17 expand; 7 stages; one head
    assert (kinds.count("expanded"), kinds.count("block_output"), kinds.count("head")) == (17, 7, 1)
    stem = by_name["features.0"]
    assert (stem.producers, stem.depthwise, stem.consumers) == (("features.0",), ("features.1.depthwise",),
                                                                ("features.1.project",))
    expanded = by_name["features.3.expand"]
    assert expanded.tensors == ("features.3.expand", "features.3.depthwise") and expanded.channels == 144
    assert (expanded.producers, expanded.consumers) == (("features.3.expand",), ("features.3.project",))
    tied = by_name["features.4.project"]  # stage 32: three blocks joined by two adds
    assert tied.tensors == ("features.4.project", "features.5.project", "features.5.add", "features.6.project",
                            "features.6.add")
    assert tied.producers == ("features.4.project", "features.5.project", "features.6.project")
    assert tied.consumers == ("features.5.expand", "features.6.expand", "features.7.expand") and tied.depthwise == ()
    head = by_name["features.18"]
    assert (head.kind, head.tensors, head.consumers, head.channels) == ("head", ("features.18", "pool"),
                                                                        ("classifier",), 1280)
    assert stage_count(groups) == 8
    assert [stem.stage, by_name["features.2.expand"].stage, tied.stage, head.stage] == [0, 1, 2, 7]
    # every tensor but the image and the logits is in exactly one group
    grouped = [tensor for group in groups for tensor in group.tensors]
    assert sorted(grouped) == sorted(layer.output for layer in graph.layers[:-1])


# ---------------------------------------------------------------- slicing ------------------------------------------

def zero_channels(graph, groups, kept):
    """The original graph with every channel that `kept` drops zeroed where it is made: producer and depthwise rows
    and biases. ReLU6(0) = 0 and the add of zeros is zero, so consumers read zeros there, which add nothing."""
    zeroed = copy.deepcopy(graph)
    for group in groups:
        dropped = np.setdiff1d(np.arange(group.channels), kept[group.name])
        for name in group.producers + group.depthwise:
            zeroed.layer(name).weight[dropped] = 0.0
            zeroed.layer(name).bias[dropped] = 0.0
    return zeroed


def test_pruned_model_equals_the_original_with_pruned_channels_zeroed(graph):
    groups = find_channel_groups(graph)
    kept = channels_to_keep(groups, random_importance(groups), 0.5)
    pruned = prune_graph(graph, groups, kept)
    zeroed = zero_channels(graph, groups, kept)
    head = next(group for group in groups if group.kind == "head")
    for x in random_inputs(graph, 2):
        expected = infer(zeroed, x, read=("pool",))
        got = infer(pruned, x, read=("pool",))
        assert np.all(expected["pool"][np.setdiff1d(np.arange(1280), kept[head.name])] == 0.0)
        scale = np.abs(expected["pool"]).max()
        np.testing.assert_allclose(got["pool"], expected["pool"][kept[head.name]], rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(got["classifier"], expected["classifier"], rtol=1e-4,
                                   atol=1e-5 * np.abs(expected["classifier"]).max())
        assert not np.allclose(expected["classifier"], infer(graph, x)["classifier"], rtol=1e-3)  # it did prune


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9, (0.0, 0.2, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9)])
def test_groups_stay_consistent_at_any_ratio(graph, ratio):
    groups = find_channel_groups(graph)
    kept = channels_to_keep(groups, random_importance(groups), ratio)
    pruned = prune_graph(graph, groups, kept)  # the Graph checks every shape, residual adds included
    for group, after in zip(groups, find_channel_groups(pruned)):
        group_ratio = ratio if np.isscalar(ratio) else ratio[group.stage]
        assert (after.name, after.kind, after.channels) == (group.name, group.kind, len(kept[group.name]))
        assert after.channels == max(1, group.channels - int(np.floor(group_ratio * group.channels + 1e-9)))
    logits = infer(pruned, random_inputs(graph, 1)[0])["classifier"]
    assert logits.shape == (10,) and np.isfinite(logits).all()
    assert pruned.macs() < graph.macs() and pruned.parameter_bytes() < graph.parameter_bytes()


def test_pruning_nothing_is_the_identity(graph):
    groups = find_channel_groups(graph)
    importance = {group.name: l2_importance(graph, group) for group in groups}
    pruned = prune_graph(graph, groups, channels_to_keep(groups, importance, 0.0))
    for original, copied in zip(graph.layers, pruned.layers):
        assert (type(copied), copied.name, copied.inputs, copied.output) == (type(original), original.name,
                                                                            original.inputs, original.output)
        if original.has_weight:
            for name in ("weight", "bias"):
                before, after = getattr(original, name), getattr(copied, name)
                assert after.dtype == before.dtype and np.array_equal(after, before)
                assert not np.shares_memory(after, before)  # training the pruned copy leaves the original alone


def test_bad_ratios_and_channels_are_refused(graph):
    groups = find_channel_groups(graph)
    importance = random_importance(groups)
    for ratio in (1.0, -0.1, (0.5,) * 7 + (1.5,)):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            channels_to_keep(groups, importance, ratio)
    with pytest.raises(ValueError, match="stage ratios"):
        channels_to_keep(groups, importance, (0.5, 0.5))
    with pytest.raises(ValueError, match="distinct indices"):
        prune_graph(graph, groups, {"features.3.expand": np.array([0, 0, 1])})
    with pytest.raises(ValueError, match="no channel group"):
        prune_graph(graph, groups, {"features.3.depthwise": np.array([0])})


# ---------------------------------------------------------------- file ---------------------------------------------

def test_saved_model_loads_at_its_resolution_and_at_another(graph, tmp_path):
    groups = find_channel_groups(graph)
    kept = channels_to_keep(groups, random_importance(groups), 0.4)
    pruned = prune_graph(graph, groups, kept)
    path = tmp_path / "pruned.h5"
    save_pruned(path, pruned, kept, {"criterion": "random"})
    assert [item.name for item in tmp_path.iterdir()] == ["pruned.h5"]  # no temporary file left behind
    loaded = load_pruned(path, 32)
    assert loaded.shapes == pruned.shapes and loaded.preprocessing == pruned.preprocessing
    for original, reloaded in zip(pruned.layers, loaded.layers):
        assert type(reloaded) is type(original) and vars(reloaded).keys() == vars(original).keys()
        for key, value in vars(original).items():
            assert np.array_equal(getattr(reloaded, key), value), (original.name, key)
    x = random_inputs(graph, 1)[0]
    assert np.array_equal(infer(loaded, x)["classifier"], infer(pruned, x)["classifier"])
    # at 64 px it is the same pruning of the same model built at 64 px: TF "SAME" paddings are recomputed
    wider = random_graph(resolution=64)
    expected = prune_graph(wider, find_channel_groups(wider), kept)
    loaded_wider = load_pruned(path, 64)
    assert [getattr(layer, "padding", None) for layer in loaded_wider.layers] == \
           [getattr(layer, "padding", None) for layer in expected.layers]
    x = random_inputs(wider, 1)[0]
    assert np.array_equal(infer(loaded_wider, x)["classifier"], infer(expected, x)["classifier"])
    with h5py.File(path, "r") as file:
        assert np.array_equal(file["kept_channels/features.4.project"][()], kept["features.4.project"])


def test_a_failed_save_leaves_the_previous_file(graph, tmp_path, monkeypatch):
    path = tmp_path / "pruned.h5"
    save_pruned(path, graph, {}, {})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(path, graph, {}, {"attempt": 2})
    monkeypatch.undo()
    assert [item.name for item in tmp_path.iterdir()] == ["pruned.h5"]
    assert load_pruned(path, 32).shapes == graph.shapes


def test_missing_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(PrunedModelError, match="no pruned model at"):
        load_pruned(tmp_path / "absent.h5", 32)
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.attrs["format"] = "tinytrain-checkpoint"
    with pytest.raises(PrunedModelError, match="not a tinytrain pruned model"):
        load_pruned(tmp_path / "other.h5", 32)
    (tmp_path / "text.h5").write_text("not HDF5")
    with pytest.raises(PrunedModelError, match="cannot read"):
        load_pruned(tmp_path / "text.h5", 32)


# ---------------------------------------------------------------- importance ---------------------------------------

def test_taylor_is_activation_times_gradient_as_autograd_computes_it(graph, one_torch_thread):
    """Against torch autograd, with x where the channel is read (expanded, head) or made (residual: each
    producer's output, whose gradient includes the add path): sum over images of |sum over pixels of x * dL/dx|."""
    groups = {group.name: group for group in find_channel_groups(graph)}
    where = {"features.0": ("features.1.depthwise",), "features.3.expand": ("features.3.depthwise",),
             "features.4.project": ("features.4.project", "features.5.project", "features.6.project"),
             "features.18": ("pool",)}
    calibration = random_calibration(32, 3)
    scores = taylor_importance(graph, [groups[name] for name in where], calibration)

    reference = TorchGraph(graph)
    mean = torch.tensor(graph.preprocessing.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(graph.preprocessing.std, dtype=torch.float32)[:, None, None]
    expected = {name: np.zeros(groups[name].channels) for name in where}
    for image, label in zip(calibration.images, calibration.labels):
        x = (torch.tensor(image).permute(2, 0, 1) / 255.0 - mean) / std
        tensors = reference.forward(x[None])
        for names in where.values():
            for name in names:
                tensors[name].retain_grad()
        F.cross_entropy(tensors[graph.output_name], torch.tensor([int(label)])).backward()
        for group, names in where.items():
            per_channel = sum((tensors[name] * tensors[name].grad)[0].reshape(groups[group].channels, -1).sum(1)
                              for name in names)
            expected[group] += np.abs(per_channel.detach().numpy())
    for name in where:
        np.testing.assert_allclose(scores[name], expected[name], rtol=2e-3, atol=2e-3 * expected[name].max())


def test_l2_and_taylor_rank_a_dead_channel_with_large_weights_oppositely():
    graph = random_graph()
    group = next(group for group in find_channel_groups(graph) if group.name == "features.3.expand")
    dead, unread = 5, 9
    graph.layer("features.3.depthwise").weight[dead] = 0.0  # its output is ReLU6(0) = 0 for every input...
    graph.layer("features.3.depthwise").bias[dead] = 0.0
    graph.layer("features.3.project").weight[:, dead] *= 100.0  # ...however large the weights that read it
    graph.layer("features.3.project").weight[:, unread] = 0.0  # computed, but nothing reads it

    l2 = l2_importance(graph, group)
    taylor = taylor_importance(graph, [group], random_calibration(32, 2))[group.name]
    assert np.argmax(l2) == dead
    assert taylor[dead] == 0.0 and taylor[unread] == 0.0 and np.count_nonzero(taylor) > group.channels // 2
    by_l2 = channels_to_keep([group], {group.name: l2}, 0.5)[group.name]
    by_taylor = channels_to_keep([group], {group.name: taylor}, 0.5)[group.name]
    assert dead in by_l2
    assert dead not in by_taylor and unread not in by_taylor


def test_l2_importance_is_the_norm_of_every_weight_of_the_channel(graph):
    group = next(group for group in find_channel_groups(graph) if group.name == "features.4.project")
    channel = 3
    weights = [graph.layer(name).weight[channel] for name in group.producers]
    weights += [graph.layer(name).weight[:, channel] for name in group.consumers]
    expected = np.sqrt(sum(np.sum(np.square(w.astype(np.float64))) for w in weights))
    assert l2_importance(graph, group)[channel] == pytest.approx(expected, rel=1e-12)


def test_probe_head_fits_the_calibration_images(graph):
    calibration = random_calibration(32, 10)
    probed = fit_probe_head(graph, calibration)
    assert all(a is b for a, b in zip(probed.layers[:-1], graph.layers[:-1]))  # the backbone is shared
    engine = Engine(probed, Arena(MEASURING_ARENA_BYTES))
    predictions = [np.argmax(engine.infer(image)["classifier"]) for image in calibration.images]
    assert np.mean(np.array(predictions) == calibration.labels) >= 0.9


def test_calibration_set_is_a_seeded_subset_resized_like_training():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(50, dtype=np.uint8)  # label = index, to see which images were drawn
    first = calibration_set(images, labels, 8, 64, seed=3)
    again = calibration_set(images, labels, 8, 64, seed=3)
    assert first.images.shape == (8, 64, 64, 3) and len(first) == 8
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert len(set(first.labels)) == 8
    assert not np.array_equal(calibration_set(images, labels, 8, 64, seed=4).labels, first.labels)


# ---------------------------------------------------------------- script -------------------------------------------

def load_script():
    spec = importlib.util.spec_from_file_location("prune_model", REPOSITORY / "scripts" / "prune_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prunes_the_pretrained_model_and_reports_both_sizes(data_dir, tmp_path, capsys):
    script = load_script()
    output = tmp_path / "pruned.h5"
    code = script.main(["--ratio", "0.5", "--groups", *GROUP_KINDS, "--criterion", "taylor", "--calibration-images",
                        "4", "--resolution", "32", "--output", str(output), "--data-dir", str(data_dir)])
    printed = capsys.readouterr().out
    assert code == 0
    pruned = load_pruned(output, 32)
    assert f"| after | {sum(layer.weight.size + layer.bias.size for layer in pruned.weighted_layers):,} | " \
           f"{pruned.macs():,} |" in printed
    assert "| before | " in printed and "| head | head | 1 | 1,280 | 640 |" in printed
    with pytest.raises(SystemExit) as refused:
        script.main(["--ratio", "1.0"])
    assert refused.value.code == 2 and "pruning ratios must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--model", str(tmp_path / "absent.h5")])
    assert "no such file" in capsys.readouterr().err
