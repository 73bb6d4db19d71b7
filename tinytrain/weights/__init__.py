"""Pretrained MobileNetV2-1.0 ImageNet weights: TF-slim, Keras and torchvision importers into one canonical form."""

from .canonical import load_canonical, save_canonical
from .errors import (
    ChecksumMismatchError,
    DownloadError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsFormatError,
    WeightsNotFoundError,
    WeightsTensorError,
)
from .keras import import_keras_h5
from .layout import UNITS, expected_shapes
from .pretrained import load_pretrained
from .sources import WEIGHTS_FILES, manifest
from .tfslim import import_tfslim_npy
from .torchvision import import_torchvision_pth
from .types import TF_PREPROCESSING, TORCHVISION_PREPROCESSING, Preprocessing, PretrainedWeights

__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "Preprocessing",
    "PretrainedWeights",
    "TF_PREPROCESSING",
    "TORCHVISION_PREPROCESSING",
    "UNITS",
    "UnsafeCheckpointError",
    "WEIGHTS_FILES",
    "WeightsError",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "WeightsTensorError",
    "expected_shapes",
    "import_keras_h5",
    "import_tfslim_npy",
    "import_torchvision_pth",
    "load_canonical",
    "load_pretrained",
    "manifest",
    "save_canonical",
]
