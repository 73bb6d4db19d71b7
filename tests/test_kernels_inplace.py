"""Kernels that write over their own input give exactly what their out-of-place twins give."""

import numpy as np
import pytest
from kernel_references import conv_output_size, random_array

from tinytrain.kernels.depthwise import depthwise_backward_input, depthwise_forward
from tinytrain.kernels.depthwise_inplace import (depthwise_backward_input_inplace, depthwise_forward_inplace,
                                                 scratch_shape)
from tinytrain.kernels.pointwise import pointwise_forward
from tinytrain.kernels.pointwise_residual import pointwise_residual_forward

# (stride, C, H, W, pad_top, pad_left); rows of 40 and more reach the vectorised interior loops of rows3x3.py
SHAPES = [(1, 5, 9, 8, 1, 1), (2, 5, 9, 8, 1, 0), (2, 4, 8, 8, 0, 0), (1, 3, 7, 5, 1, 1), (2, 6, 7, 7, 1, 1),
          (1, 3, 6, 43, 1, 1), (2, 3, 7, 66, 0, 0), (2, 2, 6, 45, 1, 1)]


@pytest.mark.parametrize("stride, channels, height, width, pad_top, pad_left", SHAPES)
def test_depthwise_in_place_equals_out_of_place(stride, channels, height, width, pad_top, pad_left):
    rng = np.random.default_rng(stride * 100 + height)
    weight, bias = random_array(rng, channels, 3, 3), random_array(rng, channels)
    out_h = conv_output_size(height, 3, stride, pad_top, 1)
    out_w = conv_output_size(width, 3, stride, pad_left, 1)
    x = random_array(rng, channels, height, width)
    expected = np.empty((channels, out_h, out_w), np.float32)
    depthwise_forward(expected, x, weight, bias, stride, pad_top, pad_left, False)
    buffer = x.reshape(-1).copy()  # (C*H*W,) one arena block: the output is its first C*Ho*Wo floats
    out = buffer[:channels * out_h * out_w].reshape(channels, out_h, out_w)
    scratch = np.empty(scratch_shape(x.shape, out.shape), np.float32)
    assert scratch.shape[0] == (2 if out.shape == x.shape else 1)  # same-size planes run in two parts at once
    depthwise_forward_inplace(out, buffer.reshape(x.shape), scratch, weight, bias, stride, pad_top, pad_left, False)
    np.testing.assert_array_equal(out, expected)
    clipped = np.empty_like(expected)
    depthwise_forward(clipped, 8 * x, weight, bias, stride, pad_top, pad_left, True)
    buffer = 8 * x.reshape(-1)
    out = buffer[:channels * out_h * out_w].reshape(channels, out_h, out_w)
    depthwise_forward_inplace(out, buffer.reshape(x.shape), scratch, weight, bias, stride, pad_top, pad_left, True)
    np.testing.assert_array_equal(out, clipped)

    dout = random_array(rng, channels, out_h, out_w)
    expected_dx = np.empty_like(x)
    depthwise_backward_input(expected_dx, dout, weight, stride, pad_top, pad_left, False)
    buffer = np.empty(x.size, np.float32)
    buffer[:dout.size] = dout.reshape(-1)  # dout sits at the start of the block dx will fill
    depthwise_backward_input_inplace(buffer.reshape(x.shape), buffer[:dout.size].reshape(dout.shape),
                                     np.empty(scratch_shape(dout.shape, x.shape), np.float32), weight, stride,
                                     pad_top, pad_left)
    np.testing.assert_array_equal(buffer.reshape(x.shape), expected_dx)


@pytest.mark.parametrize("blocks", [1, 2, 5])
# blocks of columns; 2 blocks of 100 rows; one pixel (blas.py's pass over the weight's rows, adding into the residual)
@pytest.mark.parametrize("n_out, n_pixels", [(7, 150), (100, 9), (100, 1)])
def test_pointwise_added_into_the_residual_equals_pointwise_then_add(n_out, n_pixels, blocks):
    rng = np.random.default_rng(n_out)
    x, weight, bias = random_array(rng, 5, n_pixels), random_array(rng, n_out, 5), random_array(rng, n_out)
    residual = random_array(rng, n_out, n_pixels)
    product = np.empty((n_out, n_pixels), np.float32)
    pointwise_forward(product, x, weight, bias, 1, False)
    expected = residual + product
    pointwise_residual_forward(residual, x, weight, bias, blocks)
    np.testing.assert_allclose(residual, expected, rtol=1e-6, atol=1e-6)


def test_in_place_in_parts_refuses_planes_of_another_size():
    x = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="the size of the input planes"):
        depthwise_forward_inplace(x[:, :4, :4], x, np.empty((2, 8, 8), np.float32), np.ones((4, 3, 3), np.float32),
                                  np.zeros(4, np.float32), 2, 0, 0, False)
