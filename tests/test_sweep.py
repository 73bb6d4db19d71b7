"""Sweeps: a grid is checked before anything starts; its trials run on a local Ray, a killed trial resumes from its
checkpoint to the results of an uninterrupted one, a rerun skips finished trials, and the table averages seeds."""

import importlib.util
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tinytrain.checkpoint import read_progress
from tinytrain.data import load_cifar10
from tinytrain.policy_comparison import comparison_trials
from tinytrain.sweep import SweepError, failure_report, run_sweep, start_local_ray
from tinytrain.sweep_grid import GridError, Trial, grid_trials, parse_grid_arguments, read_grid_file
from tinytrain.sweep_summary import MEASURES, TrialOutcome, markdown_table, summarize, write_summary
from tinytrain.train import TrainConfig

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TINY = ["resolution=32", "train_subset=20", "test_subset=10", "epochs=1", "warmup_steps=5", "arena_bytes=4194304"]
GRID = ["policy=bias,dynamic", "seed=0,1"] + TINY


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_of(items):
    return grid_trials(parse_grid_arguments(items))


@pytest.fixture(scope="module")
def local_ray(data_dir):
    """One local Ray of 2 CPUs for the module (starting it takes seconds), shut down after its last test. The
    decoded CIFAR-10 is cached once here, so that the trials do not each decode it."""
    import ray

    load_cifar10("train", data_dir=data_dir, progress=False)
    load_cifar10("test", data_dir=data_dir, progress=False)
    start_local_ray(ray, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def grid_sweep(local_ray, data_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("grid")
    trials = grid_of(GRID)
    outcomes = run_sweep(trials, output, data_dir=data_dir, progress=False)
    return trials, outcomes, output


# ---- grids checked before anything starts ----

@pytest.mark.parametrize("arguments, message", [
    (["--grid", "polcy=dense,dynamic"], "no setting 'polcy'"),
    (["--grid", "policy="], "no values for policy"),
    (["--grid", "resolution=32,big"], "resolution=big: 'big' is not a whole number"),
    (["--grid", "augment=maybe"], "'maybe' is not true or false"),
    (["--grid", "lr=0.001,-1"], "--lr -1.0: must be a positive, finite learning rate"),
    (["--grid", "policy=sparse"], "--policy sparse: must be one of dense"),
    (["--grid", "seed=0", "--grid", "seed=1"], "seed is given twice"),
    (["--grid", "seed=0,0"], "listed twice"),
    ([], "the grid is empty"),
])
def test_a_bad_grid_is_one_error_line_before_anything_is_written(arguments, message, tmp_path, capsys):
    output = tmp_path / "sweep"
    assert load_script("sweep").main(arguments + ["--output-dir", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert message in error
    assert not output.exists()


@pytest.mark.parametrize("document, message", [
    ({"policy": ["dense"], "seed": []}, "seed has an empty list"),
    ({"seed": [0, 1.5]}, "seed value 1.5 is not a whole number"),
    ({"bias_from_block": ["7"]}, 'bias_from_block value "7" is not a whole number or none'),
    ({"momentum": [0.9, 1.0]}, "--momentum 1.0: must be in [0, 1)"),
    ({"epoch": [1]}, "no setting 'epoch'"),
    (["policy", "dense"], "must hold one JSON object"),
])
def test_a_bad_grid_file_names_the_field_and_the_fix(document, message, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(document))
    with pytest.raises(GridError) as error:
        grid_trials(read_grid_file(path))
    assert message in str(error.value)


def test_grid_values_are_typed_and_trials_named_from_the_swept_fields_in_field_order():
    trials = grid_of(["seed=0,1", "bias_from_block=none,7", "lr=0.003", "augment=false"])
    assert [trial.name for trial in trials] == ["bias-from-block-none_seed-0", "bias-from-block-none_seed-1",
                                                "bias-from-block-7_seed-0", "bias-from-block-7_seed-1"]
    assert trials[0].config == TrainConfig(bias_from_block=None, seed=0, lr=0.003, augment=False)
    assert trials[2].row == {"bias_from_block": "7"}  # the seed is averaged over, not a row of its own


def test_the_grid_file_and_the_command_line_give_the_same_trials(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"policy": ["bias", "dynamic"], "seed": [0, 1], "resolution": 32, "lr": 1}))
    assert grid_trials(read_grid_file(path)) == grid_of(["policy=bias,dynamic", "seed=0,1", "resolution=32", "lr=1.0"])


def test_without_ray_the_script_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert load_script("sweep").main(["--grid", "policy=bias", "--output-dir", str(tmp_path / "sweep")]) == 1
    assert capsys.readouterr().err == ('error: sweeps run on Ray, which is not installed; install it with pip install '
                                       '-e ".[sweep]"\n')


def test_an_address_where_no_cluster_answers_is_refused_before_anything_is_written(data_dir, tmp_path):
    with socket.socket() as probe:  # a loopback port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SweepError, match=f"--address 127.0.0.1:{port}: nothing answers there"):
        run_sweep(grid_of(["policy=bias"]), tmp_path / "sweep", data_dir=data_dir, address=f"127.0.0.1:{port}")
    assert not (tmp_path / "sweep").exists()


def test_help_explains_the_grid_format(capsys):
    with pytest.raises(SystemExit) as done:
        load_script("sweep").main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "'--grid FIELD=V1,V2,...' once per setting" in text
    assert '{"policy": ["dense", "dynamic"], "seed": [0, 1], "epochs": 2}' in text
    assert "bias_from_block=none" in text


# ---- the table ----

def outcome(name, policy, seed, accuracy, seconds):
    results = {measure.key: 0.5 for measure in MEASURES} | {"test_accuracy": accuracy, "seconds_per_step": seconds}
    return TrialOutcome(Trial(name, {"policy": policy}, TrainConfig(policy=policy, seed=seed)), "ran", results)


def test_a_row_per_configuration_with_mean_and_standard_deviation_over_seeds(tmp_path):
    outcomes = [outcome("a0", "bias", 0, 0.75, 0.020), outcome("b0", "dynamic", 0, 0.80, 0.010),
                outcome("a1", "bias", 1, 0.77, 0.030),
                TrialOutcome(Trial("b1", {"policy": "dynamic"}, TrainConfig(seed=1)), "failed", None, "it diverged")]
    rows = write_summary(outcomes, tmp_path, "caption", 12.5)
    assert [(row.configuration, row.seeds) for row in rows] == [({"policy": "bias"}, [0, 1]),
                                                                ({"policy": "dynamic"}, [0])]
    assert rows[0].measures["test_accuracy"].mean == pytest.approx(0.76)
    assert rows[0].measures["test_accuracy"].spread == pytest.approx(statistics.stdev([0.75, 0.77]))
    lines = (tmp_path / "sweep.md").read_text().splitlines()
    assert lines[0] == "caption"
    assert lines[2].startswith("| policy | seeds | test accuracy | whole-step peak (B) |")
    assert lines[4].startswith("| bias | 0, 1 | 76.00% ± 1.41 | 0 ± 0 | 0 ± 0 | 50.00% ± 0.00 |")
    assert lines[4].endswith("| 25.0 ± 7.1 |")
    assert lines[5].startswith("| dynamic | 0 | 80.00% | 0 |")
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert document["wall_seconds"] == 12.5
    assert [(trial["name"], trial["status"], trial["error"]) for trial in document["trials"]][-1] == (
        "b1", "failed", "it diverged")
    assert document["trials"][0]["results_file"] == "a0/results.json"  # relative: the folder can move


def test_one_seed_per_row_keeps_the_comparison_table_as_it_was():
    table = markdown_table(summarize([outcome("dense", "dense", 0, 0.7425, 0.0637)]))
    assert table.splitlines() == [
        "| policy | test accuracy | whole-step peak (B) | feature memory (B) | reduction vs dense | "
        "conv weights per step | coverage | ms per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| dense | 74.25% | 0 | 0 | 50.00% | 50.00% | 50.0% | 63.7 |"]


def test_the_policy_comparison_is_one_trial_per_policy_plus_the_pruned_model():
    base = TrainConfig(resolution=32, arena_bytes=1 << 20)
    trials = comparison_trials(base, ["dense", "dynamic"], "pruned/model.h5")
    assert [(trial.name, trial.row["policy"]) for trial in trials] == [
        ("dense", "dense"), ("dynamic", "dynamic"), ("dynamic-pruned", "dynamic, pruned")]
    assert trials[0].config.arena_bytes > trials[1].config.arena_bytes == 1 << 20  # dense gets the arena it needs
    assert trials[2].config == replace(base, model="pruned/model.h5")


def test_a_policy_whose_step_cannot_fit_the_arena_gets_the_arena_it_needs():
    base = TrainConfig(resolution=32)  # 262,144 B: last-k's 1280x320 head-conv weight gradient alone is 1.6 MB
    last_k, dynamic = comparison_trials(base, ["last-k", "dynamic"])
    assert last_k.config.arena_bytes > base.arena_bytes == dynamic.config.arena_bytes


def test_the_policy_comparison_over_several_seeds_is_one_row_per_policy():
    trials = comparison_trials(TrainConfig(), ["bias", "dynamic"], seeds=[0, 1])
    assert [(trial.name, trial.row, trial.config.seed) for trial in trials] == [
        ("bias_seed-0", {"policy": "bias"}, 0), ("bias_seed-1", {"policy": "bias"}, 1),
        ("dynamic_seed-0", {"policy": "dynamic"}, 0), ("dynamic_seed-1", {"policy": "dynamic"}, 1)]
    with pytest.raises(GridError, match="listed twice"):
        comparison_trials(TrainConfig(), ["bias"], seeds=[0, 0])


# ---- on Ray ----

def test_a_2x2_grid_runs_every_trial_in_its_folder_and_averages_the_seeds(grid_sweep):
    trials, outcomes, output = grid_sweep
    assert [(outcome.trial.name, outcome.status, outcome.error) for outcome in outcomes] == [
        (name, "ran", None) for name in ("policy-bias_seed-0", "policy-bias_seed-1", "policy-dynamic_seed-0",
                                         "policy-dynamic_seed-1")]
    for trial, result in zip(trials, outcomes):
        on_disk = json.loads((output / trial.name / "results.json").read_text())
        assert on_disk == result.results
        assert (on_disk["config"]["policy"], on_disk["config"]["seed"], on_disk["steps"]) == (
            trial.config.policy, trial.config.seed, 20)
    bias, dynamic = summarize(outcomes)
    assert (bias.seeds, dynamic.seeds) == ([0, 1], [0, 1])
    times = [outcome.results["seconds_per_step"] for outcome in outcomes[2:]]
    assert dynamic.measures["seconds_per_step"].mean == pytest.approx(statistics.fmean(times))
    assert dynamic.measures["seconds_per_step"].spread == pytest.approx(statistics.stdev(times))
    assert dynamic.measures["conv_weight_fraction_per_step"].mean > bias.measures["conv_weight_fraction_per_step"].mean


def test_a_rerun_skips_finished_trials_and_resumes_an_unfinished_one(grid_sweep, data_dir):
    trials, outcomes, output = grid_sweep
    before = {trial.name: (output / trial.name / "results.json").read_bytes() for trial in trials}
    unfinished = output / trials[3].name / "results.json"
    unfinished.unlink()  # as if its worker died after the last checkpoint, before the results were written
    rerun = run_sweep(trials, output, data_dir=data_dir, progress=False)
    assert [outcome.status for outcome in rerun] == ["skipped", "skipped", "skipped", "resumed"]
    for trial in trials[:3]:
        assert (output / trial.name / "results.json").read_bytes() == before[trial.name]
    assert json.loads(unfinished.read_text()) == json.loads(before[trials[3].name])


def test_a_rerun_with_other_settings_is_refused_before_anything_starts(grid_sweep, data_dir):
    trials, _, output = grid_sweep
    changed = [replace(trial, config=replace(trial.config, epochs=2)) for trial in trials]
    before = sorted((path, path.stat().st_mtime_ns) for path in output.rglob("*"))
    with pytest.raises(SweepError, match=r"holds a run with other settings \(epochs: 1 in the checkpoint, 2 now\)"):
        run_sweep(changed, output, data_dir=data_dir, progress=False)
    assert sorted((path, path.stat().st_mtime_ns) for path in output.rglob("*")) == before


def test_a_trial_that_fails_is_reported_in_one_line_and_the_others_finish(local_ray, data_dir, tmp_path):
    trials = grid_of(["arena_bytes=4096,4194304"] + [item for item in TINY if not item.startswith("arena_bytes")])
    failed, finished = run_sweep(trials, tmp_path, data_dir=data_dir, progress=False)
    assert (failed.status, failed.results) == ("failed", None)
    assert failed.error.startswith("BudgetTooSmall: no memory schedule fits the 4,096 B arena.")
    assert "\n" not in failed.error
    assert finished.status == "ran" and (tmp_path / finished.trial.name / "results.json").is_file()
    assert failure_report([failed, finished]).startswith(f"1 of 2 trials failed: {failed.trial.name}: BudgetTooSmall")


def parent_pid(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[1])  # after the state letter


def descends_from_this_process(pid: int) -> bool:
    while pid > 1:
        pid = parent_pid(pid)
        if pid == os.getpid():
            return True
    return False


def trial_worker_pids() -> list[int]:
    """The workers of this test's Ray running a trial: Ray names a worker's process after the task it runs."""
    pids = []
    for process in Path("/proc").iterdir():
        try:
            if (process.name.isdigit() and (process / "cmdline").read_bytes().startswith(b"ray::run_trial")
                    and descends_from_this_process(int(process.name))):
                pids.append(int(process.name))
        except OSError:  # it ended while listed
            continue
    return pids


KILL_CONFIG = TrainConfig(policy="dynamic", resolution=32, train_subset=120, test_subset=10, epochs=1, warmup_steps=5,
                          arena_bytes=4 << 20, checkpoint_every=20)


def test_a_trial_whose_worker_is_killed_resumes_to_the_results_of_an_uninterrupted_one(local_ray, data_dir,
                                                                                       tmp_path):
    trial = Trial("killed", {"policy": "dynamic"}, KILL_CONFIG)
    straight = run_sweep([trial], tmp_path / "straight", data_dir=data_dir, progress=False)[0]
    assert straight.status == "ran"

    outcomes = []
    sweep = threading.Thread(target=lambda: outcomes.extend(
        run_sweep([trial], tmp_path / "killed", data_dir=data_dir, progress=False)))
    sweep.start()
    checkpoint = tmp_path / "killed" / "killed" / "checkpoint.h5"
    deadline = time.monotonic() + 600  # a loaded machine can take minutes to reach the first checkpoint
    while not checkpoint.exists() and sweep.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = trial_worker_pids()
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    killed_at = read_progress(checkpoint)[0]
    sweep.join()
    assert 0 < killed_at < 120  # killed mid-run, after a checkpoint
    assert [(outcome.status, outcome.error) for outcome in outcomes] == [("resumed", None)]
    wall_time = {"seconds_per_step"}
    resumed = json.loads((tmp_path / "killed" / "killed" / "results.json").read_text())
    assert {key: value for key, value in resumed.items() if key not in wall_time} == {
        key: value for key, value in straight.results.items() if key not in wall_time}


def test_compare_policies_runs_as_a_sweep_and_keeps_its_table(local_ray, data_dir, tmp_path, capsys):
    output = tmp_path / "compare"
    arguments = ["--policies", "bias", "--resolution", "32", "--train-subset", "20", "--test-subset", "10",
                 "--epochs", "1", "--warmup-steps", "5", "--arena-bytes", "4194304", "--output-dir", str(output),
                 "--data-dir", str(data_dir)]
    assert load_script("compare_policies").main(arguments) == 0
    lines = (output / "comparison.md").read_text().splitlines()
    assert lines[0] == ("MobileNetV2-1.0 (ImageNet), CIFAR-10 (JPEG q75 copy), 32x32, batch 1, 1 epoch(s), 20 steps, "
                        "10 test images.")
    assert lines[2].startswith("| policy | test accuracy | whole-step peak (B) | feature memory (B) |")
    assert lines[4].startswith("| bias | ")
    results = json.loads((output / "bias" / "results.json").read_text())
    assert f"| {results['whole_step_peak_bytes']:,} | {results['feature_bytes']:,} |" in lines[4]
    assert "| bias | " in capsys.readouterr().out

