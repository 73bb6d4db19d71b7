"""A run's training curves as a PNG: train and test accuracy, and train loss, per epoch (matplotlib, optional)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tinytrain.atomic import atomic_path

INSTALL_HINT = "pip install -e '.[plot]'"


def plotting_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_curves(history: list[dict], path: Path, title: str) -> None:
    """Draw `history` (results.json's: epoch, train_loss, train_accuracy, test_accuracy) into the PNG `path`."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as pyplot

    epochs = [record["epoch"] for record in history]
    figure, (accuracy_axis, loss_axis) = pyplot.subplots(1, 2, figsize=(9, 3.6))
    accuracy_axis.plot(epochs, [100 * record["train_accuracy"] for record in history], "o-",
                       label="train (running, augmented)")
    tested = [record for record in history if "test_accuracy" in record]
    accuracy_axis.plot([record["epoch"] for record in tested], [100 * record["test_accuracy"] for record in tested],
                       "s-", label="test")
    accuracy_axis.set(xlabel="epoch", ylabel="top-1 accuracy (%)", xticks=epochs)
    accuracy_axis.legend()
    accuracy_axis.grid(alpha=0.3)
    loss_axis.plot(epochs, [record["train_loss"] for record in history], "o-", color="tab:red")
    loss_axis.set(xlabel="epoch", ylabel="train loss (mean over the epoch)", xticks=epochs)
    loss_axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(Path(path)) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    pyplot.close(figure)
