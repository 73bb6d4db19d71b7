"""MobileNetV2 in the torchvision layout as a tinytrain graph; BatchNorm is folded into each conv when built."""

from __future__ import annotations

import numpy as np

from tinytrain.graph import Graph
from tinytrain.layers import Add, Conv2d, Depthwise, GlobalAvgPool, Linear, Pointwise, conv_padding
from tinytrain.preprocessing import Preprocessing
from tinytrain.weights import PretrainedWeights
# The block table (Sandler et al. 2018, Table 2) is the one the weight importers name their tensors by.
from tinytrain.weights.layout import HEAD_CHANNELS, INVERTED_RESIDUAL_SETTINGS, STEM_CHANNELS

# Inputs of randomly initialised models are scaled like the TF-slim checkpoint's: [-1, 1].
RANDOM_INIT_PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bn_eps=1e-3, padding="tf_same")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never below 90% of `value` (torchvision's _make_divisible)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Parameters:
    """Hands out folded (weight, bias) pairs: pretrained by torchvision key, or freshly initialised."""

    def __init__(self, weights: PretrainedWeights | None, rng: np.random.Generator):
        self.weights = weights
        self.rng = rng
        self.eps = weights.preprocessing.bn_eps if weights is not None else None

    def conv(self, conv_key: str, bn_key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if self.weights is None:
            # Kaiming normal in fan_in mode: with no BatchNorm to renormalise, it keeps the forward signal's
            # variance from layer to layer (He et al. 2015, eq. 10). The folded bias starts at zero.
            fan_in = int(np.prod(shape[1:]))
            weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
            return weight.astype(np.float32), np.zeros(shape[0], dtype=np.float32)
        weight = self._tensor(f"{conv_key}.weight", shape)
        gamma, beta, mean, var = (self._tensor(f"{bn_key}.{name}", (shape[0],))
                                  for name in ("weight", "bias", "running_mean", "running_var"))
        # Frozen BatchNorm as an affine map, folded:
        # y = scale * (conv(x) - mean) + beta, scale = gamma / sqrt(var + eps)
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + self.eps)
        folded_weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        folded_bias = beta - mean * scale
        return folded_weight.astype(np.float32), folded_bias.astype(np.float32)

    def _tensor(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        tensor = self.weights.tensors.get(key)
        if tensor is None:
            raise KeyError(f"pretrained weights {self.weights.name!r} have no tensor {key!r}")
        if tensor.shape != shape:
            raise ValueError(f"pretrained tensor {key!r} of {self.weights.name!r} has shape {tensor.shape}, the model "
                             f"needs {shape} (width multiplier or architecture mismatch)")
        return tensor.astype(np.float64)


def build_mobilenetv2(num_classes: int = 10, resolution: int = 32, width_mult: float = 1.0,
                      weights: PretrainedWeights | None = None, seed: int = 0) -> Graph:
    """The backbone from `weights` (or random), and a new classifier for `num_classes` drawn from `seed`."""
    if resolution < 1 or num_classes < 1:
        raise ValueError(f"resolution and num_classes must be positive, got {resolution} and {num_classes}")
    rng = np.random.default_rng(seed)
    preprocessing = weights.preprocessing if weights is not None else RANDOM_INIT_PREPROCESSING
    parameters = _Parameters(weights, rng)

    def padding(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
        return conv_padding(preprocessing.padding, size, kernel, stride)

    layers = []
    size = resolution  # spatial size of the tensor being built; square inputs
    channels = make_divisible(STEM_CHANNELS * width_mult)
    weight, bias = parameters.conv("features.0.0", "features.0.1", (channels, 3, 3, 3))
    layers.append(Conv2d("features.0", ("input",), "features.0", weight, bias, stride=2,
                         padding=padding(size, 3, 2), relu6=True))
    size = layers[-1].output_shape([(3, resolution, resolution)])[1]
    previous = "features.0"
    blocks = {"features.0": 0}  # layer -> block: the stem is block 0, the head conv one past the last block
    index = 1
    for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
        out_channels = make_divisible(out_channels * width_mult)
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            block = f"features.{index}"
            first_layer = len(layers)
            hidden = channels * expansion
            conv = 0  # position of the next conv inside torchvision's block.conv Sequential
            x = previous
            if expansion != 1:
                weight, bias = parameters.conv(f"{block}.conv.0.0", f"{block}.conv.0.1", (hidden, channels, 1, 1))
                layers.append(Pointwise(f"{block}.expand", (x,), f"{block}.expand", weight[:, :, 0, 0], bias,
                                        relu6=True))
                x, conv = f"{block}.expand", 1
            weight, bias = parameters.conv(f"{block}.conv.{conv}.0", f"{block}.conv.{conv}.1", (hidden, 1, 3, 3))
            layers.append(Depthwise(f"{block}.depthwise", (x,), f"{block}.depthwise", weight[:, 0], bias, stride=stride,
                                    padding=padding(size, 3, stride), relu6=True))
            size = layers[-1].output_shape([(hidden, size, size)])[1]
            weight, bias = parameters.conv(f"{block}.conv.{conv + 1}", f"{block}.conv.{conv + 2}",
                                           (out_channels, hidden, 1, 1))
            layers.append(Pointwise(f"{block}.project", (f"{block}.depthwise",), f"{block}.project",
                                    weight[:, :, 0, 0], bias, relu6=False))
            output = f"{block}.project"
            if stride == 1 and channels == out_channels:
                layers.append(Add(f"{block}.add", (previous, output), f"{block}.add"))
                output = f"{block}.add"
            previous, channels = output, out_channels
            blocks.update((layer.name, index) for layer in layers[first_layer:])
            index += 1
    head_channels = make_divisible(HEAD_CHANNELS * max(1.0, width_mult))
    weight, bias = parameters.conv(f"features.{index}.0", f"features.{index}.1", (head_channels, channels, 1, 1))
    layers.append(Pointwise(f"features.{index}", (previous,), f"features.{index}", weight[:, :, 0, 0], bias,
                            relu6=True))
    blocks[f"features.{index}"] = index
    layers.append(GlobalAvgPool("pool", (f"features.{index}",), "pool"))
    # A new head for the new task: N(0, 0.01) weights and zero bias, as torchvision initialises its classifier.
    head_weight = rng.normal(0.0, 0.01, size=(num_classes, head_channels)).astype(np.float32)
    layers.append(Linear("classifier", ("pool",), "classifier", head_weight, np.zeros(num_classes, np.float32),
                         relu6=False))
    return Graph(layers, "input", (3, resolution, resolution), preprocessing, blocks)
