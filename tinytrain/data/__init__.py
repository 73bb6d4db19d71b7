"""CIFAR-10 and one's own image folders as uint8 HWC datasets, and the per-image augmentation that feeds the model."""

from .augment import Augmenter, bilinear_coefficients, random_crop_flip, resize_bilinear
from .cifar10 import LABEL_NAMES, SPLITS, load_cifar10, not_found_message, read_python_batches
from .dataset import Dataset
from .download import download_file, md5_file, verify_md5
from .exact_subset import EXACT_SUBSET_FILE, ExactSubset, load_exact_subset
from .errors import (
    ChecksumMismatchError,
    DataError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
    UnsafePickleError,
)
from .folder_dataset import DEFAULT_TEST_FRACTION, FolderDataset, scan_folder_dataset
from .image_folder import fit_image, load_image_folder, read_image

__all__ = [
    "Augmenter",
    "DEFAULT_TEST_FRACTION",
    "ChecksumMismatchError",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "Dataset",
    "DownloadError",
    "EXACT_SUBSET_FILE",
    "ExactSubset",
    "FolderDataset",
    "LABEL_NAMES",
    "SPLITS",
    "UnsafePickleError",
    "bilinear_coefficients",
    "download_file",
    "fit_image",
    "load_cifar10",
    "load_exact_subset",
    "load_image_folder",
    "md5_file",
    "not_found_message",
    "random_crop_flip",
    "read_image",
    "read_python_batches",
    "resize_bilinear",
    "scan_folder_dataset",
    "verify_md5",
]
