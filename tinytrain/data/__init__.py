"""CIFAR-10 and image-folder datasets as uint8 HWC arrays, and the per-image augmentation that feeds the model."""

from .augment import Augmenter, bilinear_coefficients, random_crop_flip, resize_bilinear
from .cifar10 import LABEL_NAMES, SPLITS, Dataset, load_cifar10, not_found_message, read_python_batches
from .download import download_file, md5_file, verify_md5
from .errors import (
    ChecksumMismatchError,
    DataError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
    UnsafePickleError,
)
from .image_folder import load_image_folder

__all__ = [
    "Augmenter",
    "ChecksumMismatchError",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "Dataset",
    "DownloadError",
    "LABEL_NAMES",
    "SPLITS",
    "UnsafePickleError",
    "bilinear_coefficients",
    "download_file",
    "load_cifar10",
    "load_image_folder",
    "md5_file",
    "not_found_message",
    "random_crop_flip",
    "read_python_batches",
    "resize_bilinear",
    "verify_md5",
]
