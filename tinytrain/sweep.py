"""Run a sweep's trials on Ray: one fine-tuning run per trial, one core each, retried from its checkpoint when its
worker dies; a rerun skips the trials that finished and resumes the others.

Ray places the trials (a task per trial, one CPU each); this module only checks, submits and waits. Ray Tune's
trial runner is not used: its checkpoints and experiment restore would duplicate the trainer's own checkpoints and
resume, and it brings pandas and pyarrow. Every trial writes to its own folder under the sweep's, which on a cluster
must be a file system all nodes share."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from tinytrain import paths
from tinytrain.checkpoint import CheckpointError, read_progress
from tinytrain.interrupt import StopRequest, TrainingInterrupted
from tinytrain.sweep_grid import GridError, Trial
from tinytrain.sweep_summary import SummaryRow, TrialOutcome, read_complete_results, write_summary
from tinytrain.train import (ConfigError, RunAlreadyFinished, Trainer, config_differences, prepare_output_dir,
                             validate_config)

INSTALL_HINT = "pip install -e \".[sweep]\""
# Numba's default of one thread per core would put cores x trials threads on the cores; its parallel kernels then
# wait for their slowest thread. One thread per trial and one trial per core keeps every core busy without that.
TRIAL_RUNTIME_ENV = {"env_vars": {"NUMBA_NUM_THREADS": "1"}}
LOCAL_OBJECT_STORE_BYTES = 100 << 20  # trials exchange only their configurations and results
DEFAULT_RETRIES = 3
CONNECT_SECONDS = 10.0  # to try --address before handing it to Ray
PROGRESS_SECONDS = 10.0  # between readings of the running trials' checkpoints for the bar
STOP_CHECK_SECONDS = 0.5  # between looks at whether SIGINT or SIGTERM asked the sweep to stop
PROGRESS_TRIALS_SHOWN = 3


class SweepError(ConfigError):
    """A sweep that cannot start, or whose trials did not all finish; the message says what to do."""


def require_ray():
    """The ray module, or SweepError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SweepError(f"sweeps run on Ray, which is not installed; install it with {INSTALL_HINT}") from None
    return ray


class TrialFailed(Exception):
    """A trial's error as one line of text: Ray carries it back to the sweep, and not every exception unpickles."""


def run_trial(trial: Trial, output_dir: str, data_dir: str) -> tuple[str, dict]:
    """Train `trial` in `output_dir` ("ran"), or continue it from the checkpoint there ("resumed"), on a Ray worker.

    A retried trial, whose worker died, finds the checkpoint its first attempt wrote."""
    try:
        return _train_or_resume(trial, Path(output_dir), data_dir)
    except TrainingInterrupted:  # retried by Ray (see run_sweep)
        raise
    except Exception as error:
        raise TrialFailed(" ".join(f"{type(error).__name__}: {error}".split())) from None


def _train_or_resume(trial: Trial, output_dir: Path, data_dir: str) -> tuple[str, dict]:
    resume = (output_dir / "checkpoint.h5").is_file()
    try:
        trainer = Trainer(trial.config, output_dir, data_dir=data_dir, progress=False, resume=resume)
    except RunAlreadyFinished as finished:  # it died after writing results.json
        results = read_complete_results(output_dir / "results.json")
        if results is None:
            raise SweepError(f"{finished}, but that file is damaged; delete it and rerun: the trial is evaluated "
                             "again from its checkpoint") from finished
        return "resumed", results
    return ("resumed" if resume else "ran"), asdict(trainer.run())


def check_trial_folder(trial: Trial, folder: Path) -> dict | None:
    """The results of a trial that finished with these settings, None for one to run or resume; SweepError when the
    folder holds a run of other settings."""
    results = read_complete_results(folder / "results.json")
    saved = results["config"] if results is not None else None
    checkpoint = folder / "checkpoint.h5"
    if checkpoint.is_file():  # what the run trained with, and what a resume would be checked against
        try:
            _, saved, _ = read_progress(checkpoint)
        except CheckpointError as error:
            raise SweepError(f"trial {trial.name}: {error}") from error
    if saved is not None:
        differences = config_differences(saved, trial.config)
        if differences:
            raise SweepError(f"{folder} holds a run with other settings ({'; '.join(differences)}); rerun the sweep "
                             "with its own settings, or choose another --output-dir")
    return results


def _error_text(error: Exception) -> str:
    cause = getattr(error, "cause", None)  # a RayTaskError carries the trial's own exception
    return " ".join(str(cause if cause is not None else error).split())


def check_reachable(address: str) -> None:
    """SweepError unless something listens at a HOST:PORT `address` ("auto" finds a cluster started on this machine):
    ray.init would otherwise retry an unreachable address for minutes."""
    if address == "auto":
        return
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise SweepError(f"--address {address}: give the HOST:PORT of the cluster's head (ray start --head prints it), "
                         "or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise SweepError(f"--address {address}: nothing answers there ({error.strerror or error}); start the head "
                         "with ray start --head, or leave out --address to run on this machine") from error


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start Ray here with `num_cpus` (default: every core); True if this call
    started the connection, which the sweep then closes."""
    if ray.is_initialized():
        return False
    if address is not None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, ray.exceptions.RayError) as error:
            raise SweepError(f"--address {address}: Ray could not join the cluster there ({error}); a cluster with "
                             "token authentication needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or "
                             "RAY_AUTH_TOKEN) here too") from error
    else:
        start_local_ray(ray, num_cpus or os.cpu_count())
    return True


def start_local_ray(ray, num_cpus: int) -> None:
    """Ray on this machine alone, quiet, with a small object store, and reporting no usage statistics unless
    RAY_USAGE_STATS_ENABLED asks for them (a local sweep has no business on the network)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             object_store_memory=LOCAL_OBJECT_STORE_BYTES)


def run_sweep(trials: list[Trial], output_dir: str | Path, data_dir: str | Path | None = None,
              address: str | None = None, num_cpus: int | None = None, retries: int = DEFAULT_RETRIES,
              progress: bool = True) -> list[TrialOutcome]:
    """Every trial's outcome, in the order given. Everything is checked before Ray starts: each configuration, the
    output folder, the data folder, and every trial folder already there (which must hold a run of the same
    settings). Trials that fail leave outcomes with their error; the others still run."""
    ray = require_ray()
    if not trials:
        raise GridError("the sweep has no trials; give it a grid")
    if num_cpus is not None and num_cpus < 1:
        raise SweepError(f"--cpus {num_cpus}: must be at least 1")
    if num_cpus is not None and address is not None:
        raise SweepError(f"--cpus {num_cpus} sizes a Ray started here; a cluster's nodes say their own CPUs (ray start "
                         "--num-cpus): leave --cpus out with --address")
    if retries < 0:
        raise SweepError(f"--retries {retries}: must be 0 or more")
    for trial in trials:
        validate_config(trial.config)
    output_dir = Path(output_dir).absolute()
    data_root = paths.data_dir(data_dir).absolute()
    if not data_root.is_dir():
        raise SweepError(f"data folder {data_root} does not exist; give --data-dir or set TINYTRAIN_DATA to the folder "
                         "holding the weights and cifar10/")
    if address is not None:
        check_reachable(address)
    prepare_output_dir(output_dir)
    outcomes = {}
    for trial in trials:
        results = check_trial_folder(trial, output_dir / trial.name)
        if results is not None:
            outcomes[trial.name] = TrialOutcome(trial, "skipped", results)
    pending = [trial for trial in trials if trial.name not in outcomes]
    started_ray = _connect(ray, address, num_cpus) if pending else False
    try:
        # A trial stopped by a signal (a node drained) wrote a checkpoint first; its retry resumes from it.
        remote_trial = ray.remote(run_trial).options(num_cpus=1, max_retries=retries,
                                                    retry_exceptions=[TrainingInterrupted],
                                                    runtime_env=TRIAL_RUNTIME_ENV)
        running = {remote_trial.remote(trial, str(output_dir / trial.name), str(data_root)): trial
                   for trial in pending}
        _collect(ray, running, outcomes, len(trials), output_dir, progress)
    finally:
        if started_ray:
            ray.shutdown()
    return [outcomes[trial.name] for trial in trials]


def _collect(ray, running: dict, outcomes: dict[str, TrialOutcome], total: int, output_dir: Path,
             progress: bool) -> None:
    """Wait for the `running` trials (Ray object ref: trial) and put their outcomes in `outcomes`, with a bar over all
    `total` trials; SIGINT or SIGTERM stops the wait (TrainingInterrupted), leaving the trials their checkpoints."""
    progress_read = time.monotonic()
    with StopRequest() as stop, tqdm(total=total, initial=len(outcomes), unit="trial", desc="sweep",
                                     disable=not progress) as bar:
        while running:
            if stop.signal_number is not None:
                raise TrainingInterrupted(f"{len(outcomes)} of {total} trials finished; rerun the same command: "
                                          "finished trials are skipped, the others resume from their last checkpoints",
                                          stop.signal_number)
            done, _ = ray.wait(list(running), num_returns=1, timeout=STOP_CHECK_SECONDS)
            if not done:
                if time.monotonic() - progress_read > PROGRESS_SECONDS:
                    bar.set_postfix_str(_checkpointed_steps(list(running.values()), output_dir))
                    progress_read = time.monotonic()
                continue
            trial = running.pop(done[0])
            try:
                status, results = ray.get(done[0])
                outcomes[trial.name] = TrialOutcome(trial, status, results)
                bar.set_postfix_str(f"{trial.name}: {results['test_accuracy']:.2%}")
            except ray.exceptions.RayError as error:
                outcomes[trial.name] = TrialOutcome(trial, "failed", None, _error_text(error))
                bar.set_postfix_str(f"{trial.name}: failed")
            bar.update()


def _checkpointed_steps(unfinished: list[Trial], output_dir: Path) -> str:
    """'name step N' for the unfinished trials that wrote a checkpoint: what the bar can know of them without a
    channel from inside the trainer."""
    steps = []
    for trial in unfinished:
        try:
            step, _, _ = read_progress(output_dir / trial.name / "checkpoint.h5")
        except CheckpointError:  # none yet
            continue
        steps.append(f"{trial.name} step {step:,}")
    shown = ", ".join(steps[:PROGRESS_TRIALS_SHOWN])
    return shown + (f" and {len(steps) - PROGRESS_TRIALS_SHOWN} more" if len(steps) > PROGRESS_TRIALS_SHOWN else "")


def failure_report(outcomes: list[TrialOutcome]) -> str | None:
    """One line naming every failed trial and its error, or None when all finished."""
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    if not failed:
        return None
    return (f"{len(failed)} of {len(outcomes)} trials failed: "
            + "; ".join(f"{outcome.trial.name}: {outcome.error}" for outcome in failed)
            + ". Fix the cause and rerun the same command: finished trials are skipped, stopped ones resume")


@dataclass(frozen=True)
class SweepReport:
    rows: list[SummaryRow]  # the table written
    wall_seconds: float  # of this run; skipped trials cost nothing
    skipped: int  # trials that had finished before this run
    failures: str | None  # failure_report's line, or None


def run_and_summarize(trials: list[Trial], output_dir: str | Path, caption: Callable[[list[TrialOutcome]], str],
                      stem: str = "sweep", data_dir: str | Path | None = None, address: str | None = None,
                      num_cpus: int | None = None, retries: int = DEFAULT_RETRIES) -> SweepReport:
    """run_sweep, then <stem>.json and <stem>.md in `output_dir` (write_summary) under `caption(outcomes)`."""
    started = time.perf_counter()
    outcomes = run_sweep(trials, output_dir, data_dir=data_dir, address=address, num_cpus=num_cpus, retries=retries)
    wall_seconds = time.perf_counter() - started
    rows = write_summary(outcomes, Path(output_dir), caption(outcomes), wall_seconds, stem=stem)
    return SweepReport(rows, wall_seconds, sum(outcome.status == "skipped" for outcome in outcomes),
                       failure_report(outcomes))
