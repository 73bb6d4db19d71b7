"""Confusion matrix, per-class accuracy and the curves PNG of a run."""

import numpy as np
import pytest

from tinytrain.curves import write_curves
from tinytrain.evaluation import confusion_matrix, per_class_accuracy


def test_confusion_counts_true_by_predicted_and_a_class_without_images_has_no_accuracy():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 0, 1, 1, 1])
    confusion = confusion_matrix(labels, predictions, 4)
    np.testing.assert_array_equal(confusion, [[2, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    accuracy = per_class_accuracy(confusion)
    np.testing.assert_allclose(accuracy[:3], [2 / 3, 1.0, 0.0])
    assert np.isnan(accuracy[3])


def test_curves_are_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    history = [{"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.7, "test_accuracy": 0.75},
               {"epoch": 2, "train_loss": 0.6, "train_accuracy": 0.8, "test_accuracy": 0.8}]
    path = tmp_path / "curves.png"
    write_curves(history, path, "dynamic, 128 px, seed 0")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left beside it
