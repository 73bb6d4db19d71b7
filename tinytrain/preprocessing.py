"""How raw pixels become a network's input; it belongs to the weights, and the graph keeps it."""

from __future__ import annotations

from dataclasses import dataclass

PADDINGS = ("tf_same", "symmetric")


@dataclass(frozen=True)
class Preprocessing:
    """How an input must look for these weights: x = (pixel / 255 - mean) / std per RGB channel, then the network.

    The preprocessing belongs to the weights, not to the dataset: the same image is fed differently to the
    TF-slim and torchvision copies of MobileNetV2.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bn_eps: float  # BatchNorm epsilon the weights were trained with
    padding: str  # "tf_same" (pad bottom/right first, from the input size) or "symmetric" (k // 2 each side)

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
