"""How raw pixels become a network's input; it belongs to the weights, and the graph keeps it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    def pixel_scale_and_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (3,) scale and shift with x = pixel * scale + shift, the form the engine's kernel computes."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """The network input (C, H, W) float32 of a uint8 (H, W, C) image, as the engine computes it: for host-side
        tools (the TFLite runtimes' input, the int8 emulation), not for the step, which normalizes in the arena."""
        scale, shift = self.pixel_scale_and_shift()
        return np.ascontiguousarray((image.astype(np.float32) * scale + shift).transpose(2, 0, 1))
