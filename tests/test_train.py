"""The trainer: it learns on a small subset, resumes exactly, and stops cleanly on a non-finite loss."""

from dataclasses import replace

import numpy as np
import pytest

from tinytrain.checkpoint import load_checkpoint
from tinytrain.engine import NonFiniteLoss
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.prune import channels_to_keep, find_channel_groups, l2_importance, prune_graph, save_pruned
from tinytrain.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def make_trainer(config, output_dir, data_dir, cache_dir):
    return Trainer(config, output_dir, data_dir=data_dir, cache_dir=cache_dir, progress=False)


def test_short_fine_tune_learns_well_above_chance(data_dir, cache_dir, tmp_path):
    config = TrainConfig(resolution=64, epochs=2, train_subset=1000, test_subset=1000, lr=0.01, warmup_steps=100)
    results = make_trainer(config, tmp_path, data_dir, cache_dir).run()
    first, second = results["history"]
    assert second["train_loss"] < first["train_loss"]
    assert results["test_accuracy"] > 0.25
    assert results["conv_weight_fraction_per_step"] <= 0.02
    assert results["feature_reduction"] >= 0.98
    assert (tmp_path / "results.json").is_file()


def run_until(trainer, stop_at_step, monkeypatch):
    """Train, but die like a killed process right before step `stop_at_step`."""
    calls = {"count": 0}
    original = trainer.engine.train_step

    def train_step(*args, **kwargs):
        if calls["count"] == stop_at_step:
            raise KeyboardInterrupt
        calls["count"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.engine, "train_step", train_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()


def test_resume_continues_exactly_where_it_stopped(data_dir, cache_dir, tmp_path, monkeypatch):
    # momentum keeps one buffer per whole trained parameter, in the arena: a few MB for the dynamic layers
    config = TrainConfig(resolution=32, epochs=2, train_subset=40, test_subset=10, warmup_steps=10, momentum=0.9,
                         weight_decay=1e-4, checkpoint_every=25, arena_bytes=16 << 20)
    straight = make_trainer(config, tmp_path / "straight", data_dir, cache_dir)
    straight.run()
    interrupted = make_trainer(config, tmp_path / "resumed", data_dir, cache_dir)
    run_until(interrupted, 57, monkeypatch)  # the last checkpoint is at step 50, mid-way through epoch 2
    resumed = make_trainer(config, tmp_path / "resumed", data_dir, cache_dir)
    results = resumed.run(resume=True)
    assert results["steps"] == 80
    for ours, theirs in zip(resumed.graph.weighted_layers, straight.graph.weighted_layers):
        np.testing.assert_array_equal(ours.weight, theirs.weight, err_msg=ours.name)
        np.testing.assert_array_equal(ours.bias, theirs.bias, err_msg=ours.name)
    assert resumed.coverage.fraction == straight.coverage.fraction


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(data_dir, cache_dir, tmp_path, monkeypatch):
    config = TrainConfig(resolution=32, epochs=1, train_subset=30, test_subset=10, checkpoint_every=10)
    trainer = make_trainer(config, tmp_path, data_dir, cache_dir)
    calls = {"count": 0}
    original = trainer.engine.train_step

    def train_step(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 15:
            trainer.graph.layer("classifier").bias[0] = np.nan  # poison the logits: the loss becomes NaN
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.engine, "train_step", train_step)
    with pytest.raises(NonFiniteLoss, match="step 14: loss is nan.*last good checkpoint"):
        trainer.run()
    fresh = build_mobilenetv2(resolution=32)
    state = load_checkpoint(tmp_path / "checkpoint.h5", fresh)
    assert state.step == 10
    assert all(np.isfinite(layer.bias).all() for layer in fresh.weighted_layers)


def test_trains_a_pruned_model_file(data_dir, cache_dir, tmp_path):
    original = build_mobilenetv2(resolution=32)
    groups = find_channel_groups(original)
    kept = channels_to_keep(groups, {group.name: l2_importance(original, group) for group in groups}, 0.5)
    pruned_path = tmp_path / "pruned.h5"
    save_pruned(pruned_path, prune_graph(original, groups, kept), kept, {"ratio": 0.5})
    config = TrainConfig(model=str(pruned_path), resolution=32, epochs=1, train_subset=20, test_subset=10)
    trainer = make_trainer(config, tmp_path / "run", data_dir, cache_dir)
    expanded = "features.2.expand"
    assert trainer.graph.layer(expanded).out_channels == original.layer(expanded).out_channels // 2
    results = trainer.run()
    assert results["config"]["model"] == str(pruned_path) and results["steps"] == 20


def test_micro_batches_train_within_the_dry_run_peak(data_dir, cache_dir, tmp_path):
    config = TrainConfig(resolution=32, epochs=1, train_subset=20, test_subset=10, micro_batch=4, checkpoint_every=8,
                         arena_bytes=1 << 20)  # the gradient sums of a micro-batch need more than 256 KiB
    trainer = make_trainer(config, tmp_path, data_dir, cache_dir)
    single = make_trainer(replace(config, micro_batch=1), tmp_path / "single", data_dir, cache_dir)
    # the summed gradients live from one sample to the next, on top of a step's own weight gradients
    assert trainer.dry_run.peak_bytes_by_kind["wgrad"] > single.dry_run.peak_bytes_by_kind["wgrad"]
    before = trainer.graph.layer("classifier").weight.copy()
    results = trainer.run()
    assert results["steps"] == 20 and results["whole_step_peak_bytes"] == trainer.dry_run.whole_step_peak_bytes
    assert not np.array_equal(trainer.graph.layer("classifier").weight, before)
    with pytest.raises(ValueError, match="must divide"):
        make_trainer(replace(config, micro_batch=3), tmp_path / "bad", data_dir, cache_dir)
