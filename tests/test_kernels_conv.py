"""Convolution kernels (conv2d, depthwise, pointwise): hand cases, central differences, PyTorch, sparse slices."""

import numba
import numpy as np
import pytest
from kernel_references import (conv_output_size, numerical_gradient, random_array, selection, torch_conv2d,
                               torch_gradients, unwritten)
from numba import njit

from tinytrain.kernels.blas import transposed_product
from tinytrain.kernels.channels import _bias_backward, bias_backward
from tinytrain.kernels.conv2d import (_conv2d_backward_input, _conv2d_backward_weight, _conv2d_forward,
                                      conv2d_backward_input, conv2d_backward_weight, conv2d_forward)
from tinytrain.kernels.depthwise import (_depthwise_backward_input, _depthwise_backward_weight, _depthwise_forward,
                                         depthwise_backward_input, depthwise_backward_weight, depthwise_forward)
from tinytrain.kernels.pointwise import (ALIGNMENT, PARALLEL_MACS, _pointwise_backward_input, _pointwise_backward_weight,
                                         _pointwise_forward, parallel_blocks, pointwise_backward_input,
                                         pointwise_backward_weight, pointwise_forward)
from tinytrain.kernels.relu6 import relu6_forward

# float32 kernels against a float64 reference: sums of a few hundred O(1) products agree to ~1e-5.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)

# (C, K, H, W, kernel (kh, kw), stride, padding (top, left, bottom, right)): odd sizes, stride 2, TF "SAME" on even
# and odd inputs (bottom/right only), symmetric, asymmetric, a non-square kernel, and padding larger than needed.
# 3 x 3 at stride 1 and 2 runs a row at a time: rows of 30 and more outputs reach its vectorised interior loops,
# negative padding is a tile that starts inside the image (patches.py), and 1- or 2-pixel planes have no interior.
CONV_CASES = [
    (3, 4, 8, 8, (3, 3), 2, (0, 0, 1, 1)),
    (3, 5, 7, 9, (3, 3), 2, (1, 1, 1, 1)),
    (2, 3, 5, 6, (3, 2), 1, (1, 0, 2, 1)),
    (4, 2, 9, 7, (5, 5), 2, (2, 2, 2, 2)),
    (1, 3, 4, 5, (1, 1), 1, (0, 0, 0, 0)),
    (2, 2, 6, 6, (3, 3), 2, (0, 1, 2, 0)),
    (3, 4, 12, 66, (3, 3), 2, (0, 0, 1, 1)),
    (2, 3, 11, 67, (3, 3), 2, (1, 1, 1, 1)),
    (2, 3, 9, 41, (3, 3), 1, (1, 1, 1, 1)),
    (2, 2, 10, 44, (3, 3), 1, (-1, -2, 0, -1)),
    (2, 2, 11, 45, (3, 3), 2, (-1, -1, 1, 0)),
    (2, 3, 2, 1, (3, 3), 1, (1, 1, 1, 1)),
    (2, 3, 2, 2, (3, 3), 2, (0, 0, 1, 1)),
]
DEPTHWISE_CASES = [(n_out, height, width, kernel, stride, padding)
                   for _, n_out, height, width, kernel, stride, padding in CONV_CASES]


def check_fused_relu6(forward, shape):
    """`forward(out, clip)` with clip=True gives, bit for bit, its output with clip=False then relu6_forward."""
    plain, clipped = unwritten(*shape), unwritten(*shape)
    forward(plain, False)
    forward(clipped, True)
    assert (plain < 0).any() and (plain > 6).any()  # both bounds are crossed
    relu6_forward(plain.reshape(-1), np.zeros(0, np.uint8), False)
    np.testing.assert_array_equal(clipped, plain)


def output_shape(n_channels, height, width, kernel, stride, padding):
    top, left, bottom, right = padding
    return (n_channels, conv_output_size(height, kernel[0], stride, top, bottom),
            conv_output_size(width, kernel[1], stride, left, right))


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------------------


def test_conv2d_by_hand():
    # input 1..9 on a 3x3 grid; weight [[1, 0], [0, -1]] takes input[y, x] - input[y+1, x+1] = -4 everywhere.
    input = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3)
    weight = np.array([[1, 0], [0, -1]], dtype=np.float32).reshape(1, 1, 2, 2)
    out = unwritten(1, 2, 2)
    conv2d_forward(out, input, weight, np.array([0.5], dtype=np.float32), 1, 0, 0, False)
    np.testing.assert_array_equal(out, np.full((1, 2, 2), -3.5, dtype=np.float32))


def test_depthwise_same_padding_by_hand():
    # TF "SAME", stride 2 on a 4x4 input: pad only bottom/right, so the 3x3 box of ones sees 9, 6, 6, 4 real pixels.
    out = unwritten(1, 2, 2)
    depthwise_forward(out, np.ones((1, 4, 4), np.float32), np.ones((1, 3, 3), np.float32),
                      np.zeros(1, np.float32), 2, 0, 0, False)
    np.testing.assert_array_equal(out[0], [[9, 6], [6, 4]])
    # Backward: each input pixel receives one 1 per output window that covers it.
    dinput = unwritten(1, 4, 4)
    depthwise_backward_input(dinput, np.ones((1, 2, 2), np.float32), np.ones((1, 3, 3), np.float32), 2, 0, 0, False)
    np.testing.assert_array_equal(dinput[0], [[1, 1, 2, 1], [1, 1, 2, 1], [2, 2, 4, 2], [1, 1, 2, 1]])


def test_pointwise_by_hand():
    out = unwritten(2, 3)
    weight = np.array([[1, 2], [3, 4]], dtype=np.float32)
    input = np.array([[1, 0, 2], [0, 1, 1]], dtype=np.float32)
    pointwise_forward(out, input, weight, np.array([10, 20], dtype=np.float32), 1, False)
    np.testing.assert_array_equal(out, [[11, 12, 14], [23, 24, 30]])


# ---------------------------------------------------------------------------------------------------------------------
# Central differences on the plain Python kernels in float64
# ---------------------------------------------------------------------------------------------------------------------
# loss = sum(forward(input, weight, bias) * dout) with a random dout, so d loss / d out = dout and the backward
# kernels applied to dout must give its exact gradients. Convolutions are linear in each argument, so central
# differences are exact up to float64 rounding: a tolerance of 1e-7 leaves room for rounding only.

FINITE_DIFFERENCE_TOLERANCE = dict(rtol=1e-7, atol=1e-7)


def check_convolution_gradients(forward, backward_input, backward_weight, input, weight, bias, dout, *geometry):
    """geometry = (stride, pad_top, pad_left); all arrays float64."""
    out = np.zeros_like(dout)

    def loss():
        forward(out, input, weight, bias, *geometry, False)
        return np.sum(out * dout)

    dinput = np.zeros_like(input)
    backward_input(dinput, dout, weight, *geometry, False)
    dweight = np.zeros_like(weight)
    channels = np.arange(weight.shape[0])  # dense: every output channel, the whole input
    backward_weight(dweight, dout, input, channels, *geometry)
    dbias = np.zeros_like(bias)
    _bias_backward(dbias, dout.reshape(dout.shape[0], -1), channels)

    np.testing.assert_allclose(dinput, numerical_gradient(loss, input), **FINITE_DIFFERENCE_TOLERANCE)
    np.testing.assert_allclose(dweight, numerical_gradient(loss, weight), **FINITE_DIFFERENCE_TOLERANCE)
    np.testing.assert_allclose(dbias, numerical_gradient(loss, bias), **FINITE_DIFFERENCE_TOLERANCE)


@pytest.mark.parametrize("stride, padding", [(1, (1, 1, 1, 1)), (2, (0, 1, 1, 0))])
def test_conv2d_central_differences(stride, padding):
    rng = np.random.default_rng(0)
    n_in, n_out, height, width, kernel = 2, 3, 5, 4, (3, 3)
    dout = rng.standard_normal(output_shape(n_out, height, width, kernel, stride, padding))
    check_convolution_gradients(_conv2d_forward, _conv2d_backward_input, _conv2d_backward_weight,
                                rng.standard_normal((n_in, height, width)), rng.standard_normal((n_out, n_in) + kernel),
                                rng.standard_normal(n_out), dout, stride, padding[0], padding[1])


@pytest.mark.parametrize("stride, padding", [(1, (1, 1, 1, 1)), (2, (0, 0, 1, 1))])
def test_depthwise_central_differences(stride, padding):
    rng = np.random.default_rng(1)
    n_channels, height, width, kernel = 3, 5, 6, (3, 3)
    dout = rng.standard_normal(output_shape(n_channels, height, width, kernel, stride, padding))
    check_convolution_gradients(_depthwise_forward, _depthwise_backward_input, _depthwise_backward_weight,
                                rng.standard_normal((n_channels, height, width)),
                                rng.standard_normal((n_channels,) + kernel), rng.standard_normal(n_channels), dout,
                                stride, padding[0], padding[1])


def test_pointwise_central_differences():
    rng = np.random.default_rng(2)
    n_in, n_out, n_pixels = 3, 4, 5
    input, weight = rng.standard_normal((n_in, n_pixels)), rng.standard_normal((n_out, n_in))
    bias, dout = rng.standard_normal(n_out), rng.standard_normal((n_out, n_pixels))
    out = np.zeros_like(dout)

    def loss():
        _pointwise_forward(out, input, weight, bias, 1, False)
        return np.sum(out * dout)

    dinput, dweight = np.zeros_like(input), np.zeros_like(weight)
    _pointwise_backward_input(dinput, dout, weight, False, 1)
    _pointwise_backward_weight(dweight, dout, input, np.arange(n_out))
    np.testing.assert_allclose(dinput, numerical_gradient(loss, input), **FINITE_DIFFERENCE_TOLERANCE)
    np.testing.assert_allclose(dweight, numerical_gradient(loss, weight), **FINITE_DIFFERENCE_TOLERANCE)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch: forward, input gradient (overwrite and accumulate), dense and selected-channel weight gradients
# ---------------------------------------------------------------------------------------------------------------------


def check_input_gradient(backward_input, expected, rng, *arguments):
    """accumulate=False overwrites whatever dinput held; accumulate=True adds to its content."""
    dinput = unwritten(*expected.shape)
    backward_input(dinput, *arguments, False)
    np.testing.assert_allclose(dinput, expected, **TOLERANCE)
    previous = random_array(rng, *expected.shape)
    dinput = previous.copy()
    backward_input(dinput, *arguments, True)
    np.testing.assert_allclose(dinput, previous + expected, **TOLERANCE)


def check_bias_gradient(dout, expected):
    dbias = unwritten(dout.shape[0])
    bias_backward(dbias, dout.reshape(dout.shape[0], -1), np.arange(dout.shape[0]))
    np.testing.assert_allclose(dbias, expected, **TOLERANCE)


@pytest.mark.parametrize("n_in, n_out, height, width, kernel, stride, padding", CONV_CASES)
def test_conv2d_matches_torch(n_in, n_out, height, width, kernel, stride, padding):
    rng = np.random.default_rng(3)
    input, weight, bias = (random_array(rng, n_in, height, width), random_array(rng, n_out, n_in, *kernel),
                           random_array(rng, n_out))
    dout = random_array(rng, *output_shape(n_out, height, width, kernel, stride, padding))
    expected_out, expected_dinput, expected_dweight, expected_dbias = torch_conv2d(input, weight, bias, dout, stride,
                                                                                   padding)
    top, left = padding[:2]

    out = unwritten(*dout.shape)
    conv2d_forward(out, input, weight, bias, stride, top, left, False)
    np.testing.assert_allclose(out, expected_out, **TOLERANCE)
    check_fused_relu6(lambda out, clip: conv2d_forward(out, 8 * input, weight, bias, stride, top, left, clip),
                      dout.shape)
    check_input_gradient(conv2d_backward_input, expected_dinput, rng, dout, weight, stride, top, left)

    dweight = unwritten(*weight.shape)
    conv2d_backward_weight(dweight, dout, input, np.arange(n_out), stride, top, left)
    np.testing.assert_allclose(dweight, expected_dweight, **TOLERANCE)
    check_bias_gradient(dout, expected_dbias)

    # Selected channels: random output channels and a gathered compact input give the slice of the dense gradient.
    out_channels, in_channels = selection(rng, n_out, max(1, n_out // 2)), selection(rng, n_in, max(1, n_in - 1))
    dweight_selected = unwritten(len(out_channels), len(in_channels), *kernel)
    conv2d_backward_weight(dweight_selected, dout, np.ascontiguousarray(input[in_channels]), out_channels,
                           stride, top, left)
    np.testing.assert_array_equal(dweight_selected, dweight[np.ix_(out_channels, in_channels)])


# A stride-2 patch tile (TF "SAME", nothing padded before) holds the input row and column that its last output's
# third tap reads, except at the image's bottom and right edges: (rows, columns) of a 6 x 49 output, inside, at
# the bottom, at the right and at both. Its output must be the whole plane's bits.
@pytest.mark.parametrize("rows, columns", [((0, 3), (0, 45)), ((0, 3), (44, 49)), ((3, 6), (44, 49)), ((3, 6), (0, 4))])
def test_a_stride_2_tile_gives_the_whole_outputs_bits(rows, columns):
    rng = np.random.default_rng(6)
    input = random_array(rng, 3, 12, 98)
    (top, bottom), (left, right) = rows, columns
    tile = np.ascontiguousarray(input[:, 2 * top:min(2 * bottom + 1, 12), 2 * left:min(2 * right + 1, 98)])
    depthwise_weight, conv_weight = random_array(rng, 3, 3, 3), random_array(rng, 2, 3, 3, 3)
    bias = random_array(rng, 3)
    for forward, weight, channels in ((depthwise_forward, depthwise_weight, 3), (conv2d_forward, conv_weight, 2)):
        whole, part = unwritten(channels, 6, 49), unwritten(channels, bottom - top, right - left)
        forward(whole, input, weight, bias[:channels], 2, 0, 0, False)
        forward(part, tile, weight, bias[:channels], 2, 0, 0, False)
        np.testing.assert_array_equal(part, whole[:, top:bottom, left:right])


@pytest.mark.parametrize("n_channels, height, width, kernel, stride, padding", DEPTHWISE_CASES)
def test_depthwise_matches_torch(n_channels, height, width, kernel, stride, padding):
    rng = np.random.default_rng(4)
    input, weight, bias = (random_array(rng, n_channels, height, width), random_array(rng, n_channels, *kernel),
                           random_array(rng, n_channels))
    dout = random_array(rng, *output_shape(n_channels, height, width, kernel, stride, padding))
    expected_out, expected_dinput, expected_dweight, expected_dbias = torch_conv2d(input, weight[:, None], bias, dout,
                                                                                   stride, padding, groups=n_channels)
    top, left = padding[:2]

    out = unwritten(*dout.shape)
    depthwise_forward(out, input, weight, bias, stride, top, left, False)
    np.testing.assert_allclose(out, expected_out, **TOLERANCE)
    check_fused_relu6(lambda out, clip: depthwise_forward(out, 8 * input, weight, bias, stride, top, left, clip),
                      dout.shape)
    check_input_gradient(depthwise_backward_input, expected_dinput, rng, dout, weight, stride, top, left)

    dweight = unwritten(*weight.shape)
    depthwise_backward_weight(dweight, dout, input, np.arange(n_channels), stride, top, left)
    np.testing.assert_allclose(dweight, expected_dweight[:, 0], **TOLERANCE)
    check_bias_gradient(dout, expected_dbias)

    channels = selection(rng, n_channels, max(1, n_channels - 1))
    dweight_selected = unwritten(len(channels), *kernel)
    depthwise_backward_weight(dweight_selected, dout, np.ascontiguousarray(input[channels]), channels,
                              stride, top, left)
    np.testing.assert_array_equal(dweight_selected, dweight[channels])


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("n_in, n_out, n_pixels", [(3, 5, 1), (7, 4, 37), (16, 24, 49)])
def test_pointwise_matches_torch(n_in, n_out, n_pixels, blocks):
    rng = np.random.default_rng(5)
    input, weight, bias = random_array(rng, n_in, n_pixels), random_array(rng, n_out, n_in), random_array(rng, n_out)
    dout = random_array(rng, n_out, n_pixels)
    expected_out, expected_dinput, expected_dweight, _ = torch_gradients(lambda x, w, b: w @ x + b[:, None], dout,
                                                                         input, weight, bias)

    out = unwritten(n_out, n_pixels)
    pointwise_forward(out, input, weight, bias, blocks, False)
    np.testing.assert_allclose(out, expected_out, **TOLERANCE)
    check_fused_relu6(lambda out, clip: pointwise_forward(out, 8 * input, weight, bias, blocks, clip), out.shape)
    check_input_gradient(lambda dinput, dout, weight, accumulate:
                         pointwise_backward_input(dinput, dout, weight, accumulate, blocks),
                         expected_dinput, rng, dout, weight)

    dweight = unwritten(n_out, n_in)
    pointwise_backward_weight(dweight, dout, input, np.arange(n_out))
    np.testing.assert_allclose(dweight, expected_dweight, **TOLERANCE)


def test_pointwise_selected_weight_gradient_is_dense_slice():
    # Output channels in runs (4, 5, 6), (1), (9), (2, 3) and a random order: each run is one BLAS product.
    rng = np.random.default_rng(6)
    n_in, n_out, n_pixels = 9, 12, 25
    input, dout = random_array(rng, n_in, n_pixels), random_array(rng, n_out, n_pixels)
    dweight = unwritten(n_out, n_in)
    pointwise_backward_weight(dweight, dout, input, np.arange(n_out))
    in_channels = selection(rng, n_in, 5)
    for out_channels in (np.array([4, 5, 6, 1, 9, 2, 3]), selection(rng, n_out, 6), np.array([11])):
        dweight_selected = unwritten(len(out_channels), len(in_channels))
        pointwise_backward_weight(dweight_selected, dout, np.ascontiguousarray(input[in_channels]), out_channels)
        np.testing.assert_allclose(dweight_selected, dweight[np.ix_(out_channels, in_channels)], rtol=1e-6, atol=1e-6)


@njit
def jitted_transposed_product(out, a, b, accumulate):
    transposed_product(out, a, b, accumulate)


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("columns", [slice(3, 80), slice(0, 90, 2), slice(5, 5), slice(7, 8)])
def test_transposed_product_on_views(columns, accumulate):
    # The input gradient's sgemm reads rows a whole row apart: a block of columns of a wider array (rows further apart
    # than its width) goes through BLAS, columns that are not adjacent through the loop, none at all through neither,
    # a single column through the pass over the rows. Only the view is written.
    rng = np.random.default_rng(7)
    weight, dout = random_array(rng, 6, 5), random_array(rng, 6, 90)
    dinput = random_array(rng, 5, 90)
    expected = dinput.astype(np.float64)
    product = weight.T.astype(np.float64) @ dout[:, columns]
    expected[:, columns] = expected[:, columns] + product if accumulate else product
    jitted_transposed_product(dinput[:, columns], weight, dout[:, columns], accumulate)
    np.testing.assert_allclose(dinput, expected, **TOLERANCE)


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("n_in, n_out, n_pixels", [(96, 144, 1024), (24, 16, 4096), (160, 960, 16), (960, 160, 16),
                                                   (320, 1280, 1), (1280, 320, 1)])
def test_pointwise_in_blocks(n_in, n_out, n_pixels, accumulate):
    """A large product runs as one sgemm per block of output rows, or of pixel columns when the rows are few (a
    single pixel as one pass over the weight's rows). Any number of blocks gives the product, and the same bits on one
    thread as on all."""
    rng = np.random.default_rng(8)
    x, weight, bias = random_array(rng, n_in, n_pixels), random_array(rng, n_out, n_in), random_array(rng, n_out)
    dout, start = random_array(rng, n_out, n_pixels), random_array(rng, n_in, n_pixels)
    expected_dinput = (start.astype(np.float64) if accumulate else 0.0) + weight.T.astype(np.float64) @ dout
    for blocks in (1, 2, 3, 5):
        results = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            try:
                out, dinput = unwritten(n_out, n_pixels), start.copy()
                pointwise_forward(out, x, weight, bias, blocks, False)
                pointwise_backward_input(dinput, dout, weight, accumulate, blocks)
            finally:
                numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
            results.append((out, dinput))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        np.testing.assert_allclose(out, weight.astype(np.float64) @ x + bias[:, None], **TOLERANCE)
        np.testing.assert_allclose(dinput, expected_dinput, **TOLERANCE)


def test_large_products_get_a_block_per_core():
    cores = numba.config.NUMBA_DEFAULT_NUM_THREADS
    assert parallel_blocks(PARALLEL_MACS - 1, 1000, 1000) == 1
    assert parallel_blocks(PARALLEL_MACS, 1000, 16) == min(cores, 1000 // ALIGNMENT)
    assert parallel_blocks(PARALLEL_MACS, 16, 4096) == min(cores, 4096 // ALIGNMENT)
    assert parallel_blocks(PARALLEL_MACS, ALIGNMENT, ALIGNMENT) == 1  # neither side has two groups
    assert parallel_blocks(4 * PARALLEL_MACS, 1280, 1) == 1  # a single pixel: one pass over the weight's rows
