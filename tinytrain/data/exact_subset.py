"""The CIFAR-10 test images kept pixel-exact (cifar10/cifar10_exact_subset.npz): positions, pixels and labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXACT_SUBSET_FILE = "cifar10/cifar10_exact_subset.npz"


@dataclass(frozen=True)
class ExactSubset:
    index: np.ndarray  # (N,) positions in the test split, rising
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,)

    def below(self, count: int) -> ExactSubset:
        """The images among the first `count` of the test split."""
        keep = self.index < count
        return ExactSubset(self.index[keep], self.images[keep], self.labels[keep])


def load_exact_subset(data_root: Path) -> ExactSubset | None:
    """The pixel-exact test images under `data_root`; None when the file is not there."""
    path = Path(data_root) / EXACT_SUBSET_FILE
    if not path.is_file():
        return None
    arrays = np.load(path)
    index = arrays["test_subset_index"]
    images = arrays["test_subset_data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # (N, 32, 32, 3)
    return ExactSubset(index, images, arrays["test_labels"][index])
