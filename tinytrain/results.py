"""What one fine-tuning run measured, as written to its results.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tinytrain.atomic import atomic_path


@dataclass(frozen=True)
class ExactSubsetAccuracy:
    """Accuracy on the pixel-exact test images, and on their copies in the data source the run tested on."""

    images: int
    accuracy: float
    source_accuracy: float


@dataclass(frozen=True)
class RunResults:
    config: dict  # the TrainConfig, as a dict
    data: str  # the dataset trained and tested on, and where its pixels came from
    class_names: list[str]  # label c's name is class_names[c]
    steps: int
    history: list[dict]  # per finished epoch: epoch, train_loss, train_accuracy, test_accuracy
    test_images: int
    test_accuracy: float
    mirrored_test_accuracy: float  # from the logits of each test image and its mirror image summed
    per_class_accuracy: list[float | None]  # in class_names order; None for a class without test images
    confusion_matrix: list[list[int]]  # [true class][predicted class] counts over the test images
    exact_subset: ExactSubsetAccuracy | None  # CIFAR-10 only, and None when the pixel-exact file is absent
    # Memory, in bytes, measured by the arena over the run's steps and its dry run
    arena_bytes: int
    whole_step_peak_bytes: int
    high_water_bytes: int
    peak_bytes_by_kind: dict[str, int]
    feature_bytes: int  # peak of the "saved" kind
    dense_feature_bytes: int  # the same for dense training of the same model, same engine
    feature_reduction: float
    memory_schedule: str
    conv_weight_fraction_per_step: float
    coverage: float  # fraction of the trained layers' weights updated at least once
    seconds_per_step: float  # wall time in training steps over every session of the run, per step
    parameter_bytes: int

    def write(self, path: Path) -> None:
        """Atomically (see atomic_path), as indented JSON."""
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
