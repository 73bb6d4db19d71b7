"""Test-only: the same tinytrain graph written again with torch.nn.functional, for autograd to check against."""

import numpy as np
import torch
import torch.nn.functional as F

from tinytrain.graph import Graph
from tinytrain.layers import Add, Conv2d, Depthwise, GlobalAvgPool, Linear, Pointwise


class TorchGraph:
    """Runs `graph`'s layers on its current (folded) parameters, as torch leaf tensors that require grad."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.parameters = {}
        for layer in graph.weighted_layers:
            self.parameters[f"{layer.name}.weight"] = torch.tensor(layer.weight, requires_grad=True)
            self.parameters[f"{layer.name}.bias"] = torch.tensor(layer.bias, requires_grad=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, C, H, W) -> every tensor of the graph by name, batched."""
        tensors = {self.graph.input_name: x}
        for layer in self.graph.layers:
            inputs = [tensors[name] for name in layer.inputs]
            weight = self.parameters.get(f"{layer.name}.weight")
            bias = self.parameters.get(f"{layer.name}.bias")
            if isinstance(layer, Depthwise):
                top, left, bottom, right = layer.padding
                out = F.conv2d(F.pad(inputs[0], (left, right, top, bottom)), weight[:, None], bias, layer.stride,
                               groups=weight.shape[0])
            elif isinstance(layer, Conv2d):
                top, left, bottom, right = layer.padding
                out = F.conv2d(F.pad(inputs[0], (left, right, top, bottom)), weight, bias, layer.stride)
            elif isinstance(layer, Pointwise):
                out = F.conv2d(inputs[0], weight[:, :, None, None], bias)
            elif isinstance(layer, Add):
                out = inputs[0] + inputs[1]
            elif isinstance(layer, GlobalAvgPool):
                out = inputs[0].mean(dim=(2, 3))
            elif isinstance(layer, Linear):
                out = F.linear(inputs[0], weight, bias)
            else:
                raise TypeError(f"no torch version of {type(layer).__name__}")
            if layer.relu6:
                out = F.relu6(out)
            tensors[layer.output] = out
        return tensors

    def gradients(self, image: np.ndarray, label: int) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and d loss / d parameter for one preprocessed (C, H, W) sample."""
        logits = self.forward(torch.tensor(image[None]))[self.graph.output_name]
        loss = F.cross_entropy(logits, torch.tensor([label]))
        loss.backward()
        return loss.item(), {name: p.grad.numpy().copy() for name, p in self.parameters.items()}
