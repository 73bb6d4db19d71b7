"""The trainer: it learns on a small subset, resumes exactly, and stops cleanly on a non-finite loss."""

import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from tinytrain.checkpoint import load_checkpoint
from tinytrain.divergence import TrainingDiverged
from tinytrain.interrupt import TrainingInterrupted
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.prune import channels_to_keep, find_channel_groups, l2_importance, prune_graph
from tinytrain.pruned_model import save_pruned
from tinytrain.train import ConfigError, RunAlreadyFinished, TrainConfig, Trainer


def make_trainer(config, output_dir, data_dir, cache_dir, resume=False):
    return Trainer(config, output_dir, data_dir=data_dir, cache_dir=cache_dir, progress=False, resume=resume)


def test_short_fine_tune_learns_well_above_chance(data_dir, cache_dir, tmp_path):
    config = TrainConfig(resolution=64, epochs=2, train_subset=1000, test_subset=1000, lr=0.01, warmup_steps=100)
    trainer = make_trainer(config, tmp_path, data_dir, cache_dir)
    results = trainer.run()
    assert results.mirrored_test_accuracy > 0.25
    # an image and its mirror image get the same mirrored prediction: the logits of both are summed
    images, labels = trainer.test.images[:50], trainer.test.labels[:50]
    np.testing.assert_array_equal(trainer.predict(images, labels, "", mirrored=True),
                                  trainer.predict(np.ascontiguousarray(images[:, :, ::-1]), labels, "", mirrored=True))
    first, second = results.history
    assert second["train_loss"] < first["train_loss"]
    assert results.test_accuracy > 0.25
    assert second["test_accuracy"] == results.test_accuracy and 0 < first["test_accuracy"] <= 1
    confusion = np.array(results.confusion_matrix)
    assert confusion.shape == (10, 10) and confusion.sum() == 1000
    assert np.trace(confusion) / 1000 == pytest.approx(results.test_accuracy)
    predictions = trainer.predict(trainer.test.images[:1000], trainer.test.labels[:1000], "")
    labels = trainer.test.labels[:1000]
    assert results.per_class_accuracy == pytest.approx([np.mean(predictions[labels == c] == c) for c in range(10)])
    assert results.conv_weight_fraction_per_step <= 0.02
    assert results.feature_reduction >= 0.98
    assert (tmp_path / "results.json").is_file()


def run_until(trainer, stop_at_step, monkeypatch, interruption):
    """Train, and at the call of step `stop_at_step` do `interruption()`: raise like a killed process, or send a
    real signal to this process."""
    calls = {"count": 0}
    original = trainer.engine.train_step

    def train_step(*args, **kwargs):
        if calls["count"] == stop_at_step:
            interruption()
        calls["count"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.engine, "train_step", train_step)
    trainer.run()


def kill():
    raise KeyboardInterrupt  # dies like kill -9: nothing is written after the last checkpoint


RESUME_CONFIG = TrainConfig(resolution=32, epochs=2, train_subset=40, test_subset=10, warmup_steps=10, momentum=0.9,
                            weight_decay=1e-4, checkpoint_every=25, arena_bytes=16 << 20)  # momentum needs a few MB


@pytest.fixture(scope="module")
def uninterrupted(data_dir, cache_dir, tmp_path_factory):
    trainer = make_trainer(RESUME_CONFIG, tmp_path_factory.mktemp("straight"), data_dir, cache_dir)
    return trainer, trainer.run()


def assert_same_run(resumed, results, uninterrupted):
    straight, straight_results = uninterrupted
    assert results.steps == 80
    for ours, theirs in zip(resumed.graph.weighted_layers, straight.graph.weighted_layers):
        np.testing.assert_array_equal(ours.weight, theirs.weight, err_msg=ours.name)
        np.testing.assert_array_equal(ours.bias, theirs.bias, err_msg=ours.name)
    assert results.history == straight_results.history  # epoch 2's figures count the steps before the stop
    assert replace(results, seconds_per_step=0.0) == replace(straight_results, seconds_per_step=0.0)


def test_resume_after_a_kill_continues_exactly_where_the_checkpoint_stopped(data_dir, cache_dir, tmp_path,
                                                                           monkeypatch, uninterrupted):
    interrupted = make_trainer(RESUME_CONFIG, tmp_path, data_dir, cache_dir)
    with pytest.raises(KeyboardInterrupt):
        run_until(interrupted, 57, monkeypatch, kill)  # the last checkpoint is at step 50, mid-way through epoch 2
    resumed = make_trainer(RESUME_CONFIG, tmp_path, data_dir, cache_dir, resume=True)
    assert_same_run(resumed, resumed.run(), uninterrupted)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_mid_epoch_writes_a_checkpoint_that_resumes_bit_identically(
        data_dir, cache_dir, tmp_path, monkeypatch, uninterrupted, signal_number):
    interrupted = make_trainer(RESUME_CONFIG, tmp_path, data_dir, cache_dir)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when the tests run in the background
    with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signal_number).name} at step 57") as stop:
        run_until(interrupted, 56, monkeypatch, lambda: os.kill(os.getpid(), signal_number))
    assert stop.value.signal_number == signal_number
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back
    assert load_checkpoint(tmp_path / "checkpoint.h5", build_mobilenetv2(resolution=32)).step == 57
    resumed = make_trainer(RESUME_CONFIG, tmp_path, data_dir, cache_dir, resume=True)
    assert_same_run(resumed, resumed.run(), uninterrupted)


def test_resuming_a_finished_run_leaves_its_results_alone(data_dir, cache_dir, tmp_path, uninterrupted):
    straight, _ = uninterrupted
    results = straight.output_dir / "results.json"
    before = results.read_bytes()
    with pytest.raises(RunAlreadyFinished, match="already finished"):
        make_trainer(RESUME_CONFIG, straight.output_dir, tmp_path / "no-data-needed", cache_dir, resume=True)
    assert results.read_bytes() == before


def poison_at(trainer, call, monkeypatch, layer="classifier"):
    """Put a NaN in `layer`'s bias right after step `call` ran."""
    calls = {"count": 0}
    original = trainer.engine.train_step

    def train_step(*args, **kwargs):
        result = original(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == call:
            trainer.graph.layer(layer).bias[0] = np.nan
        return result

    monkeypatch.setattr(trainer.engine, "train_step", train_step)


def test_non_finite_loss_stops_and_names_the_last_checkpoint(data_dir, cache_dir, tmp_path, monkeypatch):
    config = TrainConfig(resolution=32, epochs=1, train_subset=30, test_subset=10, checkpoint_every=10)
    trainer = make_trainer(config, tmp_path, data_dir, cache_dir)
    poison_at(trainer, 14, monkeypatch)  # the logits of the next step are NaN
    with pytest.raises(TrainingDiverged, match="step 14: loss is nan.*last good checkpoint.*step 10"):
        trainer.run()
    assert load_checkpoint(tmp_path / "checkpoint.h5", build_mobilenetv2(resolution=32)).step == 10


def test_a_non_finite_parameter_is_never_checkpointed(data_dir, cache_dir, tmp_path, monkeypatch):
    config = TrainConfig(resolution=32, epochs=1, train_subset=30, test_subset=10, checkpoint_every=5)
    trainer = make_trainer(config, tmp_path, data_dir, cache_dir)
    poison_at(trainer, 10, monkeypatch, layer="features.0")  # a frozen layer no periodic check looks at
    with pytest.raises(TrainingDiverged, match="step 10: non-finite values in features.0.bias; no checkpoint "
                                               "was written.*step 5"):
        trainer.run()
    assert load_checkpoint(tmp_path / "checkpoint.h5", build_mobilenetv2(resolution=32)).step == 5


def test_a_huge_learning_rate_stops_the_run_before_any_checkpoint(data_dir, cache_dir, tmp_path):
    config = TrainConfig(resolution=32, epochs=1, train_subset=400, test_subset=10, lr=1e6, warmup_steps=0,
                         checkpoint_every=200)
    with pytest.raises(TrainingDiverged, match="No checkpoint was written before it"):
        make_trainer(config, tmp_path, data_dir, cache_dir).run()
    assert not (tmp_path / "checkpoint.h5").exists() and not (tmp_path / "results.json").exists()


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
    assert results.config["model"] == str(pruned_path) and results.steps == 20


def test_micro_batches_train_within_the_dry_run_peak(data_dir, cache_dir, tmp_path):
    config = TrainConfig(resolution=32, epochs=1, train_subset=20, test_subset=10, micro_batch=4, checkpoint_every=8,
                         arena_bytes=1 << 20)  # the gradient sums of a micro-batch need more than 256 KiB
    trainer = make_trainer(config, tmp_path, data_dir, cache_dir)
    single = make_trainer(replace(config, micro_batch=1), tmp_path / "single", data_dir, cache_dir)
    # the summed gradients live from one sample to the next, on top of a step's own weight gradients
    assert trainer.dry_run.peak_bytes_by_kind["wgrad"] > single.dry_run.peak_bytes_by_kind["wgrad"]
    before = trainer.graph.layer("classifier").weight.copy()
    results = trainer.run()
    assert results.steps == 20 and results.whole_step_peak_bytes == trainer.dry_run.whole_step_peak_bytes
    assert not np.array_equal(trainer.graph.layer("classifier").weight, before)
    with pytest.raises(ConfigError, match="--micro-batch 3: must be a divisor"):
        make_trainer(replace(config, micro_batch=3), tmp_path / "bad", data_dir, cache_dir)
