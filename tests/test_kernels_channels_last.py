"""The channels-last kernels of patch tiles: against PyTorch, and against the channels-first kernels that whole
layers run, which they must match to the rounding (patches.py's numerics are the layer-by-layer ones)."""

import numpy as np
import pytest
import torch
from kernel_references import conv_output_size, random_array, torch_conv2d, unwritten

from tinytrain.kernels.channels_last import (conv2d_forward_channels_last, depthwise_forward_channels_last,
                                             pointwise_forward_channels_last)
from tinytrain.kernels.conv2d import conv2d_forward
from tinytrain.kernels.depthwise import depthwise_forward
from tinytrain.kernels.pointwise import pointwise_forward

TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # float32 against a float64 reference, as in test_kernels_conv.py

# (C, K, H, W, kernel, stride, padding (top, left, bottom, right)): tiles as patches.py plans them, with the image's
# padding shifted to the tile (negative: the tile starts inside the image), MobileNetV2's geometries whole, a
# tile too small for an interior pixel, and a kernel other than 3x3.
CASES = [
    (3, 32, 31, 29, (3, 3), 2, (0, 0, 0, 0)),
    (3, 32, 33, 33, (3, 3), 2, (0, 0, 1, 1)),
    (16, 16, 15, 13, (3, 3), 1, (1, -1, 1, 1)),
    (16, 16, 13, 13, (3, 3), 2, (0, 0, 0, 0)),
    (24, 24, 9, 11, (3, 3), 2, (-1, 0, 0, 1)),
    (20, 20, 16, 16, (3, 3), 1, (1, 1, 1, 1)),
    (5, 5, 2, 1, (3, 3), 1, (1, 1, 1, 1)),
    (4, 6, 9, 7, (5, 5), 2, (2, 2, 2, 2)),
]


def channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 0, -1))


@pytest.mark.parametrize("case", CASES, ids=[f"case{index}" for index in range(len(CASES))])
@pytest.mark.parametrize("depthwise", [False, True], ids=["conv2d", "depthwise"])
@pytest.mark.parametrize("clip", [False, True], ids=["", "clip"])
def test_tile_convs_match_torch_and_the_channels_first_kernels(case, depthwise, clip):
    n_in, n_out, height, width, (kernel_h, kernel_w), stride, padding = case
    if depthwise:
        n_out = n_in
    rng = np.random.default_rng(hash((case, depthwise)) % 2**32)
    x = 3 * random_array(rng, n_in, height, width)
    weight = random_array(rng, n_out, 1 if depthwise else n_in, kernel_h, kernel_w)
    bias = random_array(rng, n_out)
    top, left, bottom, right = padding
    out_h = conv_output_size(height, kernel_h, stride, top, bottom)
    out_w = conv_output_size(width, kernel_w, stride, left, right)
    expected, *_ = torch_conv2d(x, weight, bias, np.zeros((n_out, out_h, out_w), np.float32), stride, padding,
                                groups=n_in if depthwise else 1)
    if clip:
        expected = np.clip(expected, 0, 6)
    first, last = unwritten(n_out, out_h, out_w), unwritten(out_h, out_w, n_out)
    if depthwise:
        depthwise_forward(first, x, weight[:, 0], bias, stride, top, left, clip)
        depthwise_forward_channels_last(last, channels_last(x), np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0)),
                                        bias, stride, top, left, clip)
    else:
        conv2d_forward(first, x, weight, bias, stride, top, left, clip)
        conv2d_forward_channels_last(last, channels_last(x), np.ascontiguousarray(weight.transpose(1, 2, 3, 0)), bias,
                                     stride, top, left, clip)
    np.testing.assert_allclose(np.moveaxis(last, -1, 0), expected, **TOLERANCE)
    # the same sums in the same order; a kernel size other than 3x3 runs channels first without fused multiply-adds
    np.testing.assert_allclose(np.moveaxis(last, -1, 0), first, rtol=0, atol=1e-6 * np.abs(first).max())


@pytest.mark.parametrize("n_pixels, n_in, n_out, blocks", [(169, 16, 96, 1), (121, 24, 144, 2), (16, 144, 32, 1),
                                                           (1, 8, 4, 1), (100, 7, 5, 2)])
@pytest.mark.parametrize("clip", [False, True], ids=["", "clip"])
def test_tile_pointwise_matches_torch_and_the_channels_first_kernel(n_pixels, n_in, n_out, blocks, clip):
    rng = np.random.default_rng(n_pixels * n_in)
    x, weight, bias = 3 * random_array(rng, n_pixels, n_in), random_array(rng, n_out, n_in), random_array(rng, n_out)
    expected = (torch.from_numpy(x).double() @ torch.from_numpy(weight).double().T
                + torch.from_numpy(bias).double()).numpy()
    if clip:
        expected = np.clip(expected, 0, 6)
    last, first = unwritten(n_pixels, n_out), unwritten(n_out, n_pixels)
    pointwise_forward_channels_last(last, x, weight, bias, blocks, clip)
    pointwise_forward(first, np.ascontiguousarray(x.T), weight, bias, 1, clip)
    np.testing.assert_allclose(last, expected, **TOLERANCE)
    np.testing.assert_allclose(last.T, first, rtol=1e-5, atol=1e-5)

