"""Training checkpoints in HDF5: the model, its class names, optimizer state, coverage and progress, written atomically.

A checkpoint alone rebuilds the fine-tuned model (load_trained_model): predictions and exports need nothing else."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tinytrain.arena import DEFAULT_CAPACITY
from tinytrain.atomic import atomic_path
from tinytrain.graph import Graph
from tinytrain.graph_file import read_graph, write_graph
from tinytrain.hdf5_attributes import read_attribute
from tinytrain.hdf5_heap import check_global_heaps
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, PatchSpec

FORMAT = "tinytrain-checkpoint"
# 2 added the running sums of the unfinished epoch and the training time; 3 the model (graph_file.py), its
# resolution, the class names, the arena and its memory schedule, so that a checkpoint alone runs the model
FORMAT_VERSION = 3
ATTRIBUTE_KINDS = {"format": str, "format_version": int, "step": int, "history": str, "config": str,
                   "epoch_sums": str, "train_seconds": float, "resolution": int, "class_names": str,
                   "arena_bytes": int, "memory_schedule": str}  # the root attributes besides the graph's
# h5py, json, check_global_heaps and read_graph on damage
READ_ERRORS = (OSError, RuntimeError, KeyError, IndexError, TypeError, ValueError)


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
    class_names: list[str] = field(default_factory=list)  # label c's name is class_names[c]; empty before format 3
    arena_bytes: int = DEFAULT_CAPACITY  # the run's arena, and how its steps ran in it: predictions run the same way
    memory_schedule: MemorySchedule = LAYER_BY_LAYER


@contextmanager
def _opened(path: Path, instead: str):
    """The checkpoint at `path` open for reading, with its root attributes, once it is known to be a tinytrain
    checkpoint; `instead` says what to do when it is missing or is not one."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {instead}")
    check_global_heaps(path)  # first: one kind of damage would hang h5py for good
    with h5py.File(path, "r") as file:
        attrs = _attributes(file)
        if attrs.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a tinytrain checkpoint (its format is {attrs.get('format')!r}); "
                                  f"{instead}")
        yield file, attrs


def read_progress(path: Path) -> tuple[int, dict, list[str]]:
    """(steps done, configuration, class names) of a checkpoint, without reading its tensors: enough to check a resume
    before any work. The class names are empty in a checkpoint older than format 3."""
    path = Path(path)
    try:
        instead = "start the run without --resume, or point --output-dir at the run to continue"
        with _opened(path, instead) as (_, attrs):
            return int(attrs["step"]), json.loads(attrs["config"]), json.loads(attrs.get("class_names", "[]"))
    except READ_ERRORS as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error}); it is corrupt: start the run again without "
                              "--resume") from error


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
        file.attrs["resolution"] = graph.input_shape[1]
        file.attrs["class_names"] = json.dumps(state.class_names)
        file.attrs["arena_bytes"] = state.arena_bytes
        file.attrs["memory_schedule"] = json.dumps(_schedule_record(state.memory_schedule))
        write_graph(file, graph)
        for name, values in state.momentum.items():
            file.create_dataset(f"momentum/{name}", data=values)
        for name, touched in state.coverage.items():
            file.create_dataset(f"coverage/{name}", data=touched)


def load_checkpoint(path: Path, graph: Graph, steps_per_epoch: int | None = None) -> TrainingState:
    """Copy the saved parameters into `graph` and return the rest of the state. A checkpoint of format 1 has no
    running sums: it resumes only at an epoch's end (`steps_per_epoch` says where those are)."""
    path = Path(path)
    try:
        with _opened(path, "start the run without --resume") as (file, attrs):
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
                class_names=json.loads(attrs.get("class_names", "[]")),
            )
            if version >= 3:
                state.arena_bytes = int(attrs["arena_bytes"])
                state.memory_schedule = _schedule_from_record(json.loads(attrs["memory_schedule"]),
                                                              len(graph.layers))
    except READ_ERRORS as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error}); it is corrupt: start the run again without "
                              "--resume") from error
    if version < 2 and steps_per_epoch and state.step % steps_per_epoch:
        raise CheckpointError(f"{path} was written mid-epoch by an older tinytrain, without the epoch's running sums; "
                              "it resumes only from an epoch's end: start the run again without --resume")
    for (layer, name), values in parameters.items():
        np.copyto(getattr(layer, name), values)
    return state


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A fine-tuned model as its checkpoint describes it."""

    graph: Graph  # at the resolution it was trained at
    class_names: tuple[str, ...]  # label c's name is class_names[c]
    arena_bytes: int  # the arena the run trained in
    memory_schedule: MemorySchedule  # how its steps ran in that arena
    step: int  # training steps done when the checkpoint was written
    config: dict  # the run's TrainConfig, as a dict


def load_trained_model(path: str | Path) -> TrainedModel:
    """The model a checkpoint holds, rebuilt from the checkpoint alone; CheckpointError, saying what to pass instead,
    when the file is missing, not a checkpoint, damaged, or older than format 3."""
    path = Path(path)
    try:
        with _opened(path, "pass the checkpoint.h5 in a fine-tuning run's --output-dir") as (file, attrs):
            version = int(attrs.get("format_version", 1))
            if version < 3:
                raise CheckpointError(f"{path} was written by an older tinytrain (checkpoint format {version}), "
                                      "without the model's layers and class names; fine-tune again to get a "
                                      f"format {FORMAT_VERSION} checkpoint")
            resolution, arena_bytes = int(attrs["resolution"]), int(attrs["arena_bytes"])
            if resolution < 1 or arena_bytes < 1:
                raise ValueError(f"resolution {resolution} and arena_bytes {arena_bytes} must be positive")
            graph = read_graph(file, resolution)
            class_names = tuple(json.loads(attrs["class_names"]))
            memory_schedule = _schedule_from_record(json.loads(attrs["memory_schedule"]), len(graph.layers))
            step, config = int(attrs["step"]), json.loads(attrs["config"])
    except OSError as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({error}); pass the checkpoint.h5 in a fine-tuning "
                              "run's --output-dir") from error
    except READ_ERRORS as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error}); it is damaged or belongs to another model: "
                              "use a checkpoint written by this tinytrain") from error
    if len(class_names) != graph.num_classes or not all(isinstance(name, str) for name in class_names):
        raise CheckpointError(f"{path} names {len(class_names)} classes for a {graph.num_classes}-class classifier; "
                              "it is damaged: use another checkpoint")
    broken = [layer.name for layer in graph.weighted_layers
              if not (np.isfinite(layer.weight).all() and np.isfinite(layer.bias).all())]
    if broken:
        raise CheckpointError(f"{path}: non-finite values in {', '.join(broken[:4])}; use an earlier checkpoint")
    return TrainedModel(graph, class_names, arena_bytes, memory_schedule, step, config)


def _schedule_record(schedule: MemorySchedule) -> dict:
    return {"patches": [{"end_layer": spec.end_layer, "grid": list(spec.grid)} for spec in schedule.patches],
            "in_place_depthwise": schedule.in_place_depthwise,
            "in_place_strided_backward": schedule.in_place_strided_backward}


def _schedule_from_record(record: dict, layer_count: int) -> MemorySchedule:
    """The schedule _schedule_record stored; ValueError unless its stages follow one another inside the graph."""
    patches = tuple(PatchSpec(int(spec["end_layer"]), (int(spec["grid"][0]), int(spec["grid"][1])))
                    for spec in record["patches"])
    ends = [0] + [spec.end_layer for spec in patches] + [layer_count]
    if any(first >= end for first, end in zip(ends, ends[1:])) or any(min(spec.grid) < 1 for spec in patches):
        raise ValueError(f"memory schedule {record} does not fit a graph of {layer_count} layers")
    # checkpoints written before strided backward in place existed do not name it
    return MemorySchedule(patches, bool(record["in_place_depthwise"]),
                          bool(record.get("in_place_strided_backward", False)))


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
