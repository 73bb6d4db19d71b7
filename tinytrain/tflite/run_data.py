"""The images a checkpoint's run trained and tested on: its --dataset folder, or CIFAR-10 when it had none, so that
an export calibrates, and a comparison measures, on the model's own task."""

from __future__ import annotations

from pathlib import Path

from tinytrain.data import Augmenter, Dataset, load_cifar10, scan_folder_dataset


class TooFewImages(ValueError):
    """More calibration images asked for than the run's training split holds."""


def load_run_split(config: dict, split: str, resolution: int, data_dir: str | Path | None = None,
                   progress: bool = True) -> Dataset:
    """`split` ("train" or "test") of the data the run of `config` (a checkpoint's TrainConfig) used; CIFAR-10 is
    looked for in `data_dir` (else $TINYTRAIN_DATA, else the user cache). A folder is split as the run split it."""
    if config.get("dataset") is None:
        return load_cifar10(split, data_dir=data_dir, progress=progress)
    folder = scan_folder_dataset(config["dataset"], config.get("test_fraction"), config.get("seed", 0), progress)
    return folder.load(split, resolution, progress=progress)


def calibration_images(config: dict, resolution: int, count: int, seed: int, data_dir: str | Path | None = None,
                       progress: bool = True) -> Augmenter:
    """A seeded random subset of `count` training images of the run of `config`, at `resolution`, unaugmented: what
    calibrates an int8 export. TooFewImages if the split has fewer."""
    train = load_run_split(config, "train", resolution, data_dir, progress)
    if count > len(train):
        raise TooFewImages(f"--calibration-images {count:,}: the run's training split has {len(train):,} images; "
                           "ask for at most that many")
    return Augmenter(train.images, train.labels, resolution, shuffle=False, subset=count, seed=seed)


def first_test_images(config: dict, resolution: int, count: int, data_dir: str | Path | None = None,
                      progress: bool = True) -> Augmenter:
    """The first `count` test images of the run of `config` (all of them, if the split has fewer), at `resolution`,
    unaugmented and in order: what a comparison with float measures on."""
    test = load_run_split(config, "test", resolution, data_dir, progress)
    return Augmenter(test.images[:count], test.labels[:count], resolution, shuffle=False)
