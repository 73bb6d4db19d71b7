"""Sparse SGD update: the selected rows x cols follow torch.optim.SGD, every other weight stays bit-identical."""

import numpy as np
import pytest
import torch
from kernel_references import random_array, selection

from tinytrain.kernels.sgd import sgd_update

NO_MOMENTUM = np.zeros((0, 0, 0), dtype=np.float32)


def test_sgd_by_hand():
    weight = np.array([[[1.0]], [[2.0]]], dtype=np.float32)  # (K=2, C=1, S=1)
    sgd_update(weight, np.array([[[0.5]]], dtype=np.float32), NO_MOMENTUM, np.array([1]), np.array([0]), 0.1, 0.0, 0.0)
    np.testing.assert_allclose(weight.ravel(), [1.0, 2.0 - 0.1 * 0.5])


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.0, 0.01), (0.9, 0.0), (0.9, 4e-5)])
def test_sgd_matches_torch_on_selected_slice(momentum, weight_decay):
    rng = np.random.default_rng(30)
    n_rows, n_cols, n_taps, lr = 7, 5, 9, 0.05
    weight = random_array(rng, n_rows, n_cols, n_taps)
    rows, cols = selection(rng, n_rows, 3), selection(rng, n_cols, 2)
    selected = np.ix_(rows, cols)
    untouched = np.ones(weight.shape, dtype=bool)
    untouched[selected] = False
    original = weight.copy()

    parameter = torch.nn.Parameter(torch.tensor(weight[selected]))
    optimizer = torch.optim.SGD([parameter], lr=lr, momentum=momentum, weight_decay=weight_decay)
    momentum_buffer = np.zeros(weight.shape, dtype=np.float32) if momentum else NO_MOMENTUM
    for _ in range(3):  # several steps, so the momentum buffer carries over
        dweight = random_array(rng, len(rows), len(cols), n_taps)
        parameter.grad = torch.tensor(dweight)
        optimizer.step()
        sgd_update(weight, dweight, momentum_buffer, rows, cols, lr, momentum, weight_decay)
        np.testing.assert_allclose(weight[selected], parameter.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(weight[untouched], original[untouched])


def test_sgd_momentum_buffer_follows_channels_across_selections():
    # A channel drawn again later resumes its own velocity; one not drawn keeps weight and velocity unchanged.
    rng = np.random.default_rng(31)
    n_rows, n_cols, n_taps, lr, momentum, weight_decay = 6, 4, 3, 0.1, 0.9, 1e-3
    weight = random_array(rng, n_rows, n_cols, n_taps)
    momentum_buffer = np.zeros_like(weight)
    expected_weight, expected_buffer = weight.astype(np.float64), np.zeros(weight.shape)
    for rows, cols in [([0, 2, 5], [1, 3]), ([5, 1], [3, 0]), ([2, 0, 5], [1, 3])]:
        rows, cols = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
        dweight = random_array(rng, len(rows), len(cols), n_taps)
        sgd_update(weight, dweight, momentum_buffer, rows, cols, lr, momentum, weight_decay)
        selected = np.ix_(rows, cols)
        gradient = dweight + weight_decay * expected_weight[selected]
        expected_buffer[selected] = momentum * expected_buffer[selected] + gradient
        expected_weight[selected] -= lr * expected_buffer[selected]
        np.testing.assert_allclose(momentum_buffer, expected_buffer, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(weight, expected_weight, rtol=1e-6, atol=1e-6)
