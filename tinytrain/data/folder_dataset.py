"""A user's own images as a dataset: a folder or archive of class folders, with its own train/test split or not.

Two layouts, each optionally wrapped in one top-level folder (as archives often are):
- train/<class>/<image> and test/<class>/<image>: the split is the user's;
- <class>/<image>: each class's images are split at random, a fraction of them held out for testing.
Class names are the folder names, in sorted order; images are .jpg/.jpeg/.png of any size, fitted to a square
(image_folder.fit_image). Everything about the layout is checked from the listing, before any image is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .dataset import Dataset
from .errors import DataFormatError, DataNotFoundError
from .image_folder import IMAGE_SUFFIXES, MAX_CLASSES, list_images, load_image_files

SPLITS = ("train", "test")
DEFAULT_TEST_FRACTION = 0.2
SPLIT_STREAM = 3  # the random stream of the seed that draws the test images (augment.py uses 0, 1 and 2)
IMAGE_TYPES = "/".join(IMAGE_SUFFIXES)
LAYOUT_HELP = ("put each class's images in a folder named after the class: <class>/<image>, or "
               "train/<class>/<image> and test/<class>/<image>")


@dataclass(frozen=True)
class FolderDataset:
    """A listed and checked image folder: its classes and which file goes to which split, nothing decoded yet."""

    path: Path
    class_names: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]  # split -> (name inside path, label), class by class, by name
    has_own_split: bool  # train/ and test/ folders; otherwise the classes were split at random
    split_description: str  # how the test images were chosen

    def load(self, split: str, resolution: int, cache_dir: str | Path | None = None,
             progress: bool = True) -> Dataset:
        """The `split`, every image fitted to resolution x resolution; decoded once, then read from the cache."""
        images, labels = load_image_files(self.path, split, self.files[split], self.class_names,
                                          (resolution, resolution), cache_dir, progress)
        return Dataset(images, labels, self.class_names, f"image folder {self.path}, {self.split_description}")


def scan_folder_dataset(path: str | Path, test_fraction: float | None = None, seed: int = 0,
                        progress: bool = True) -> FolderDataset:
    """List the folder or archive at `path` and check its layout (see the module docstring). Without train/ and
    test/ folders, round(test_fraction * n) of a class's n images, at least 1, go to the test split, drawn from
    `seed` (None: DEFAULT_TEST_FRACTION). Raises DataNotFoundError, or DataFormatError saying what is wrong and how
    to fix it."""
    path = Path(path)
    if test_fraction is None:
        test_fraction = DEFAULT_TEST_FRACTION
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    images, folders = list_images(path, progress)
    if not images:
        raise DataNotFoundError(path, f"no {IMAGE_TYPES} images in it; {LAYOUT_HELP}")
    has_own_split = any(_part(name, -3) in SPLITS for name in images)
    depth = 3 if has_own_split else 2  # parts from the class-folders' parent folder down: [split/]class/image
    prefix = _common_prefix(path, images, depth)
    if has_own_split:
        strays = [name for name in images if _part(name, -3) not in SPLITS]
        if strays:
            raise DataFormatError(path, f"{strays[0]} is in neither train/ nor test/; move it into one of them")
        by_split = {split: _images_by_class(path, [name for name in images if _part(name, -3) == split], folders,
                                            (*prefix, split)) for split in SPLITS}
        class_names = _check_classes(path, by_split)
        files = {split: [(name, label) for label, class_name in enumerate(class_names)
                         for name in by_split[split][class_name]] for split in SPLITS}
        description = "its train/ and test/ folders"
    else:
        by_class = _images_by_class(path, images, folders, prefix)
        class_names = _check_classes(path, {"": by_class})
        files = _random_split(path, by_class, class_names, test_fraction, seed)
        description = f"{test_fraction:g} of each class held out for testing (seed {seed})"
    if len(class_names) > MAX_CLASSES:
        raise DataFormatError(path, f"{len(class_names):,} class folders; at most {MAX_CLASSES:,} classes are "
                                    "supported")
    return FolderDataset(path, class_names, files, has_own_split, f"{len(class_names)} classes, {description}")


def _part(name: str, index: int) -> str | None:
    """Part `index` (negative: from the file name up) of a path, None if it has too few."""
    parts = PurePosixPath(name).parts
    return parts[index] if len(parts) >= -index else None


def _common_prefix(path: Path, images: list[str], depth: int) -> tuple[str, ...]:
    """The folders above the class folders (or the split folders), the same for every image."""
    prefixes = {}
    for name in images:
        parts = PurePosixPath(name).parts
        if len(parts) < depth:
            raise DataFormatError(path, f"{name} is not inside a class folder; {LAYOUT_HELP}")
        prefixes.setdefault(parts[:-depth], name)
    if len(prefixes) > 1:
        first, second = list(prefixes.values())[:2]
        raise DataFormatError(path, f"{first} and {second} are in different folders above their class folders; "
                                    f"{LAYOUT_HELP}")
    return next(iter(prefixes))


def _images_by_class(path: Path, images: list[str], folders: list[str],
                     parent: tuple[str, ...]) -> dict[str, list[str]]:
    """class name -> its images, sorted, for the class folders under `parent`; an empty class folder is refused."""
    by_class: dict[str, list[str]] = {}
    for name in images:
        by_class.setdefault(PurePosixPath(name).parts[-2], []).append(name)
    for folder in folders:
        parts = PurePosixPath(folder).parts
        if parts[:-1] == parent and parts[-1] not in by_class:
            raise DataFormatError(path, f"class folder {folder}/ has no {IMAGE_TYPES} images; add some, or remove "
                                        "the folder")
    if not by_class:
        split_folder = "/".join(parent)
        raise DataFormatError(path, f"no images in {split_folder}/: an empty split; put its images in "
                                    f"{split_folder}/<class>/, or give one folder of class folders, split at random")
    return {class_name: sorted(names) for class_name, names in sorted(by_class.items())}


def _check_classes(path: Path, by_split: dict[str, dict[str, list[str]]]) -> tuple[str, ...]:
    """The class names, the same in every split, at least two."""
    class_names = sorted(set().union(*by_split.values()))
    for split, by_class in by_split.items():
        for class_name in class_names:
            if class_name not in by_class:
                other = next(other for other in by_split if class_name in by_split[other])
                raise DataFormatError(path, f"class {class_name!r} has images in {other}/ but none in {split}/; add "
                                            f"some to {split}/{class_name}/, or remove the class")
    if len(class_names) < 2:
        raise DataFormatError(path, f"only one class ({class_names[0]!r}); a classifier needs at least two: add a "
                                    "folder of images for each class")
    return tuple(class_names)


def _random_split(path: Path, by_class: dict[str, list[str]], class_names: tuple[str, ...], test_fraction: float,
                  seed: int) -> dict[str, list[tuple[str, int]]]:
    """round(test_fraction * n), at least 1, of each class's n images to test, the rest to train; per class, so
    that every class is in both splits."""
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    files: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for label, class_name in enumerate(class_names):
        names = by_class[class_name]
        test_count = max(1, round(test_fraction * len(names)))
        if test_count >= len(names):
            raise DataFormatError(path, f"class {class_name!r} has only {len(names)} image(s): too few to hold out "
                                        f"{test_fraction:g} of them for testing and train on the rest; add images")
        held_out = set(rng.permutation(len(names))[:test_count].tolist())
        for index, name in enumerate(names):
            files["test" if index in held_out else "train"].append((name, label))
    return files
