"""The canonical in-memory weights: torchvision MobileNetV2 backbone keys, float32 torch layouts, preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinytrain.preprocessing import Preprocessing

SOURCES = ("tfslim-npy", "keras-h5", "torchvision-pth")  # the values `PretrainedWeights.source` can take


# TF-slim and the Keras copy of it: inputs in [-1, 1], BatchNorm eps 1e-3, TF "SAME" padding (PROVENANCE.md section 1).
TF_PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bn_eps=1e-3, padding="tf_same")
# torchvision: ImageNet mean/std, the nn.BatchNorm2d default eps, symmetric padding of k // 2.
TORCHVISION_PREPROCESSING = Preprocessing(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), bn_eps=1e-5, padding="symmetric"
)


@dataclass
class PretrainedWeights:
    """A MobileNetV2-1.0 ImageNet backbone in the canonical form every importer produces.

    tensors: torchvision state-dict keys of the backbone only (`features.*`), unfolded BatchNorm
    (weight, bias, running_mean, running_var; no num_batches_tracked), float32, conv weights OIHW (K, C, kh, kw),
    depthwise weights (C, 1, 3, 3). The ImageNet classifier is not part of it.
    """

    name: str  # e.g. "mobilenet_v2_1.0_224"
    source: str  # one of SOURCES
    preprocessing: Preprocessing
    tensors: dict[str, np.ndarray]
    source_sha256: str = field(default="")  # of the imported file (for the npy folder: of its SHA256SUMS)
