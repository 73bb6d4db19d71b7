"""The images a checkpoint's run trained and tested on: its --dataset folder, or CIFAR-10 when it had none, so that
an export calibrates, and a comparison measures, on the model's own task."""

from __future__ import annotations

from pathlib import Path

from tinytrain.data import Dataset, load_cifar10, scan_folder_dataset


def load_run_split(config: dict, split: str, resolution: int, data_dir: str | Path | None = None,
                   progress: bool = True) -> Dataset:
    """`split` ("train" or "test") of the data the run of `config` (a checkpoint's TrainConfig) used; CIFAR-10 is
    looked for in `data_dir` (else $TINYTRAIN_DATA, else the user cache). A folder is split as the run split it."""
    if config.get("dataset") is None:
        return load_cifar10(split, data_dir=data_dir, progress=progress)
    folder = scan_folder_dataset(config["dataset"], config.get("test_fraction"), config.get("seed", 0), progress)
    return folder.load(split, resolution, progress=progress)
