"""The three published forms of the MobileNetV2-1.0 ImageNet weights: file names, canonical URLs, hashes, accuracy.

weights/manifest.json in the repository is this table written out (manifest()); a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .keras import import_keras_h5
from .tfslim import NAME, import_tfslim_npy
from .torchvision import import_torchvision_pth
from .types import TF_PREPROCESSING, TORCHVISION_PREPROCESSING, Preprocessing, PretrainedWeights


@dataclass(frozen=True)
class WeightsFile:
    """One published form of the weights and how to check and import it."""

    source: str  # PretrainedWeights.source
    filename: str  # name in the data directory (a folder for "tfslim-npy")
    url: str  # canonical location
    downloadable: bool  # whether `url` serves exactly `filename` as one file
    sha256: str | None  # full sha256 where known (for the .npy folder: of its SHA256SUMS)
    sha256_prefix: str | None  # torchvision publishes only the first 8 hex digits, inside the file name
    size_bytes: int | None
    integrity: str  # what a download or copy is checked against, in words
    preprocessing: Preprocessing
    top1: float  # ImageNet-1k validation accuracy (%) as published for this file
    top5: float
    accuracy_source: str
    importer: Callable[[Path], PretrainedWeights]


WEIGHTS_FILES = (
    WeightsFile(
        source="tfslim-npy",
        filename="mobilenet_v2_1.0_224_tfslim",
        url="https://github.com/JonathanCMitchell/mobilenet_v2_keras/tree/"
        "8ab6f54432a37061766a94cf0388908e72cb12cb/weights",
        downloadable=False,
        sha256="5e87b5d8f97b469cec52df174c61b5e473386f9b6e0cc32d1ecc92597f1870b7",
        sha256_prefix=None,
        size_bytes=None,
        integrity="every .npy against the folder's SHA256SUMS; sha256 here is that of SHA256SUMS",
        preprocessing=TF_PREPROCESSING,
        top1=71.8,
        top5=91.0,
        accuracy_source="TF-slim MobileNetV2 README, checkpoint mobilenet_v2_1.0_224 "
        "(https://storage.googleapis.com/mobilenet_v2/checkpoints/mobilenet_v2_1.0_224.tgz)",
        importer=import_tfslim_npy,
    ),
    WeightsFile(
        source="keras-h5",
        filename="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        downloadable=True,
        sha256=None,
        sha256_prefix=None,
        size_bytes=14_536_120,
        integrity="size only: Keras publishes no hash for this file (get_file is called without file_hash); "
        "the import then checks every tensor's name and shape",
        preprocessing=TF_PREPROCESSING,
        top1=71.3,
        top5=90.1,
        accuracy_source="keras.io Keras Applications table (Keras' own evaluation of these TF-slim values, "
        "which TF-slim reports as 71.8 / 91.0)",
        importer=import_keras_h5,
    ),
    WeightsFile(
        source="torchvision-pth",
        filename="mobilenet_v2-b0353104.pth",
        url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        downloadable=True,
        sha256=None,
        sha256_prefix="b0353104",
        size_bytes=None,
        integrity="first 8 hex digits of the sha256, as torch.hub's check_hash does with the name's suffix",
        preprocessing=TORCHVISION_PREPROCESSING,
        top1=71.878,
        top5=90.286,
        accuracy_source="torchvision docs, MobileNet_V2_Weights.IMAGENET1K_V1",
        importer=import_torchvision_pth,
    ),
)


def manifest() -> dict[str, Any]:
    """WEIGHTS_FILES as the JSON object committed in weights/manifest.json."""
    entries = []
    for file in WEIGHTS_FILES:
        entry = {"name": NAME}
        entry.update((field, getattr(file, field)) for field in WeightsFile.__dataclass_fields__ if field != "importer")
        entry["preprocessing"] = {
            "mean": list(file.preprocessing.mean),
            "std": list(file.preprocessing.std),
            "bn_eps": file.preprocessing.bn_eps,
            "padding": file.preprocessing.padding,
            "formula": "x = (pixel / 255 - mean) / std, RGB",
        }
        entries.append(entry)
    return {"format": "tinytrain-weights-manifest", "format_version": 1, "weights": entries}
