"""Update policies: which layers and channels each training step updates, all expressed as UpdatePlans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.graph import Graph
from tinytrain.kernels.draw import draw_channels
from tinytrain.plan import LayerUpdate, UpdatePlan, full_update

POLICIES = ("dense", "last-k", "bias", "static", "dynamic", "dynamic-epoch")
CLASSIFIER = "classifier"
# Blocks before it stay frozen. Block 12 measured best on 5,000 images (README, Results: 15, 13, 12), and blocks 9
# to 11 level with it.
DEFAULT_FIRST_BLOCK = 12


@dataclass(frozen=True)
class SparseLayer:
    """A layer trained on a subset of its channels: `channels` of them are updated per step."""

    name: str
    channels: int  # input channels (depthwise: channels) updated per step, out of the layer's `in_channels`


_FIRST_COLUMN = np.zeros(1, dtype=np.int64)  # the only column of a depthwise weight's (rows, cols) view


def _bias_only() -> LayerUpdate:
    return LayerUpdate(np.zeros(0, np.int64), np.zeros(0, np.int64), bias=True)


def _channel_update(layer, channels: np.ndarray) -> LayerUpdate:
    """All output rows, the chosen input channels: dW[:, c] = dY @ X[c].T needs only X[c] saved."""
    channels = np.sort(channels).astype(np.int64)
    if layer.selects_input_by_output:
        return LayerUpdate(channels, channels)
    return LayerUpdate(np.arange(layer.out_channels, dtype=np.int64), channels)


def sparse_layers(graph: Graph, target_fraction: float, first_block: int = DEFAULT_FIRST_BLOCK,
                  ratio_decay: float = 4.0, include_depthwise: bool = False) -> list[SparseLayer]:
    """The stage-aware layer selection of the dynamic sparse update.

    Front stages stay frozen: only the convs of blocks `first_block` and later (and the head conv) train. Along
    that depth the channel ratio falls geometrically by `ratio_decay` from the first trained layer to the last,
    because later layers hold more weights per channel. The ratios are then scaled together as far as the
    fraction of all conv weights updated per step stays within `target_fraction`.
    """
    candidates = [layer for layer in graph.weighted_layers if layer.is_convolution
                  and graph.in_or_after_block(layer.name, first_block)
                  and (include_depthwise or not layer.selects_input_by_output)]
    if not candidates:
        raise ValueError(f"no conv layer at or after block {first_block}")
    total = graph.conv_weight_count()
    depth = np.linspace(0.0, 1.0, len(candidates))
    shape = ratio_decay ** -depth  # (n,) relative ratios: 1 at the first candidate, 1/decay at the last

    def selection(scale: float) -> list[SparseLayer]:
        return [SparseLayer(layer.name, max(1, min(layer.in_channels, int(scale * s * layer.in_channels))))
                for layer, s in zip(candidates, shape)]

    def fraction(layers: list[SparseLayer]) -> float:
        return sum(_weights_per_channel(graph.layer(x.name)) * x.channels for x in layers) / total

    low, high = 0.0, 1.0 / shape.min()
    if fraction(selection(low)) > target_fraction:
        raise ValueError(f"even one channel per layer exceeds {target_fraction:.2%} of the conv weights; "
                         f"train fewer layers (a later first_block)")
    for _ in range(50):  # bisection on the common scale
        middle = (low + high) / 2
        low, high = (middle, high) if fraction(selection(middle)) <= target_fraction else (low, middle)
    return selection(low)


def _weights_per_channel(layer) -> int:
    """Weights updated when one more input channel (depthwise: channel) of `layer` trains."""
    return int(layer.weight.size // layer.in_channels)


class Policy:
    """Produces the UpdatePlan of each step. `plan(step, epoch)`."""

    name = "policy"

    def plan(self, step: int, epoch: int) -> UpdatePlan:
        raise NotImplementedError


class FixedPolicy(Policy):
    """The same plan every step (dense, last-k, bias, static)."""

    def __init__(self, name: str, update_plan: UpdatePlan):
        self.name = name
        self.update_plan = update_plan

    def plan(self, step, epoch):
        return self.update_plan


class DynamicPolicy(Policy):
    """A new random subset of each sparse layer's important channels every step (or every epoch).

    `pools[name]` holds the channels a draw may pick (default: all of them, uniformly). Each draw is seeded by
    (seed, step or epoch) alone, so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, name: str, graph: Graph, layers: list[SparseLayer], seed: int, redraw: str = "step",
                 pools: dict[str, np.ndarray] | None = None, bias_layers: tuple[str, ...] = ()):
        if redraw not in ("step", "epoch"):
            raise ValueError(f"redraw must be 'step' or 'epoch', got {redraw!r}")
        self.name = name
        self.graph = graph
        self.layers = layers
        self.redraw = redraw
        self.seed = seed
        self.bias_layers = bias_layers
        self.pools = pools or {x.name: np.arange(graph.layer(x.name).in_channels, dtype=np.int64) for x in layers}
        for x in layers:
            if len(self.pools[x.name]) < x.channels:
                raise ValueError(f"{x.name}: pool of {len(self.pools[x.name])} channels, {x.channels} drawn per step")
        self._last_key = None
        self._last_plan = None
        # What every draw shares, made once and read-only: a draw then costs one kernel call and little else.
        self._every_row = {x.name: _read_only(np.arange(graph.layer(x.name).out_channels, dtype=np.int64))
                           for x in layers if not graph.layer(x.name).selects_input_by_output}
        self._fixed = _with_biases_and_classifier(graph, {}, bias_layers).updates
        for update in self._fixed.values():
            _read_only(update.out_channels)
            _read_only(update.in_channels)
        self._pools = np.concatenate([self.pools[x.name] for x in layers]).astype(np.int64)  # every pool, in order
        self._pool_starts = np.cumsum([0] + [len(self.pools[x.name]) for x in layers], dtype=np.int64)
        self._pick_starts = np.cumsum([0] + [x.channels for x in layers], dtype=np.int64)
        self._seen = np.zeros(max(len(pool) for pool in self.pools.values()), dtype=np.bool_)

    def plan(self, step, epoch):
        key = step if self.redraw == "step" else epoch
        if key != self._last_key:
            self._last_key = key
            self._last_plan = self._draw(key)
        return self._last_plan

    def _draw(self, key: int) -> UpdatePlan:
        """Every sparse layer's channels in one kernel call (kernels/draw.py), seeded by (seed, key) alone."""
        picks = np.empty(self._pick_starts[-1], dtype=np.int64)
        draw_channels(picks, self._pick_starts, self._pools, self._pool_starts, self._seen,
                      np.uint64(self.seed % 2**64), np.uint64(key))
        updates = {}
        for x, first, last in zip(self.layers, self._pick_starts[:-1], self._pick_starts[1:]):
            channels = picks[first:last]
            updates[x.name] = LayerUpdate(self._every_row.get(x.name, channels), channels)
        for name, update in self._fixed.items():
            updates.setdefault(name, update)
        return UpdatePlan(updates)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _with_biases_and_classifier(graph: Graph, updates: dict[str, LayerUpdate],
                                bias_layers: tuple[str, ...]) -> UpdatePlan:
    """Adds bias-only updates to `bias_layers` whose weights do not train, and the whole classifier."""
    for name in bias_layers:
        updates.setdefault(name, _bias_only())
    updates[CLASSIFIER] = full_update(graph.layer(CLASSIFIER))
    return UpdatePlan(updates)


def bias_layers_from(graph: Graph, first_block: int | None) -> tuple[str, ...]:
    """The conv layers of blocks `first_block` and later (and the head conv); none for None."""
    if first_block is None:
        return ()
    return tuple(layer.name for layer in graph.weighted_layers
                 if layer.is_convolution and graph.in_or_after_block(layer.name, first_block))


def static_plan(graph: Graph, layers: list[SparseLayer], bias_layers: tuple[str, ...] = ()) -> UpdatePlan:
    """MIT-style static sparse update: in each layer, the channels whose weights have the largest L2 norm."""
    updates = {}
    for x in layers:
        layer = graph.layer(x.name)
        squares = layer.weight_rows_cols.astype(np.float64) ** 2  # (rows, cols, taps)
        # a channel's weights: a row of a depthwise layer, a column (input channel) of any other
        norms = squares.sum(axis=(1, 2) if layer.selects_input_by_output else (0, 2))
        updates[x.name] = _channel_update(layer, np.argsort(-norms, kind="stable")[:x.channels])
    return _with_biases_and_classifier(graph, updates, bias_layers)


def last_k_plan(graph: Graph, k: int) -> UpdatePlan:
    """The last k weighted layers (the classifier counts), every weight."""
    return UpdatePlan({layer.name: full_update(layer) for layer in graph.weighted_layers[-k:]})


def bias_plan(graph: Graph) -> UpdatePlan:
    """TinyTL-style: every bias and the new classifier; no weight gradient, so no saved input features."""
    updates = {layer.name: _bias_only() for layer in graph.weighted_layers}
    updates[CLASSIFIER] = full_update(graph.layer(CLASSIFIER))
    return UpdatePlan(updates)


def make_policy(name: str, graph: Graph, target_fraction: float = 0.02, last_k: int = 2, seed: int = 0,
                first_block: int = DEFAULT_FIRST_BLOCK, ratio_decay: float = 4.0,
                bias_from_block: int | None = None) -> Policy:
    """`bias_from_block` (static, dynamic): also train every bias from that block on; biases are not conv weights,
    and their gradient needs no saved input, only backward through those blocks (ReLU6 masks)."""
    if name == "dense":
        return FixedPolicy(name, UpdatePlan.dense(graph))
    if name == "last-k":
        return FixedPolicy(name, last_k_plan(graph, last_k))
    if name == "bias":
        return FixedPolicy(name, bias_plan(graph))
    if name in ("static", "dynamic", "dynamic-epoch"):
        layers = sparse_layers(graph, target_fraction, first_block, ratio_decay)
        biases = bias_layers_from(graph, bias_from_block)
        if name == "static":
            return FixedPolicy(name, static_plan(graph, layers, biases))
        return DynamicPolicy(name, graph, layers, seed, redraw="step" if name == "dynamic" else "epoch",
                             bias_layers=biases)
    raise ValueError(f"unknown policy {name!r}; choose one of {POLICIES}")


def conv_weight_fraction(graph: Graph, plan: UpdatePlan) -> float:
    """Conv weights a step updates, over all conv weights of the model (the classifier is not a conv)."""
    updated = sum(_updated_weights(graph.layer(name), update) for name, update in plan.updates.items()
                  if graph.layer(name).is_convolution)
    return updated / graph.conv_weight_count()


def _updated_weights(layer, update: LayerUpdate) -> int:
    if not update.trains_weight:
        return 0
    columns = 1 if layer.selects_input_by_output else len(update.in_channels)
    return len(update.out_channels) * columns * layer.weight_rows_cols.shape[2]


class Coverage:
    """Which weights of the trained conv layers have been updated at least once over a run."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._cells: dict[str, np.ndarray] = {}  # layer -> (rows, cols) bool, from updates of some rows
        self._columns: dict[str, np.ndarray] = {}  # layer -> (cols,) bool, from updates of every row

    def record(self, plan: UpdatePlan) -> None:
        for name, update in plan.updates.items():
            layer = self.graph.layer(name)
            if not (update.trains_weight and layer.is_convolution):
                continue
            rows, cols = layer.weight_rows_cols.shape[:2]
            columns = _FIRST_COLUMN if layer.selects_input_by_output else update.in_channels
            if len(update.out_channels) == rows:  # every row (as dynamic draws): marking the columns is enough
                self._columns.setdefault(name, np.zeros(cols, dtype=bool))[columns] = True
            else:
                cells = self._cells.setdefault(name, np.zeros((rows, cols), dtype=bool))
                cells[np.ix_(update.out_channels, columns)] = True

    @property
    def touched(self) -> dict[str, np.ndarray]:
        """layer -> (rows, cols) bool: its weights updated at least once."""
        touched = {}
        for name in self._cells.keys() | self._columns.keys():
            rows, cols = self.graph.layer(name).weight_rows_cols.shape[:2]
            touched[name] = (self._cells.get(name, np.zeros((rows, cols), dtype=bool))
                             | self._columns.get(name, np.zeros(cols, dtype=bool)))
        return touched

    @touched.setter
    def touched(self, touched: dict[str, np.ndarray]) -> None:
        self._cells, self._columns = dict(touched), {}

    @property
    def fraction(self) -> float:
        """Touched weights over all weights of the conv layers that trained at all (1.0 for none)."""
        touched = self.touched
        total = sum(t.size for t in touched.values())
        return sum(int(t.sum()) for t in touched.values()) / total if total else 1.0
