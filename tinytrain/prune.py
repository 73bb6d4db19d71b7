"""Structured channel pruning: channel groups found from the graph, ranked (L2 or first-order Taylor on calibration
images) and sliced into a smaller dense graph; tinytrain.pruned_model saves and loads it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.data import Augmenter
from tinytrain.engine import SGD, Engine
from tinytrain.graph import Graph
from tinytrain.layers import Add, Conv2d, Depthwise, GlobalAvgPool, Layer, Linear, Pointwise
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.plan import LayerUpdate, UpdatePlan

# ----------------------------------------------------------------------------------------------------------------
# channel groups

# What a group's channels are, from the graph alone:
#   expanded      private to one block: expand-conv output, depthwise channels, project-conv input (in MobileNetV2
#                 also the stem's output, which block 1 uses as its hidden channels);
#   block_output  a block's output channels, tied across a stage by the residual adds that join them;
#   head          the head conv's output, averaged by the pool and read by the classifier.
GROUP_KINDS = ("expanded", "block_output", "head")
# Expanded channels only, by default: the layers they run through (stem, expand, depthwise, project) do 93% of
# MobileNetV2's MACs, and removing one touches no other block. Block outputs reach every block of a stage through
# the adds, and the 1280 head channels are all the classifier sees, so pruning those is opt-in.
DEFAULT_GROUP_KINDS = ("expanded",)

_CHANNEL_PRESERVING = (Depthwise, Add, GlobalAvgPool)  # output channel c is made from input channel c only
_CHANNEL_MIXING = (Conv2d, Pointwise, Linear)  # output channels sum over all input channels


@dataclass(frozen=True)
class ChannelGroup:
    """Tensors that share one channel index space: removing channel c removes it from every one of them."""

    name: str  # the group's first tensor in execution order
    kind: str  # one of GROUP_KINDS
    stage: int  # index of the block_output group its channels flow into; the head is one past the last stage
    channels: int
    tensors: tuple[str, ...]
    producers: tuple[str, ...]  # channel-mixing layers writing these channels: weight rows and bias follow
    depthwise: tuple[str, ...]  # per-channel layers inside the group: weight rows and bias follow
    consumers: tuple[str, ...]  # channel-mixing layers reading these channels: weight columns follow


def find_channel_groups(graph: Graph) -> list[ChannelGroup]:
    """Every prunable channel space of `graph`, in execution order, found by walking layer inputs and outputs.

    Depthwise, add and pool layers keep channel c as channel c, so their inputs and output are joined into one
    group (union-find over tensor names); conv, pointwise and linear layers start a new group at their output.
    The input image's channels and the logits are fixed by the data and the task, so they form no group.
    """
    parent = {graph.input_name: graph.input_name}  # tensor -> a tensor of the same group, up to the group's root

    def root(tensor: str) -> str:
        while parent[tensor] != tensor:
            parent[tensor] = parent[parent[tensor]]
            tensor = parent[tensor]
        return tensor

    for layer in graph.layers:
        if not isinstance(layer, _CHANNEL_PRESERVING + _CHANNEL_MIXING):
            raise TypeError(f"{layer.name}: no channel-pruning rule for {type(layer).__name__} layers")
        parent[layer.output] = layer.output
        if isinstance(layer, _CHANNEL_PRESERVING):
            for name in layer.inputs:
                parent[root(name)] = root(layer.output)

    members: dict[str, list[str]] = {}  # root -> tensors in execution order
    for tensor in [graph.input_name] + [layer.output for layer in graph.layers]:
        members.setdefault(root(tensor), []).append(tensor)
    fixed = {root(graph.input_name), root(graph.output_name)}
    spaces = [tensors for key, tensors in members.items() if key not in fixed]
    group_of = {tensor: tensors[0] for tensors in spaces for tensor in tensors}  # tensor -> group name

    kinds = {tensors[0]: _kind(graph, set(tensors)) for tensors in spaces}
    stage_of = {name: index for index, name in enumerate(name for name in kinds if kinds[name] == "block_output")}
    head_stage = len(stage_of)
    mixing = [layer for layer in graph.layers if not isinstance(layer, _CHANNEL_PRESERVING)]
    groups = []
    for tensors in spaces:
        inside = set(tensors)
        producers = tuple(layer.name for layer in mixing if layer.output in inside)
        consumers = tuple(layer.name for layer in mixing if layer.inputs[0] in inside)
        depthwise = tuple(layer.name for layer in graph.layers
                          if isinstance(layer, Depthwise) and layer.output in inside)
        name = tensors[0]
        stage = stage_of.get(name)
        if stage is None:  # expanded or head: the stage its consumer writes into; the classifier writes logits
            written = group_of.get(graph.layer(consumers[0]).output) if consumers else None
            stage = stage_of.get(written, head_stage)
        groups.append(ChannelGroup(name, kinds[name], stage, graph.shapes[name][0], tuple(tensors), producers,
                                   depthwise, consumers))
    return groups


def _kind(graph: Graph, tensors: set[str]) -> str:
    writers = [layer for layer in graph.layers if layer.output in tensors]
    if any(isinstance(layer, GlobalAvgPool) for layer in writers):
        return "head"
    if any(isinstance(layer, Add) for layer in writers):
        return "block_output"
    if any(isinstance(layer, Depthwise) for layer in writers):
        return "expanded"
    return "block_output"  # a stage of one block: no add ties it, but it is still a block's output


def stage_count(groups: list[ChannelGroup]) -> int:
    """Stages of the graph the groups came from (from all its groups): MobileNetV2 has 7, then the head."""
    return max(group.stage for group in groups) + 1


# ----------------------------------------------------------------------------------------------------------------
# importance

@dataclass(frozen=True, eq=False)
class Calibration:
    """Labelled images that channels are ranked on, already at the model's resolution."""

    images: np.ndarray  # (N, R, R, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def calibration_set(images: np.ndarray, labels: np.ndarray, count: int, resolution: int, seed: int = 0) -> Calibration:
    """`count` images drawn at random (from `seed`) out of `images` (N, H, W, 3) uint8, resized to `resolution`
    exactly as training resizes them (bilinear, no augmentation)."""
    batches = Augmenter(images, labels, resolution, augment=False, shuffle=False, subset=count, seed=seed)
    resized = np.empty((count, resolution, resolution, images.shape[3]), dtype=np.uint8)  # (N, R, R, 3)
    chosen = np.empty(count, dtype=np.int64)
    for index, (image, label) in enumerate(batches.epoch(0)):
        resized[index] = image  # the Augmenter reuses one buffer
        chosen[index] = label
    return Calibration(resized, chosen)


def l2_importance(graph: Graph, group: ChannelGroup) -> np.ndarray:
    """(C,) the L2 norm of every weight tied to each channel: producer and depthwise rows, consumer columns.

    The group norm of DepGraph (Fang et al. 2023), over folded weights, so each filter carries its BatchNorm scale.
    Biases are left out: a folded bias is BatchNorm's shift, not the size of a filter.
    """
    squares = np.zeros(group.channels)
    for name in group.producers + group.depthwise:
        weight = graph.layer(name).weight.astype(np.float64)
        squares += np.square(weight.reshape(weight.shape[0], -1)).sum(axis=1)
    for name in group.consumers:
        weight = np.moveaxis(graph.layer(name).weight.astype(np.float64), 1, 0)  # (C, K, ...) channels first
        squares += np.square(weight.reshape(weight.shape[0], -1)).sum(axis=1)
    return np.sqrt(squares)


def taylor_importance(graph: Graph, groups: list[ChannelGroup], calibration: Calibration,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """Group name -> (C,) first-order Taylor importance, sum over images of |sum over pixels of x * dL/dx|
    (Molchanov et al. 2017, eq. 8), x being the channel where a consumer reads it; the loss is `graph`'s own head.

    Removing channel c zeroes column c of every consumer's input, so the first-order loss change for one image is
    -sum_consumers sum_p x[c, p] * dL/dx[c, p]. By linearity of a conv in its input that equals
    -sum_consumers sum_{k, taps} W[k, c, taps] * dW[k, c, taps], so the consumers' weight gradients, which the
    engine hands to `observe_gradient`, give it exactly: no activation or activation gradient has to be read out.
    Taken per image, then its absolute value summed over the images. For expanded channels x is the depthwise
    output after ReLU6, so a saturated or dead channel scores what removing it really costs.
    """
    consumers = sorted({name for group in groups for name in group.consumers})
    plan = UpdatePlan({name: _all_weights(graph.layer(name)) for name in consumers})
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES))
    per_image = {name: np.zeros(graph.layer(name).in_channels) for name in consumers}  # (C,) for one image

    def observe(parameter: str, dweight: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        layer_name, kind = parameter.rsplit(".", 1)
        if kind == "weight":
            weight = graph.layer(layer_name).weight_rows_cols[rows][:, cols]  # (n_rows, n_cols, taps) like dweight
            per_image[layer_name][cols] += np.einsum("kct,kct->c", weight, dweight, dtype=np.float64)

    scores = {group.name: np.zeros(group.channels) for group in groups}
    for image, label in tqdm(zip(calibration.images, calibration.labels), total=len(calibration), desc="taylor",
                             unit="img", disable=not progress):
        for values in per_image.values():
            values.fill(0.0)
        engine.train_step(image, int(label), plan, SGD(lr=0.0), apply_update=False, observe_gradient=observe)
        for group in groups:
            scores[group.name] += np.abs(sum(per_image[name] for name in group.consumers))
    return scores


def _all_weights(layer: Layer) -> LayerUpdate:
    return LayerUpdate(np.arange(layer.out_channels, dtype=np.int64), np.arange(layer.in_channels, dtype=np.int64),
                       bias=False)


# Ridge penalty, relative to the mean feature energy: with fewer calibration images than features (256 < 1280) plain
# least squares has no unique solution.
PROBE_RIDGE = 1e-2


def fit_probe_head(graph: Graph, calibration: Calibration, progress: bool = False) -> Graph:
    """`graph` with its classifier replaced by a linear probe fitted on the calibration images' features.

    A new task's head starts random, and the gradient of a random head ranks channels by how they move random
    logits. Ridge regression of one-hot labels on the pooled features (unpenalised bias) gives in one solve a head
    whose loss gradient points at the right class. The other layers are shared with `graph`, not copied.
    """
    classifier = graph.layers[-1]
    if not isinstance(classifier, Linear):
        raise ValueError(f"the last layer must be the linear classifier, got {type(classifier).__name__}")
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES))
    feature = classifier.inputs[0]
    features = np.empty((len(calibration), classifier.in_channels))  # (N, C)
    for index, image in enumerate(tqdm(calibration.images, desc="probe features", unit="img", disable=not progress)):
        features[index] = engine.infer(image, read=(feature,))[feature]
    targets = np.eye(classifier.out_channels)[calibration.labels]  # (N, K) one-hot
    feature_mean, target_mean = features.mean(axis=0), targets.mean(axis=0)
    centered = features - feature_mean
    gram = centered.T @ centered  # (C, C)
    ridge = PROBE_RIDGE * np.trace(gram) / len(gram) + 1e-12  # the floor keeps all-dead features solvable
    weight = np.linalg.solve(gram + ridge * np.eye(len(gram)), centered.T @ (targets - target_mean)).T  # (K, C)
    bias = target_mean - weight @ feature_mean  # (K,)
    probe = Linear(classifier.name, classifier.inputs, classifier.output, weight, bias, relu6=False)
    return Graph(graph.layers[:-1] + [probe], graph.input_name, graph.input_shape, graph.preprocessing, graph.blocks)


# ----------------------------------------------------------------------------------------------------------------
# selection and slicing

def channels_to_keep(groups: list[ChannelGroup], importance: dict[str, np.ndarray],
                     ratio: float | Sequence[float]) -> dict[str, np.ndarray]:
    """Group name -> (n_keep,) int64 ascending indices of the channels kept, the most important ones.

    `ratio` is the fraction of each group's channels removed: one for every group, or one per stage
    (ratio[group.stage]). floor(ratio * C) channels go, never all of them; ties keep the lower index.
    """
    ratios = [ratio] if np.isscalar(ratio) else list(ratio)
    for value in ratios:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"pruning ratios must be in [0, 1), got {value}")
    kept = {}
    for group in groups:
        if np.isscalar(ratio):
            group_ratio = ratio
        elif group.stage < len(ratios):
            group_ratio = ratios[group.stage]
        else:
            raise ValueError(f"{len(ratios)} stage ratios, but group {group.name} is in stage {group.stage}")
        scores = importance[group.name]
        if scores.shape != (group.channels,):
            raise ValueError(f"importance of {group.name} has shape {scores.shape}, expected ({group.channels},)")
        removed = int(np.floor(group_ratio * group.channels + 1e-9))  # the epsilon absorbs 0.29 * 100 = 28.999...
        keep = max(1, group.channels - removed)
        ranked = np.lexsort((np.arange(group.channels), -scores))  # most important first, ties by index
        kept[group.name] = np.sort(ranked[:keep]).astype(np.int64)
    return kept


def prune_graph(graph: Graph, groups: list[ChannelGroup], kept: dict[str, np.ndarray]) -> Graph:
    """A new dense graph keeping only `kept[group]` channels of each group named in `kept` (others untouched).

    Producer and depthwise layers keep those weight rows and biases, consumers those weight columns; adds and the
    pool follow by shape. Every layer is a copy: training the pruned graph never writes into `graph`.
    """
    by_name = {group.name: group for group in groups}
    rows: dict[str, np.ndarray] = {}  # layer -> output channels kept
    cols: dict[str, np.ndarray] = {}  # layer -> input channels kept
    for name, channels in kept.items():
        if name not in by_name:
            raise ValueError(f"no channel group named {name!r}")
        group = by_name[name]
        if (channels.ndim != 1 or len(channels) == 0 or len(np.unique(channels)) != len(channels)
                or channels.min() < 0 or channels.max() >= group.channels):
            raise ValueError(f"{name}: kept channels must be distinct indices in [0, {group.channels}), at least one")
        for layer_name in group.producers + group.depthwise:
            rows[layer_name] = channels
        for layer_name in group.consumers:
            cols[layer_name] = channels
    layers = [_sliced(layer, rows.get(layer.name), cols.get(layer.name)) for layer in graph.layers]
    return Graph(layers, graph.input_name, graph.input_shape, graph.preprocessing, graph.blocks)


def _sliced(layer: Layer, rows: np.ndarray | None, cols: np.ndarray | None) -> Layer:
    sliced = copy.copy(layer)
    if layer.has_weight:
        weight, bias = layer.weight, layer.bias  # weight (K, C, ...) or depthwise (C, kh, kw); bias (K,)
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        if cols is not None:
            weight = weight[:, cols]
        sliced.weight = np.array(weight, dtype=np.float32, order="C")  # always a copy
        sliced.bias = np.array(bias, dtype=np.float32)
    return sliced
