"""How many of a graph's pooled features are alive (non-zero after the head conv's ReLU6) on each image."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.data import Augmenter
from tinytrain.engine import Engine
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES

POOLED = "pool"  # the pooled features, (C,), read out of the inference step


def live_feature_counts(graph: Graph, images: np.ndarray, progress: bool = True) -> np.ndarray:
    """(N,) non-zero pooled features per image; images (N, H, W, 3) uint8, resized (bilinear) to the graph's input."""
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    batches = Augmenter(images, np.zeros(len(images), dtype=np.int64), graph.input_shape[1], augment=False,
                        shuffle=False)
    return np.array([np.count_nonzero(engine.infer(image, read=(POOLED,))[POOLED])
                     for image, _ in tqdm(batches.epoch(0), total=len(batches), disable=not progress,
                                          desc=f"{graph.input_shape[1]}px")])
