"""Classifier head: linear layer and softmax cross-entropy, against hand cases, central differences and PyTorch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kernel_references import numerical_gradient, random_array, selection, torch_gradients, unwritten

from tinytrain.kernels.linear import (_linear_backward_input, _linear_backward_weight, _linear_forward,
                                      linear_backward_input, linear_backward_weight, linear_forward)
from tinytrain.kernels.loss import (_softmax_cross_entropy_backward, _softmax_cross_entropy_forward,
                                    softmax_cross_entropy_backward, softmax_cross_entropy_forward)

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def test_linear_by_hand():
    out = unwritten(2)
    linear_forward(out, np.array([1, -1, 2], dtype=np.float32), np.array([[1, 2, 3], [0, 1, 0]], dtype=np.float32),
                   np.array([0.5, 1], dtype=np.float32))
    np.testing.assert_array_equal(out, [5.5, 0])


def test_linear_central_differences():
    rng = np.random.default_rng(20)
    input, weight, bias = rng.standard_normal(4), rng.standard_normal((3, 4)), rng.standard_normal(3)
    dout = rng.standard_normal(3)
    out = np.zeros(3)

    def loss():
        _linear_forward(out, input, weight, bias)
        return np.sum(out * dout)

    dinput, dweight = np.zeros_like(input), np.zeros_like(weight)
    _linear_backward_input(dinput, dout, weight, False)
    _linear_backward_weight(dweight, dout, input, np.arange(3))
    np.testing.assert_allclose(dinput, numerical_gradient(loss, input), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(dweight, numerical_gradient(loss, weight), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("n_in, n_out", [(1, 1), (37, 10), (160, 7)])
def test_linear_matches_torch(n_in, n_out):
    rng = np.random.default_rng(21)
    input, weight, bias = random_array(rng, n_in), random_array(rng, n_out, n_in), random_array(rng, n_out)
    dout = random_array(rng, n_out)
    expected_out, expected_dinput, expected_dweight, _ = torch_gradients(F.linear, dout, input, weight, bias)

    out = unwritten(n_out)
    linear_forward(out, input, weight, bias)
    np.testing.assert_allclose(out, expected_out, **TOLERANCE)
    dinput = unwritten(n_in)
    linear_backward_input(dinput, dout, weight, False)
    np.testing.assert_allclose(dinput, expected_dinput, **TOLERANCE)
    previous = random_array(rng, n_in)
    dinput = previous.copy()
    linear_backward_input(dinput, dout, weight, True)
    np.testing.assert_allclose(dinput, previous + expected_dinput, **TOLERANCE)

    dweight = unwritten(n_out, n_in)
    linear_backward_weight(dweight, dout, input, np.arange(n_out))
    np.testing.assert_allclose(dweight, expected_dweight, **TOLERANCE)
    out_features, in_features = selection(rng, n_out, max(1, n_out // 2)), selection(rng, n_in, max(1, n_in // 3))
    dweight_selected = unwritten(len(out_features), len(in_features))
    linear_backward_weight(dweight_selected, dout, np.ascontiguousarray(input[in_features]), out_features)
    np.testing.assert_array_equal(dweight_selected, dweight[np.ix_(out_features, in_features)])


def test_cross_entropy_by_hand():
    # Equal logits: softmax is uniform, loss = log K, dlogits = 1/K - onehot.
    probs = unwritten(4)
    loss = softmax_cross_entropy_forward(probs, np.zeros(4, dtype=np.float32), 2, 0.0)
    assert loss == pytest.approx(np.log(4))
    np.testing.assert_allclose(probs, 0.25)
    dlogits = unwritten(4)
    softmax_cross_entropy_backward(dlogits, probs, 2, 0.0)
    np.testing.assert_allclose(dlogits, [0.25, 0.25, -0.75, 0.25])
    # Smoothing 0.4 over 4 classes: the target is 0.1 everywhere plus 0.6 on the label; uniform probs keep log 4.
    assert softmax_cross_entropy_forward(probs, np.zeros(4, dtype=np.float32), 2, 0.4) == pytest.approx(np.log(4))
    softmax_cross_entropy_backward(dlogits, probs, 2, 0.4)
    np.testing.assert_allclose(dlogits, [0.15, 0.15, -0.45, 0.15])


@pytest.mark.parametrize("scale, label, smoothing", [(1.0, 0, 0.0), (3.0, 9, 0.0), (1000.0, 4, 0.0), (3.0, 9, 0.1),
                                                     (1000.0, 4, 0.2)])
def test_cross_entropy_matches_torch(scale, label, smoothing):
    # scale 1000: exp(logits) would overflow float32 without the max subtraction.
    rng = np.random.default_rng(22)
    logits = (scale * rng.standard_normal(10)).astype(np.float32)
    logits_torch = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    expected = F.cross_entropy(logits_torch[None], torch.tensor([label]), label_smoothing=smoothing)
    expected.backward()

    probs, dlogits = unwritten(10), unwritten(10)
    loss = softmax_cross_entropy_forward(probs, logits, label, smoothing)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(logits_torch, 0).detach().numpy(), **TOLERANCE)
    softmax_cross_entropy_backward(dlogits, probs, label, smoothing)
    np.testing.assert_allclose(dlogits, logits_torch.grad.numpy(), **TOLERANCE)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_cross_entropy_central_differences(smoothing):
    rng = np.random.default_rng(23)
    logits, probs, label = rng.standard_normal(6), np.zeros(6), 3
    dlogits = np.zeros(6)
    _softmax_cross_entropy_forward(probs, logits, label, smoothing)
    _softmax_cross_entropy_backward(dlogits, probs, label, smoothing)
    # Not linear: the central-difference error is O(eps^2) ~ 1e-12, far below the tolerance.
    np.testing.assert_allclose(
        dlogits, numerical_gradient(lambda: _softmax_cross_entropy_forward(probs, logits, label, smoothing), logits),
        rtol=1e-7, atol=1e-8)
