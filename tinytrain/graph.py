"""A layer graph with named tensors; every shape is known before any data exists."""

from __future__ import annotations

import numpy as np

from tinytrain.layers import Layer, Shape
from tinytrain.preprocessing import Preprocessing


class Graph:
    """Layers in execution order; tensor shapes follow from the input shape alone."""

    def __init__(self, layers: list[Layer], input_name: str, input_shape: Shape, preprocessing: Preprocessing,
                 blocks: dict[str, int] | None = None):
        """`preprocessing` belongs to the weights: how raw pixels become this network's input. `blocks`: the block
        index of each layer that belongs to one (policies freeze the front blocks by it); a layer without one, such
        as the pooling and the classifier, comes after every block."""
        self.layers = layers
        self.blocks = dict(blocks or {})
        self.input_name = input_name
        self.input_shape = tuple(input_shape)
        self.preprocessing = preprocessing
        self.shapes: dict[str, Shape] = {input_name: self.input_shape}
        names = set()
        for layer in layers:
            if layer.name in names:
                raise ValueError(f"two layers are named {layer.name!r}")
            names.add(layer.name)
            missing = [name for name in layer.inputs if name not in self.shapes]
            if missing:
                raise ValueError(f"layer {layer.name!r} reads {missing} before any layer writes it")
            self.shapes[layer.output] = layer.output_shape([self.shapes[name] for name in layer.inputs])
        self.output_name = layers[-1].output
        self._by_name = {layer.name: layer for layer in layers}

    def layer(self, name: str) -> Layer:
        return self._by_name[name]

    def in_or_after_block(self, name: str, block: int) -> bool:
        """Whether layer `name` belongs to block `block` or a later one."""
        return self.blocks.get(name, block) >= block

    @property
    def weighted_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.has_weight]

    @property
    def num_classes(self) -> int:
        return self.shapes[self.output_name][0]

    def parameter_bytes(self) -> int:
        """Bytes of all weights and biases (flash on a device)."""
        return sum(layer.weight.nbytes + layer.bias.nbytes for layer in self.weighted_layers)

    def conv_weight_count(self) -> int:
        """Weights of every convolution (the denominator of the update ratio; the classifier is not a conv)."""
        return sum(layer.weight.size for layer in self.weighted_layers if layer.is_convolution)

    def macs(self) -> int:
        return sum(layer.macs([self.shapes[name] for name in layer.inputs]) for layer in self.layers)

    def tensor_bytes(self, name: str) -> int:
        return int(np.prod(self.shapes[name])) * 4
