"""The divergence monitor: a loss far above its running level, a non-finite or an exploded trained parameter."""

import numpy as np
import pytest

from tinytrain.divergence import CHECK_EVERY, LOSS_WINDOW, DivergenceMonitor, TrainingDiverged
from tinytrain.models.mobilenetv2 import build_mobilenetv2

TRAINED = ("features.18", "classifier")


@pytest.fixture
def graph():
    return build_mobilenetv2(resolution=32, width_mult=0.35, seed=0)


def feed(monitor, losses, first_step=1):
    for step, loss in enumerate(losses, start=first_step):
        monitor.observe(step, loss)


def test_a_healthy_run_passes_and_a_loss_ten_times_its_best_level_stops_it(graph):
    monitor = DivergenceMonitor(graph, TRAINED, num_classes=10)
    healthy = np.linspace(2.3, 0.4, 2000)  # a loss falling as training goes, with noise around it
    healthy = healthy * np.random.default_rng(0).uniform(0.5, 1.5, healthy.size)
    feed(monitor, healthy)
    with pytest.raises(TrainingDiverged, match=f"mean loss of the last {LOSS_WINDOW} steps is .* above 23"):
        feed(monitor, [40.0] * LOSS_WINDOW, first_step=2001)


def test_a_high_loss_below_ten_times_chance_level_is_no_divergence(graph):
    monitor = DivergenceMonitor(graph, TRAINED, num_classes=10)
    feed(monitor, [0.05] * 1000 + [15.0] * 1000)  # bad, but 15 < 10 * ln(10)


def test_a_non_finite_trained_parameter_stops_the_run_at_the_next_check(graph):
    monitor = DivergenceMonitor(graph, TRAINED, num_classes=10)
    feed(monitor, [2.0] * (CHECK_EVERY - 1))
    graph.layer("classifier").weight[0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=f"step {CHECK_EVERY}: non-finite values in classifier.weight"):
        monitor.observe(CHECK_EVERY, 2.0)


def test_trained_parameters_whose_norm_grows_a_hundredfold_stop_the_run(graph):
    monitor = DivergenceMonitor(graph, TRAINED, num_classes=10)
    for name in TRAINED:
        graph.layer(name).weight *= 1000.0
    with pytest.raises(TrainingDiverged, match="L2 norm grew from"):
        feed(monitor, [2.0] * CHECK_EVERY)
