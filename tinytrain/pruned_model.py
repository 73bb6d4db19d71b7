"""The pruned-model file: a smaller dense graph in HDF5 that load_pruned rebuilds at any resolution."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tinytrain.atomic import atomic_path
from tinytrain.graph import Graph
from tinytrain.graph_file import read_graph, write_graph

FORMAT = "tinytrain-pruned-model"
FORMAT_VERSION = 2  # 2 added the block of each layer


class PrunedModelError(Exception):
    """A pruned-model file that is missing, unreadable or not one."""


def save_pruned(path: str | Path, graph: Graph, kept: dict[str, np.ndarray], description: dict) -> None:
    """Write `graph` so that load_pruned can rebuild it at any resolution; atomically (see atomic_path).

    Layout: the graph as write_graph stores it (layers, blocks, preprocessing, folded parameters), the original
    indices of the kept channels under kept_channels/<group>, and `description` (how the pruning was done) as JSON.
    """
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.attrs["format"] = FORMAT
        file.attrs["format_version"] = FORMAT_VERSION
        file.attrs["description"] = json.dumps(description)
        write_graph(file, graph)
        for name, channels in kept.items():
            file.create_dataset(f"kept_channels/{name}", data=channels)


def load_pruned(path: str | Path, resolution: int) -> Graph:
    """The graph saved by save_pruned, for square inputs of side `resolution`."""
    path = Path(path)
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if not path.is_file():
        raise PrunedModelError(f"no pruned model at {path}; write one with scripts/prune_model.py")
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != FORMAT:
                raise PrunedModelError(f"{path} is not a tinytrain pruned model (format {file.attrs.get('format')!r})")
            if file.attrs.get("format_version") != FORMAT_VERSION:
                raise PrunedModelError(f"{path}: format_version {file.attrs.get('format_version')!r}, expected "
                                       f"{FORMAT_VERSION}; prune the model again with scripts/prune_model.py")
            return read_graph(file, resolution)
    except (OSError, KeyError, IndexError, TypeError, ValueError) as error:
        raise PrunedModelError(f"cannot read pruned model {path}: {error!r}") from error
