"""Test and benchmark only (needs the `test` extra): a tinytrain graph run again with torch.nn.functional.

The tests check every gradient against its autograd; the benchmark times its training step against tinytrain's.
Nothing in the library imports this module, so torch never becomes a runtime dependency.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tinytrain.graph import Graph
from tinytrain.layers import Add, Depthwise, GlobalAvgPool, Linear, Pointwise, SpatialConv


def _torch_layout(layer) -> np.ndarray:
    """Weights as F.conv2d takes them, (K, C / groups, kh, kw), so no reshape joins the autograd graph per step."""
    if isinstance(layer, Depthwise):
        return layer.weight[:, None]
    if isinstance(layer, Pointwise):
        return layer.weight[:, :, None, None]
    return layer.weight


def _torch_op(layer, weight, bias) -> Callable:
    if isinstance(layer, Add):
        return torch.add
    if isinstance(layer, GlobalAvgPool):
        return lambda x: x.mean(dim=(2, 3))
    if isinstance(layer, Linear):
        return lambda x: F.linear(x, weight, bias)
    if isinstance(layer, Pointwise):
        return lambda x: F.conv2d(x, weight, bias)
    if isinstance(layer, SpatialConv):  # the stem, and depthwise as a grouped conv
        groups = weight.shape[0] if isinstance(layer, Depthwise) else 1
        top, left, bottom, right = layer.padding
        if (top, left) == (bottom, right):
            return lambda x: F.conv2d(x, weight, bias, layer.stride, (top, left), 1, groups)
        # TF "SAME" pads one more pixel after than before at stride 2; F.conv2d pads both sides alike
        padding = (left, right, top, bottom)
        return lambda x: F.conv2d(F.pad(x, padding), weight, bias, layer.stride, 0, 1, groups)
    raise TypeError(f"no torch version of {type(layer).__name__}")


class TorchGraph:
    """`graph`'s layers on copies of its current (folded) parameters, as torch leaf tensors.

    `trained`: the layers whose weight and bias require grad (default: all), so autograd stops, as tinytrain's
    backward does, at the earliest trained layer. `parameters` maps '<layer>.weight' / '.bias' to those tensors,
    weights in F.conv2d's layout."""

    def __init__(self, graph: Graph, trained: set[str] | None = None):
        self.graph = graph
        self.parameters: dict[str, torch.Tensor] = {}
        self.ops = []  # (torch function, layer, tensors that die after this op)
        last_use = {name: index for index, layer in enumerate(graph.layers) for name in layer.inputs}
        for index, layer in enumerate(graph.layers):
            weight = bias = None
            if layer.has_weight:
                requires_grad = trained is None or layer.name in trained
                weight = torch.tensor(_torch_layout(layer), requires_grad=requires_grad)
                bias = torch.tensor(layer.bias, requires_grad=requires_grad)
                self.parameters[f"{layer.name}.weight"], self.parameters[f"{layer.name}.bias"] = weight, bias
            dying = tuple(name for name in set(layer.inputs) if last_use[name] == index)
            self.ops.append((_torch_op(layer, weight, bias), layer, dying))
        self.trained_parameters = [p for p in self.parameters.values() if p.requires_grad]

    def forward(self, x: torch.Tensor, keep_all: bool = True) -> dict[str, torch.Tensor]:
        """x (N, C, H, W) preprocessed -> every tensor of the graph by name, or (keep_all=False, as a
        torch.nn.Module forward would) only those still needed, the logits among them."""
        tensors = {self.graph.input_name: x}
        for op, layer, dying in self.ops:
            out = op(*(tensors[name] for name in layer.inputs))
            tensors[layer.output] = F.relu6(out, inplace=True) if layer.relu6 else out  # as torchvision's ReLU6
            if not keep_all:
                for name in dying:
                    del tensors[name]
        return tensors

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x, keep_all=False)[self.graph.output_name]

    def gradients(self, image: np.ndarray, label: int,
                  label_smoothing: float = 0.0) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and d loss / d parameter, in tinytrain's parameter shapes, for one preprocessed (C, H, W) sample."""
        loss = F.cross_entropy(self.logits(torch.tensor(image[None])), torch.tensor([label]),
                               label_smoothing=label_smoothing)
        loss.backward()
        return loss.item(), {name: p.grad.numpy().reshape(self._tinytrain_shape(name)).copy()
                             for name, p in self.parameters.items() if p.grad is not None}

    def tinytrain_values(self) -> dict[str, np.ndarray]:
        """The parameters now, in tinytrain's shapes."""
        return {name: p.detach().numpy().reshape(self._tinytrain_shape(name)).copy()
                for name, p in self.parameters.items()}

    def _tinytrain_shape(self, name: str) -> tuple[int, ...]:
        layer_name, part = name.rsplit(".", 1)
        return getattr(self.graph.layer(layer_name), part).shape

    def train_step(self, x: torch.Tensor, target: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One step on x (1, C, H, W) preprocessed; `optimizer` holds trained_parameters."""
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.logits(x), target)
        loss.backward()
        optimizer.step()
        return loss.item()
