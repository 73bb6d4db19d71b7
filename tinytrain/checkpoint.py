"""Training checkpoints in HDF5: parameters, optimizer state, coverage and progress, written atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tinytrain.atomic import atomic_path
from tinytrain.graph import Graph
from tinytrain.hdf5_attributes import read_attribute
from tinytrain.hdf5_heap import check_global_heaps

FORMAT = "tinytrain-checkpoint"
FORMAT_VERSION = 2  # 2 added the running sums of the unfinished epoch and the training time
ATTRIBUTE_KINDS = {"format": str, "format_version": int, "step": int, "history": str, "config": str,
                   "epoch_sums": str, "train_seconds": float}  # the root attributes save_checkpoint writes
READ_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError)  # h5py, json and check_global_heaps on damage


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match the model being trained."""


@dataclass
class EpochSums:
    """Running sums of the epoch in progress, kept in the checkpoint so a resumed epoch reports all its steps."""

    loss: float = 0.0  # added step by step, in order, so a resumed run adds exactly what an uninterrupted one does
    hits: int = 0
    steps: int = 0


@dataclass
class TrainingState:
    step: int  # steps done
    history: list[dict]  # one record per finished epoch
    momentum: dict[str, np.ndarray]  # parameter -> (rows, cols, taps)
    coverage: dict[str, np.ndarray]  # layer -> (rows, cols) bool
    config: dict
    epoch_sums: EpochSums = field(default_factory=EpochSums)
    train_seconds: float = 0.0  # wall time spent in training steps, over every session of the run


def read_progress(path: Path) -> tuple[int, dict]:
    """(steps done, configuration) of a checkpoint, without reading its tensors: enough to check a resume before any
    work."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; start the run without --resume, or point --output-dir at the "
                              "run to continue")
    try:
        check_global_heaps(path)  # first: one kind of damage would hang h5py for good
        with h5py.File(path, "r") as file:
            attrs = _attributes(file)
            if attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a tinytrain checkpoint; point --output-dir at a run's folder")
            return int(attrs["step"]), json.loads(attrs["config"])
    except READ_ERRORS as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error}); it is corrupt: start the run again without "
                              "--resume") from error


def write_parameters(file: h5py.File, graph: Graph) -> None:
    """Every folded weight and bias under parameters/<layer>/weight and bias (checkpoints and pruned models)."""
    for layer in graph.weighted_layers:
        file.create_dataset(f"parameters/{layer.name}/weight", data=layer.weight)
        file.create_dataset(f"parameters/{layer.name}/bias", data=layer.bias)


def save_checkpoint(path: Path, graph: Graph, state: TrainingState) -> None:
    """Atomic (see atomic_path): a crash leaves the previous checkpoint intact."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.attrs["format"] = FORMAT
        file.attrs["format_version"] = FORMAT_VERSION
        file.attrs["step"] = state.step
        file.attrs["history"] = json.dumps(state.history)
        file.attrs["config"] = json.dumps(state.config)
        file.attrs["epoch_sums"] = json.dumps(asdict(state.epoch_sums))
        file.attrs["train_seconds"] = state.train_seconds
        write_parameters(file, graph)
        for name, values in state.momentum.items():
            file.create_dataset(f"momentum/{name}", data=values)
        for name, touched in state.coverage.items():
            file.create_dataset(f"coverage/{name}", data=touched)


def load_checkpoint(path: Path, graph: Graph, steps_per_epoch: int | None = None) -> TrainingState:
    """Copy the saved parameters into `graph` and return the rest of the state. A checkpoint of format 1 has no
    running sums: it resumes only at an epoch's end (`steps_per_epoch` says where those are)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; start the run without --resume")
    try:
        check_global_heaps(path)
        with h5py.File(path, "r") as file:
            attrs = _attributes(file)
            if attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a tinytrain checkpoint")
            version = int(attrs.get("format_version", 1))
            parameters = {}
            for layer in graph.weighted_layers:
                for name in ("weight", "bias"):
                    key = f"parameters/{layer.name}/{name}"
                    if key not in file:
                        raise CheckpointError(f"{path} has no tensor {key}: it was saved from another model")
                    values = file[key][()]
                    if values.shape != getattr(layer, name).shape:
                        raise CheckpointError(f"{path}: {key} has shape {values.shape}, the model needs "
                                              f"{getattr(layer, name).shape}")
                    if not np.isfinite(values).all():
                        raise CheckpointError(f"{path}: {key} holds non-finite values; this checkpoint cannot be "
                                              "resumed: start the run again with a lower --lr")
                    parameters[(layer, name)] = values
            state = TrainingState(
                step=int(attrs["step"]),
                history=json.loads(attrs["history"]),
                momentum={name: file[f"momentum/{name}"][()] for name in _names(file, "momentum")},
                coverage={name: file[f"coverage/{name}"][()] for name in _names(file, "coverage")},
                config=json.loads(attrs["config"]),
                epoch_sums=EpochSums(**json.loads(attrs.get("epoch_sums", "{}"))),
                train_seconds=float(attrs.get("train_seconds", 0.0)),
            )
    except READ_ERRORS as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error}); it is corrupt: start the run again without "
                              "--resume") from error
    if version < 2 and steps_per_epoch and state.step % steps_per_epoch:
        raise CheckpointError(f"{path} was written mid-epoch by an older tinytrain, without the epoch's running sums; "
                              "it resumes only from an epoch's end: start the run again without --resume")
    for (layer, name), values in parameters.items():
        np.copyto(getattr(layer, name), values)
    return state


def _attributes(file: h5py.File) -> dict:
    """The root attributes, each read once its HDF5 type class is the expected one: h5py segfaults on a damaged
    variable-length string type."""
    return {name: read_attribute(file, name, kind) for name, kind in ATTRIBUTE_KINDS.items() if name in file.attrs}


def _names(file: h5py.File, group: str) -> list[str]:
    """Dataset paths under `group`, relative to it (names may contain '/')."""
    if group not in file:
        return []
    found = []
    file[group].visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found
