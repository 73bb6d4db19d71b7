"""A bad value, path or resume fails at once with one line; the fine-tuning CLI's errors and its speed warning."""

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tinytrain.checkpoint import TrainingState, save_checkpoint
from tinytrain.cpu import thread_contention_warning
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.train import ConfigError, TrainConfig, Trainer, config_differences

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "finetune_cifar.py"


def finetune_cifar():
    spec = importlib.util.spec_from_file_location("finetune_cifar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("change, flag", [
    ({"ratio": 2.0}, "--ratio 2.0"),
    ({"ratio": 0.0}, "--ratio 0.0"),
    ({"test_subset": -5}, "--test-subset -5"),
    ({"test_subset": 0}, "--test-subset 0"),
    ({"train_subset": 60_000}, "--train-subset 60000"),
    ({"checkpoint_every": 0}, "--checkpoint-every 0"),
    ({"micro_batch": 0}, "--micro-batch 0"),
    ({"micro_batch": 3}, "--micro-batch 3"),
    ({"ratio_decay": 0.0}, "--ratio-decay 0.0"),
    ({"epochs": 0}, "--epochs 0"),
    ({"lr": float("nan")}, "--lr nan"),
    ({"lr": float("inf")}, "--lr inf"),
    ({"momentum": 1.0}, "--momentum 1.0"),
    ({"label_smoothing": 1.0}, "--label-smoothing 1.0"),
    ({"resolution": 8}, "--resolution 8"),
    ({"policy": "sparse"}, "--policy sparse"),
    ({"weights": "model.tflite", "model": "pruned.h5"}, "--weights model.tflite"),
])
def test_a_bad_value_fails_before_any_data_or_weights_are_read(tmp_path, change, flag):
    config = replace(TrainConfig(train_subset=1000), **change)
    # the data folder does not exist: reaching the loaders would raise DataNotFoundError or WeightsNotFoundError
    with pytest.raises(ConfigError, match=f"^{flag}: must be"):
        Trainer(config, tmp_path / "run", data_dir=tmp_path / "no-data")


def test_a_missing_weights_file_fails_before_any_data_is_read(tmp_path):
    config = TrainConfig(weights=str(tmp_path / "absent.tflite"))
    with pytest.raises(ConfigError, match="--weights .*absent.tflite: no such file; give the path of a MobileNetV2"):
        Trainer(config, tmp_path / "run", data_dir=tmp_path / "no-data")


def test_an_output_dir_that_cannot_be_written_fails_at_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for output_dir in (blocker, blocker / "run"):
        with pytest.raises(ConfigError, match=f"--output-dir {output_dir}: cannot write there"):
            Trainer(TrainConfig(), output_dir, data_dir=tmp_path / "no-data")


def write_checkpoint(folder: Path, config: TrainConfig, step: int) -> None:
    save_checkpoint(folder / "checkpoint.h5", build_mobilenetv2(resolution=32),
                    TrainingState(step, [], {}, {}, asdict(config)))


def test_resume_needs_a_checkpoint_and_names_every_setting_that_changed(tmp_path):
    config = TrainConfig(resolution=32, train_subset=100)
    with pytest.raises(Exception, match="no checkpoint at .*checkpoint.h5; start the run without --resume"):
        Trainer(config, tmp_path, data_dir=tmp_path / "no-data", resume=True)
    write_checkpoint(tmp_path, config, 50)
    changed = replace(config, lr=0.01, seed=3)
    with pytest.raises(ConfigError, match=r"other settings: lr: 0.001 in the checkpoint, 0.01 now; "
                                          r"seed: 0 in the checkpoint, 3 now\. Resume with the run's own flags"):
        Trainer(changed, tmp_path, data_dir=tmp_path / "no-data", resume=True)


def test_a_setting_newer_than_the_checkpoint_counts_at_its_default():
    saved = asdict(TrainConfig(resolution=32))
    del saved["label_smoothing"]
    assert config_differences(saved, TrainConfig(resolution=32)) == []
    assert config_differences(saved, TrainConfig(resolution=32, label_smoothing=0.1)) == [
        "label-smoothing: 0.0 in the checkpoint, 0.1 now"]


def test_a_new_run_never_overwrites_the_checkpoint_of_another(tmp_path):
    write_checkpoint(tmp_path, TrainConfig(resolution=32, train_subset=100), 50)
    with pytest.raises(ConfigError, match="already holds a run .*continue it with --resume"):
        Trainer(TrainConfig(resolution=32, train_subset=100), tmp_path, data_dir=tmp_path / "no-data")


def run_cli(capsys, *argv):
    status = finetune_cifar().main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_expected_errors_end_the_cli_in_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")  # no speed warning in the output
    monkeypatch.delenv("TINYTRAIN_DATA", raising=False)
    cases = [
        (("--test-subset", "-5"), "error: --test-subset -5: must be in 1..10,000"),
        (("--resume",), "error: no checkpoint at"),
        (("--data-dir", str(tmp_path / "empty")), "error: "),  # no data there, and no network to fetch it
    ]
    for argv, start in cases:
        status, _, err = run_cli(capsys, *argv, "--output-dir", str(tmp_path / "run"))
        assert status == 1 and err.startswith(start), err
        assert "Traceback" not in err, err  # a missing data set's message goes on to list what to put where
    with pytest.raises(ConfigError):
        run_cli(capsys, "--test-subset", "-5", "--output-dir", str(tmp_path / "run"), "--debug")


def test_a_finished_run_resumed_from_the_cli_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    config = TrainConfig(resolution=32, epochs=1, train_subset=20)
    write_checkpoint(tmp_path, config, 20)
    (tmp_path / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))
    status, out, _ = run_cli(capsys, "--resume", "--output-dir", str(tmp_path), "--resolution", "32", "--epochs",
                             "1", "--train-subset", "20", "--data-dir", str(tmp_path / "no-data"))
    assert status == 0 and "already finished (20 steps)" in out
    assert json.loads((tmp_path / "results.json").read_text()) == {"test_accuracy": 0.5}


def test_busy_cores_without_numba_num_threads_give_a_warning_that_says_what_to_set(monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert thread_contention_warning(0.05) is None  # set: the user chose the threads
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        warning = thread_contention_warning(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert warning is not None and "set NUMBA_NUM_THREADS=" in warning
