"""One split of a labelled image dataset, held as uint8 arrays: what the trainer and the evaluation read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images with their labels, the class names the labels index, and where the pixels came from."""

    images: np.ndarray  # (N, H, W, 3) uint8, RGB, HWC
    labels: np.ndarray  # (N,) uint8 (uint16 beyond 256 classes), indices into label_names
    label_names: tuple[str, ...]
    source: str  # which files the pixels came from, and how they were put in order

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype not in (np.uint8, np.uint16) or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be uint8 or uint16 ({len(self.images)},), got {self.labels.dtype} "
                             f"{self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)
