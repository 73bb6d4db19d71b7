"""Patch-based execution of a frozen front: its layers run tile by tile with halos, so one tile at a time is live.

The front stages of MobileNetV2 hold the largest activations (at 128x128, 96 channels at 64x64 are 1.5 MB) but
need no backward when they are frozen, so nothing of them has to exist whole (MCUNetV2, Lin et al. 2021). The
output of the stage's last layer is split into a grid of tiles. For each tile, the region of every tensor it needs
is found by walking the layers backward (a k x k conv of stride s widens a region by its halo); the layers then run
forward on those regions alone, the padding of the whole image becoming a per-tile offset, so that only pixels at
the image border read zero padding. A tile's tensors are channels last, (h, w, C), and run the kernels of
kernels/channels_last.py, which stay fast on a few pixels; a tile's output is written into the stage's whole output
channels first. The numerics are the layer-by-layer ones: each output pixel of a conv sums the same taps in the
same order, and a pointwise conv's sums differ only by sgemm's rounding in the other layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.graph import Graph
from tinytrain.layers import Add, Pointwise, SpatialConv, call_now
from tinytrain.oplog import OpLog


@dataclass(frozen=True)
class Region:
    """Rows [top, bottom) and columns [left, right) of one (C, H, W) tensor."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def union(self, other: Region) -> Region:
        return Region(min(self.top, other.top), max(self.bottom, other.bottom), min(self.left, other.left),
                      max(self.right, other.right))

    def contains(self, other: Region) -> bool:
        return (self.top <= other.top and other.bottom <= self.bottom and self.left <= other.left
                and other.right <= self.right)


@dataclass(frozen=True)
class TileLayer:
    """One layer run on one tile."""

    layer_index: int
    region: Region  # of the layer's output tensor
    # conv2d, depthwise: the whole image's padding shifted to the tile's input region (may be negative inside it)
    pad_top: int
    pad_left: int
    # add: (row, column) of the region in each input tile, whose regions may be larger
    input_offsets: tuple[tuple[int, int], ...]
    frees: tuple[str, ...]  # tensors of the tile whose last use this is


@dataclass(frozen=True)
class Tile:
    output_region: Region  # the part of the stage's output this tile writes
    input_region: Region  # the part of the stage's source it reads
    layers: tuple[TileLayer, ...]
    macs: int  # halo pixels included: what the tile really computes


@dataclass(frozen=True)
class PatchStage:
    """Layers [first_layer, end_layer) of a graph, run tile by tile on a `grid` of (rows, columns) tiles."""

    first_layer: int
    end_layer: int
    grid: tuple[int, int]
    source: str  # the one tensor the stage reads from before it: the graph input, or a stage's output
    output: str  # the one tensor the stage leaves for the rest of the graph, computed whole
    tiles: tuple[Tile, ...]

    @property
    def macs(self) -> int:
        return sum(tile.macs for tile in self.tiles)

    @property
    def kernel_calls(self) -> int:
        return sum(len(tile.layers) for tile in self.tiles)


def patch_boundaries(graph: Graph) -> list[int]:
    """Layer indices b where a patch stage may start or end: convs, pointwise convs and adds up to b, and the output
    of layer b - 1 the only tensor read from before b (0 is the graph input)."""
    last_read = {}
    for index, layer in enumerate(graph.layers):
        for name in layer.inputs:
            last_read[name] = index
    boundaries = [0]
    produced = [graph.input_name]
    for index, layer in enumerate(graph.layers):
        if not isinstance(layer, (SpatialConv, Pointwise, Add)):
            break
        produced.append(layer.output)
        if all(last_read.get(name, -1) <= index for name in produced[:-1]):
            boundaries.append(index + 1)
    return boundaries


def _split(size: int, parts: int) -> list[int]:
    """Boundaries of `parts` near-equal ranges covering [0, size)."""
    return [size * part // parts for part in range(parts + 1)]


def plan_patch_stage(graph: Graph, first_layer: int, end_layer: int, grid: tuple[int, int]) -> PatchStage:
    boundaries = patch_boundaries(graph)
    if first_layer not in boundaries or end_layer not in boundaries or end_layer <= first_layer:
        raise ValueError(f"layers [{first_layer}, {end_layer}) cannot run as a patch stage; stages start and end at "
                         f"{boundaries}")
    layers = graph.layers[first_layer:end_layer]
    source = graph.input_name if first_layer == 0 else graph.layers[first_layer - 1].output
    output = layers[-1].output
    _, height, width = graph.shapes[output]
    rows, columns = grid
    if not (1 <= rows <= height and 1 <= columns <= width):
        raise ValueError(f"a {rows}x{columns} tile grid does not fit the {height}x{width} output of {output!r}")
    row_edges, column_edges = _split(height, rows), _split(width, columns)
    tiles = tuple(_plan_tile(graph, layers, source, Region(row_edges[r], row_edges[r + 1], column_edges[c],
                                                           column_edges[c + 1]))
                  for r in range(rows) for c in range(columns))
    return PatchStage(first_layer, end_layer, (rows, columns), source, output, tiles)


def _input_need(layer, region: Region, input_shape) -> Region:
    """The region of the layer's input that its output `region` reads."""
    if not isinstance(layer, SpatialConv):  # pointwise and add read the same pixels
        return region
    _, height, width = input_shape
    kernel_h, kernel_w = layer.weight.shape[-2:]
    top, left = layer.padding[0], layer.padding[1]
    stride = layer.stride
    return Region(max(0, region.top * stride - top), min(height, (region.bottom - 1) * stride - top + kernel_h),
                  max(0, region.left * stride - left), min(width, (region.right - 1) * stride - left + kernel_w))


def _plan_tile(graph: Graph, layers, source: str, output_region: Region) -> Tile:
    need = {layers[-1].output: output_region}
    for layer in reversed(layers):
        for name in layer.inputs:
            region = _input_need(layer, need[layer.output], graph.shapes[name])
            need[name] = need[name].union(region) if name in need else region
    last_use = {}
    for position, layer in enumerate(layers):
        for name in layer.inputs:
            last_use[name] = position
    # What each tensor really holds: a pointwise conv computes over all of its input tile, which may be larger
    # than what its consumers need when a residual reads the same input with a wider halo.
    actual = {source: need[source]}
    tile_layers, macs = [], 0
    for position, layer in enumerate(layers):
        inputs = [actual[name] for name in layer.inputs]
        pad_top = pad_left = 0
        offsets = ()
        if isinstance(layer, SpatialConv):
            region = need[layer.output]
            pad_top = layer.padding[0] - region.top * layer.stride + inputs[0].top
            pad_left = layer.padding[1] - region.left * layer.stride + inputs[0].left
        elif isinstance(layer, Pointwise):
            region = inputs[0]
        else:
            region = need[layer.output]
            offsets = tuple((region.top - source.top, region.left - source.left) for source in inputs)
        if not all(source.contains(_input_need(layer, region, graph.shapes[name]))
                   for source, name in zip(inputs, layer.inputs)):
            raise AssertionError(f"tile plan of {layer.name}: an input region misses pixels it reads")
        actual[layer.output] = region
        if layer.has_weight:  # every weighted layer here does weight.size MACs per output pixel
            macs += int(layer.weight.size) * region.height * region.width
        frees = tuple(name for name in dict.fromkeys(layer.inputs) if last_use[name] == position)
        tile_layers.append(TileLayer(graph.layers.index(layer), region, pad_top, pad_left, offsets, frees))
    return Tile(output_region, need[source], tuple(tile_layers), macs)


def channels_last_weights(stage: PatchStage, graph: Graph) -> dict[str, np.ndarray]:
    """Host buffers for the weights of the stage's convs channels last (run_patch_stage copies them in)."""
    return {layer.name: np.empty(layer.channels_last_weight().shape, np.float32)
            for layer in graph.layers[stage.first_layer:stage.end_layer] if isinstance(layer, SpatialConv)}


def run_patch_stage(stage: PatchStage, graph: Graph, arena, source: np.ndarray, load_source, output: np.ndarray,
                    weights: dict[str, np.ndarray], op_log: OpLog | None = None, call=call_now) -> None:
    """Fill `output` (the stage's last tensor, whole, channels first) tile by tile; every tile buffer lives in
    `arena`, channels last.

    `load_source(tile_source, region, call)` writes the `region` of `source` (the stage's source tensor, or the
    camera frame it is normalised from) into the (h, w, C) view `tile_source`, through `call`. `weights`
    (channels_last_weights) receive the convs' weights channels last first: the layers' own may have changed since
    the last step. `op_log` records each op of each tile.
    `call(kernel, *arguments)` runs each kernel (the engine's also records it, see recorded_step.py).
    """
    for name, weight in weights.items():
        call(np.copyto, weight, graph.layer(name).channels_last_weight())
    channels = graph.shapes[stage.source][0]
    for number, tile in enumerate(stage.tiles):
        suffix = f" tile {number}"
        region = tile.input_region
        start = op_log.start() if op_log else 0
        live = {stage.source: arena.alloc(f"{stage.source}.tile", (region.height, region.width, channels),
                                          np.float32, "activation")}
        load_source(live[stage.source], region, call)
        if op_log:
            op_log.record(start, f"fwd {stage.source}{suffix}", "load", "", op_log.ids(source))
        for step in tile.layers:
            layer = graph.layers[step.layer_index]
            inputs = [live[name] for name in layer.inputs]
            start = op_log.start() if op_log else 0
            out = arena.alloc(f"{layer.output}.tile", (step.region.height, step.region.width,
                                                       graph.shapes[layer.output][0]), np.float32, "activation")
            if isinstance(layer, SpatialConv):  # tiles keep no ReLU6 mask: the convs clip in their own kernels
                layer.forward_channels_last(out, inputs[0], weights[layer.name], step.pad_top, step.pad_left,
                                            layer.relu6, call=call)
            elif isinstance(layer, Pointwise):
                layer.forward_channels_last(out, inputs[0], layer.relu6, call=call)
            else:
                (row_a, column_a), (row_b, column_b) = step.input_offsets
                height, width = step.region.height, step.region.width
                call(np.add, inputs[0][row_a:row_a + height, column_a:column_a + width],
                     inputs[1][row_b:row_b + height, column_b:column_b + width], out)
            if op_log:
                macs = int(layer.weight.size) * out.shape[0] * out.shape[1] if layer.has_weight else 0
                op_log.record(start, f"fwd {layer.name}{suffix}", layer.op_type, layer.name, op_log.ids(*inputs),
                              macs)
            live[layer.output] = out
            for name in step.frees:
                arena.free(live.pop(name))
        last = tile.layers[-1].region
        owned = tile.output_region
        tile_out = live.pop(stage.output)
        start = op_log.start() if op_log else 0
        call(np.copyto, output[:, owned.top:owned.bottom, owned.left:owned.right],
             tile_out[owned.top - last.top:owned.bottom - last.top,
                      owned.left - last.left:owned.right - last.left].transpose(2, 0, 1))
        if op_log:
            op_log.record(start, f"fwd {stage.output}{suffix}", "copy", "", op_log.ids(tile_out),
                          written=op_log.ids(output))
        arena.free(tile_out)
