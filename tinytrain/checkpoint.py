"""Training checkpoints in HDF5: parameters, optimizer state, coverage and progress, written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tinytrain.atomic import atomic_path
from tinytrain.graph import Graph

FORMAT = "tinytrain-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match the model being trained."""


@dataclass
class TrainingState:
    step: int  # steps done
    history: list[dict]  # one record per finished epoch
    momentum: dict[str, np.ndarray]  # parameter -> (rows, cols, taps)
    coverage: dict[str, np.ndarray]  # layer -> (rows, cols) bool
    config: dict


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
        write_parameters(file, graph)
        for name, values in state.momentum.items():
            file.create_dataset(f"momentum/{name}", data=values)
        for name, touched in state.coverage.items():
            file.create_dataset(f"coverage/{name}", data=touched)


def load_checkpoint(path: Path, graph: Graph) -> TrainingState:
    """Copy the saved parameters into `graph` and return the rest of the state."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train without --resume first")
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a tinytrain checkpoint")
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
                    parameters[(layer, name)] = values
            state = TrainingState(
                step=int(file.attrs["step"]),
                history=json.loads(file.attrs["history"]),
                momentum={name: file[f"momentum/{name}"][()] for name in _names(file, "momentum")},
                coverage={name: file[f"coverage/{name}"][()] for name in _names(file, "coverage")},
                config=json.loads(file.attrs["config"]),
            )
    except (OSError, KeyError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    for (layer, name), values in parameters.items():
        np.copyto(getattr(layer, name), values)
    return state


def _names(file: h5py.File, group: str) -> list[str]:
    """Dataset paths under `group`, relative to it (names may contain '/')."""
    if group not in file:
        return []
    found = []
    file[group].visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found
