"""ReLU6 and its bit mask, residual add, global average pool and the channel helpers: hand cases and PyTorch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kernel_references import numerical_gradient, random_array, selection, torch_gradients, unwritten

from tinytrain.kernels.channels import bias_backward, gather_channels
from tinytrain.kernels.pool import _global_avg_pool_backward, _global_avg_pool_forward, global_avg_pool_backward
from tinytrain.kernels.pool import global_avg_pool_forward
from tinytrain.kernels.relu6 import CHUNK, relu6_backward, relu6_forward
from tinytrain.kernels.residual import add_forward


def relu6_input(rng, n):
    """Random values spread over [-3, 9], with the boundaries 0 and 6 hit exactly."""
    x = rng.uniform(-3, 9, n).astype(np.float32)
    x[::5] = 0.0
    x[2::7] = 6.0
    return x


def test_relu6_by_hand():
    x = np.array([-1, 0, 3, 6, 7, 0.5, 5.5, 2, 100], dtype=np.float32)  # 9 elements: the mask needs 2 bytes
    mask = np.full(2, 0xFF, dtype=np.uint8)
    relu6_forward(x, mask, True)
    np.testing.assert_array_equal(x, [0, 0, 3, 6, 6, 0.5, 5.5, 2, 6])
    # Bits 2, 5, 6, 7 of byte 0 (values 3, 0.5, 5.5, 2); nothing of byte 1 (100 is clipped).
    np.testing.assert_array_equal(mask, [0b11100100, 0])
    dx = np.arange(1, 10, dtype=np.float32)
    relu6_backward(dx, mask)
    np.testing.assert_array_equal(dx, [0, 0, 3, 0, 0, 6, 7, 8, 0])


@pytest.mark.parametrize("n", [1, 8, 37, 1000, 3 * CHUNK + 13])  # the last: chunks across the threads
def test_relu6_matches_torch(n):
    rng = np.random.default_rng(10)
    x = relu6_input(rng, n)
    passes = (x > 0) & (x < 6)
    dout = random_array(rng, n)
    # torch.nn.functional.relu6 is hardtanh(0, 6), whose gradient is 0 at exactly 0 and 6 (strict inequalities).
    x_torch = torch.tensor(x, requires_grad=True)
    expected = F.relu6(x_torch)
    expected.backward(torch.tensor(dout))

    mask = np.zeros((n + 7) // 8, dtype=np.uint8)  # exactly ceil(N/8) bytes
    relu6_forward(x, mask, True)
    np.testing.assert_array_equal(x, expected.detach().numpy())
    bits = np.unpackbits(mask, bitorder="little")
    np.testing.assert_array_equal(bits[:n], passes)
    assert not bits[n:].any(), "padding bits of the last byte stay 0"
    dx = dout.copy()
    relu6_backward(dx, mask)
    np.testing.assert_array_equal(dx, x_torch.grad.numpy())


def test_relu6_without_mask():
    rng = np.random.default_rng(11)
    x = relu6_input(rng, 29)
    expected = np.clip(x, 0, 6)
    relu6_forward(x, np.zeros(0, dtype=np.uint8), False)
    np.testing.assert_array_equal(x, expected)


def test_add():
    rng = np.random.default_rng(12)
    a, b = random_array(rng, 23), random_array(rng, 23)
    out = unwritten(23)
    add_forward(out, a, b)
    np.testing.assert_array_equal(out, a + b)


def test_global_avg_pool_by_hand():
    out = unwritten(2)
    global_avg_pool_forward(out, np.array([[1, 2, 3, 6], [-4, 0, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(out, [3, -1])


def test_global_avg_pool_matches_torch():
    rng = np.random.default_rng(13)
    n_channels, height, width = 5, 3, 7
    input, dout = random_array(rng, n_channels, height, width), random_array(rng, n_channels)
    expected_out, expected_dinput = torch_gradients(lambda x: F.adaptive_avg_pool2d(x[None], 1).reshape(-1), dout,
                                                    input)
    flat = input.reshape(n_channels, -1)
    out = unwritten(n_channels)
    global_avg_pool_forward(out, flat)
    np.testing.assert_allclose(out, expected_out, rtol=1e-6, atol=1e-6)

    dinput = unwritten(n_channels, height * width)
    global_avg_pool_backward(dinput, dout, False)
    np.testing.assert_allclose(dinput, expected_dinput.reshape(n_channels, -1), rtol=1e-6, atol=1e-6)
    previous = random_array(rng, n_channels, height * width)
    dinput = previous.copy()
    global_avg_pool_backward(dinput, dout, True)
    np.testing.assert_allclose(dinput, previous + expected_dinput.reshape(n_channels, -1), rtol=1e-6, atol=1e-6)


def test_global_avg_pool_central_differences():
    rng = np.random.default_rng(14)
    input, dout = rng.standard_normal((3, 10)), rng.standard_normal(3)
    out = np.zeros(3)

    def loss():
        _global_avg_pool_forward(out, input)
        return np.sum(out * dout)

    dinput = np.zeros_like(input)
    _global_avg_pool_backward(dinput, dout, False)
    np.testing.assert_allclose(dinput, numerical_gradient(loss, input), rtol=1e-7, atol=1e-7)


def test_gather_channels():
    rng = np.random.default_rng(15)
    input, channels = random_array(rng, 6, 11), selection(rng, 6, 4)
    out = unwritten(4, 11)
    gather_channels(out, input, channels)
    np.testing.assert_array_equal(out, input[channels])


def test_bias_backward_is_dense_slice():
    rng = np.random.default_rng(16)
    dout = random_array(rng, 6, 13)
    dense = unwritten(6)
    bias_backward(dense, dout, np.arange(6))
    np.testing.assert_allclose(dense, dout.astype(np.float64).sum(axis=1), rtol=1e-6, atol=1e-6)
    channels = selection(rng, 6, 3)
    dbias = unwritten(3)
    bias_backward(dbias, dout, channels)
    np.testing.assert_array_equal(dbias, dense[channels])
