"""Catching a run that diverges: a non-finite or exploded parameter, or a loss far above its running level."""

from __future__ import annotations

import math

import numpy as np

from tinytrain.graph import Graph

LOSS_WINDOW = 200  # steps whose mean loss is one reading of the running level
CHECK_EVERY = 100  # steps between checks of the trained parameters and of the windowed loss
LOSS_FACTOR = 10.0  # diverged: the windowed loss above this many times its best level (at least chance level)
NORM_FACTOR = 100.0  # diverged: the trained parameters' L2 norm above this many times its value at the start


class TrainingDiverged(FloatingPointError):
    """The run diverged; the message says where and names the last good checkpoint, if there is one."""


def non_finite_parameters(graph: Graph, layer_names) -> list[str]:
    """'<layer>.weight' / '<layer>.bias' of the named layers that hold a NaN or an infinity."""
    return [f"{name}.{part}" for name in layer_names for part in ("weight", "bias")
            if not np.isfinite(getattr(graph.layer(name), part)).all()]


class DivergenceMonitor:
    """Watches one run: `observe(loss)` every step, which every CHECK_EVERY steps also checks the trained parameters.

    Raises TrainingDiverged with the step and the reason; the caller adds which checkpoint is still good."""

    def __init__(self, graph: Graph, trained_layers, num_classes: int):
        self.graph = graph
        self.trained_layers = tuple(trained_layers)
        self.chance_loss = math.log(num_classes)
        self.start_norm = self._norm()
        self.best_level = math.inf
        self.window: list[float] = []

    def _norm(self) -> float:
        return math.sqrt(sum(float(np.dot(values.ravel(), values.ravel())) for name in self.trained_layers
                             for values in (self.graph.layer(name).weight, self.graph.layer(name).bias)))

    def observe(self, step: int, loss: float) -> None:
        """`step`: steps done so far, this one included."""
        self.window.append(loss)
        del self.window[:-LOSS_WINDOW]
        if step % CHECK_EVERY:
            return
        broken = non_finite_parameters(self.graph, self.trained_layers)
        if broken:
            raise TrainingDiverged(f"step {step}: non-finite values in {', '.join(broken[:4])}")
        norm = self._norm()
        if norm > NORM_FACTOR * self.start_norm:
            raise TrainingDiverged(f"step {step}: the trained parameters' L2 norm grew from {self.start_norm:.3g} to "
                                   f"{norm:.3g}")
        if len(self.window) == LOSS_WINDOW:
            level = sum(self.window) / LOSS_WINDOW
            limit = LOSS_FACTOR * max(self.best_level, self.chance_loss)
            if level > limit:
                raise TrainingDiverged(f"step {step}: the mean loss of the last {LOSS_WINDOW} steps is {level:.3g}, "
                                       f"above {limit:.3g} ({LOSS_FACTOR:g}x its best level or chance level)")
            self.best_level = min(self.best_level, level)
