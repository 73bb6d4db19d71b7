"""Classify image files with a fine-tuned checkpoint: the training engine's inference, in the run's own arena."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.checkpoint import CheckpointError, TrainedModel
from tinytrain.data import read_image
from tinytrain.engine import Engine


@dataclass(frozen=True)
class Prediction:
    image: str  # the file, as it was given
    top: list[tuple[str, float]]  # (class name, probability), the most probable first


class Predictor:
    """One arena and one engine for every image, as a device running the fine-tuned model would have them.

    The arena is the training run's (or `arena_bytes`), and the frozen front runs in the run's memory schedule, so
    the inference peak is measured where the model was trained. Every inference has the same peak: memory depends
    on shapes, not pixels."""

    def __init__(self, model: TrainedModel, arena_bytes: int | None = None):
        self.model = model
        self.arena = Arena(arena_bytes or model.arena_bytes, tracing=False)
        try:
            self.engine = Engine(model.graph, self.arena, memory_schedule=model.memory_schedule)
        except ValueError as error:  # a patch stage that does not fit the graph
            raise CheckpointError(f"the checkpoint's memory schedule does not fit its model ({error}); it is damaged: "
                                  "use another checkpoint") from error
        # a dry run: an arena too small fails here (ArenaOverflow), before any image is read
        self.engine.infer(np.zeros((self.resolution, self.resolution, 3), dtype=np.uint8))

    @property
    def resolution(self) -> int:
        return self.model.graph.input_shape[1]

    def read_images(self, paths: Sequence[str | Path]) -> list[np.ndarray]:
        """Every image as the model sees it, (R, R, 3) uint8, centre-cropped and resized as training images are;
        all read before any inference, so that a missing or corrupt file stops the run before it starts."""
        return [read_image(path, (self.resolution, self.resolution)) for path in paths]

    def predict(self, names: Sequence[str], images: Sequence[np.ndarray], top_k: int,
                progress: bool = True) -> list[Prediction]:
        """The `top_k` most probable classes of each image (softmax of the logits, in float64)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        predictions = []
        for name, image in tqdm(zip(names, images), total=len(images), desc="predict", unit="img",
                                disable=not progress):
            logits = self.engine.infer(image)[self.model.graph.output_name].astype(np.float64)  # (K,)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            order = np.argsort(-probabilities, kind="stable")[:top_k]
            predictions.append(Prediction(name, [(self.model.class_names[k], float(probabilities[k])) for k in order]))
        return predictions

    @property
    def peak_bytes(self) -> int:
        """The most bytes live in the arena at once, over every inference so far."""
        return self.arena.peak_bytes
