"""Every kernel: the plain Python `_name` and the jitted `name` agree, and the jitted call allocates nothing."""

import copy

import numpy as np
import pytest
from kernel_references import conv_output_size, count_allocations, random_array
from numba.core.dispatcher import Dispatcher

from tinytrain.data.augment import bilinear_taps
from tinytrain.kernels import (channel_check, channels, channels_last, conv2d, depthwise, depthwise_inplace, draw,
                               image, linear, loss, pointwise, pointwise_residual, pool, relu6, residual, resize, sgd)

MODULES = [conv2d, depthwise, depthwise_inplace, pointwise, pointwise_residual, relu6, residual, pool, linear, loss,
           channels, channel_check, draw, resize, sgd, channels_last, image]


def kernel_calls():
    """(id, jitted kernel, arguments) for every kernel and mode, with the shapes and dtypes the graph passes."""
    rng = np.random.default_rng(40)

    def array(*shape):
        return random_array(rng, *shape)

    n_in, n_out, height, width, n_pixels = 3, 4, 9, 8, 72
    # 3x3 stride 2, TF "SAME" on 9x8: pad top/left 1/0, bottom/right 1/1 (implied by the output shape).
    out_h, out_w = conv_output_size(height, 3, 2, 1, 1), conv_output_size(width, 3, 2, 0, 1)
    conv = (2, 1, 0)  # stride, pad_top, pad_left
    some_out, some_in = np.array([3, 0, 1], dtype=np.int64), np.array([2, 0], dtype=np.int64)
    all_out = np.arange(n_out, dtype=np.int64)
    n_mask = 53  # not a multiple of 8
    calls = [
        ("conv2d_forward", conv2d.conv2d_forward,
         (array(n_out, out_h, out_w), array(n_in, height, width), array(n_out, n_in, 3, 3), array(n_out)) + conv
         + (False,)),
        ("conv2d_forward-clip", conv2d.conv2d_forward,
         (array(n_out, out_h, out_w), 8 * array(n_in, height, width), array(n_out, n_in, 3, 3), array(n_out)) + conv
         + (True,)),
        ("depthwise_forward", depthwise.depthwise_forward,
         (array(n_in, out_h, out_w), array(n_in, height, width), array(n_in, 3, 3), array(n_in)) + conv + (False,)),
        ("depthwise_forward-clip", depthwise.depthwise_forward,
         (array(n_in, out_h, out_w), 8 * array(n_in, height, width), array(n_in, 3, 3), array(n_in)) + conv
         + (True,)),
        ("depthwise_forward-5x5", depthwise.depthwise_forward,
         (array(n_in, 4, 3), array(n_in, height, width), array(n_in, 5, 5), array(n_in), 2, 1, 0, False)),
        ("pointwise_forward", pointwise.pointwise_forward,
         (array(n_out, n_pixels), array(n_in, n_pixels), array(n_out, n_in), array(n_out), 1, False)),
        ("pointwise_forward-clip", pointwise.pointwise_forward,
         (array(n_out, n_pixels), 8 * array(n_in, n_pixels), array(n_out, n_in), array(n_out), 1, True)),
        ("pointwise_forward-in-row-blocks", pointwise.pointwise_forward,
         (array(n_out, n_pixels), array(n_in, n_pixels), array(n_out, n_in), array(n_out), 2, False)),
        ("pointwise_forward-in-row-blocks-clip", pointwise.pointwise_forward,
         (array(n_out, n_pixels), 8 * array(n_in, n_pixels), array(n_out, n_in), array(n_out), 2, True)),
        ("linear_forward", linear.linear_forward, (array(n_out), array(n_in), array(n_out, n_in), array(n_out))),
        ("conv2d_backward_weight", conv2d.conv2d_backward_weight,
         (array(3, 2, 3, 3), array(n_out, out_h, out_w), array(2, height, width), some_out) + conv),
        ("depthwise_backward_weight", depthwise.depthwise_backward_weight,
         (array(2, 3, 3), array(n_in, out_h, out_w), array(2, height, width), some_in) + conv),
        ("pointwise_backward_weight", pointwise.pointwise_backward_weight,
         (array(3, 2), array(n_out, n_pixels), array(2, n_pixels), some_out)),
        ("pointwise_backward_weight-dense", pointwise.pointwise_backward_weight,
         (array(n_out, n_in), array(n_out, n_pixels), array(n_in, n_pixels), all_out)),
        ("linear_backward_weight", linear.linear_backward_weight, (array(3, 2), array(n_out), array(2), some_out)),
        ("relu6_forward", relu6.relu6_forward, (8 * array(n_mask), np.zeros(7, np.uint8), True)),
        ("relu6_forward-no-mask", relu6.relu6_forward, (8 * array(n_mask), np.zeros(0, np.uint8), False)),
        ("relu6_backward", relu6.relu6_backward,
         (array(n_mask), rng.integers(0, 256, 7).astype(np.uint8))),
        ("add_forward", residual.add_forward, (array(n_pixels), array(n_pixels), array(n_pixels))),
        ("global_avg_pool_forward", pool.global_avg_pool_forward, (array(n_in), array(n_in, n_pixels))),
        ("softmax_cross_entropy_forward", loss.softmax_cross_entropy_forward, (array(10), array(10), 7, 0.1)),
        ("softmax_cross_entropy_backward", loss.softmax_cross_entropy_backward, (array(10), array(10), 7, 0.1)),
        ("gather_channels", channels.gather_channels, (array(2, n_pixels), array(n_in, n_pixels), some_in)),
        ("bias_backward", channels.bias_backward, (array(3), array(n_out, n_pixels), some_out)),
        ("pointwise_residual_forward", pointwise_residual.pointwise_residual_forward,
         (array(n_out, n_pixels), array(n_in, n_pixels), array(n_out, n_in), array(n_out), 1)),
        ("pointwise_residual_forward-in-blocks", pointwise_residual.pointwise_residual_forward,
         (array(n_out, n_pixels), array(n_in, n_pixels), array(n_out, n_in), array(n_out), 2)),
        # a single pixel: blas.py's passes over the weight's rows instead of sgemm
        ("pointwise_forward-one-pixel", pointwise.pointwise_forward,
         (array(n_out, 1), array(n_in, 1), array(n_out, n_in), array(n_out), 1, True)),
        ("pointwise_residual_forward-one-pixel", pointwise_residual.pointwise_residual_forward,
         (array(n_out, 1), array(n_in, 1), array(n_out, n_in), array(n_out), 1)),
    ]
    # a patch tile, channels last: (h, w, C)
    calls += [
        ("depthwise_forward_channels_last", channels_last.depthwise_forward_channels_last,
         (array(out_h, out_w, n_in), array(height, width, n_in), array(3, 3, n_in), array(n_in)) + conv + (False,)),
        ("depthwise_forward_channels_last-clip", channels_last.depthwise_forward_channels_last,
         (array(out_h, out_w, n_in), 8 * array(height, width, n_in), array(3, 3, n_in), array(n_in)) + conv
         + (True,)),
        ("depthwise_forward_channels_last-5x5", channels_last.depthwise_forward_channels_last,
         (array(4, 3, n_in), array(height, width, n_in), array(5, 5, n_in), array(n_in), 2, 1, 0, False)),
        ("conv2d_forward_channels_last-clip", channels_last.conv2d_forward_channels_last,
         (array(out_h, out_w, n_out), 8 * array(height, width, n_in), array(n_in, 3, 3, n_out), array(n_out)) + conv
         + (True,)),
        ("pointwise_forward_channels_last", channels_last.pointwise_forward_channels_last,
         (array(n_pixels, n_out), array(n_pixels, n_in), array(n_out, n_in), array(n_out), 1, False)),
        ("pointwise_forward_channels_last-in-blocks-clip", channels_last.pointwise_forward_channels_last,
         (array(n_pixels, n_out), 8 * array(n_pixels, n_in), array(n_out, n_in), array(n_out), 2, True)),
        ("normalize_image_forward", image.normalize_image_forward,
         (array(3, height, width), rng.integers(0, 256, (height, width, 3), dtype=np.uint8), array(3), array(3))),
        ("normalize_image_forward-into-a-channels-last-tile", image.normalize_image_forward,
         (array(height, width, 3).transpose(2, 0, 1), rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
          array(3), array(3))),
    ]
    # in place: the output is a view of the input's own buffer, so each call gets one buffer and two views of it
    for stride in (1, 2):
        buffer = array(n_in * height * width)
        small = conv_output_size(height, 3, stride, 1, 1) * conv_output_size(width, 3, stride, 1, 1)
        calls.append((f"depthwise_forward_inplace-{stride}", depthwise_inplace.depthwise_forward_inplace,
                      (buffer[:n_in * small].reshape(n_in, -1, conv_output_size(width, 3, stride, 1, 1)),
                       buffer.reshape(n_in, height, width),
                       array(1 if stride == 2 else 2, height, width),  # scratch: two parts at stride 1
                       array(n_in, 3, 3), array(n_in), stride, 1, 1, stride == 1)))
        buffer = array(n_in * height * width)
        calls.append((f"depthwise_backward_input_inplace-{stride}",
                      depthwise_inplace.depthwise_backward_input_inplace,
                      (buffer.reshape(n_in, height, width),
                       buffer[:n_in * small].reshape(n_in, -1, conv_output_size(width, 3, stride, 1, 1)),
                       array(1 if stride == 2 else 2, conv_output_size(height, 3, stride, 1, 1),
                             conv_output_size(width, 3, stride, 1, 1)),
                       array(n_in, 3, 3), stride, 1, 1)))
    calls += [
        ("first_invalid_channel", channel_check.first_invalid_channel, (some_out, n_out, np.ones(n_out, np.bool_))),
        ("is_every_channel", channel_check.is_every_channel, (all_out, n_out)),
        ("draw_channels", draw.draw_channels,
         (np.zeros(5, np.int64), np.array([0, 2, 5]), np.arange(9, dtype=np.int64), np.array([0, 4, 9]),
          np.zeros(5, np.bool_), np.uint64(3), np.uint64(8))),
    ]
    pixels = rng.integers(0, 256, (height, width, n_in), dtype=np.uint8)
    up, down = bilinear_taps(height, 20), bilinear_taps(width, 5)  # up along H, down along W
    calls += [
        ("resample_rows", resize.resample_rows,
         (np.zeros((20, width * n_in), np.uint8), pixels.reshape(height, -1), up.indices, up.coefficients,
          np.zeros(width * n_in, np.int32))),
        ("resample_columns", resize.resample_columns,
         (np.zeros((height, 5, n_in), np.uint8), pixels, down.indices, down.coefficients,
          np.zeros((5, n_in), np.int32))),
    ]
    for accumulate in (False, True):
        calls += [
            (f"conv2d_backward_input-{accumulate}", conv2d.conv2d_backward_input,
             (array(n_in, height, width), array(n_out, out_h, out_w), array(n_out, n_in, 3, 3)) + conv + (accumulate,)),
            (f"depthwise_backward_input-{accumulate}", depthwise.depthwise_backward_input,
             (array(n_in, height, width), array(n_in, out_h, out_w), array(n_in, 3, 3)) + conv + (accumulate,)),
            (f"pointwise_backward_input-{accumulate}", pointwise.pointwise_backward_input,
             (array(n_in, n_pixels), array(n_out, n_pixels), array(n_out, n_in), accumulate, 1)),
            (f"pointwise_backward_input-one-pixel-{accumulate}", pointwise.pointwise_backward_input,
             (array(n_in, 1), array(n_out, 1), array(n_out, n_in), accumulate, 1)),
            (f"pointwise_backward_input-in-row-blocks-{accumulate}", pointwise.pointwise_backward_input,
             (array(n_in, n_pixels), array(n_out, n_pixels), array(n_out, n_in), accumulate, 2)),
            (f"linear_backward_input-{accumulate}", linear.linear_backward_input,
             (array(n_in), array(n_out), array(n_out, n_in), accumulate)),
            (f"global_avg_pool_backward-{accumulate}", pool.global_avg_pool_backward,
             (array(n_in, n_pixels), array(n_in), accumulate)),
        ]
    for buffer, momentum in [("none", 0.0), ("whole", 0.9)]:
        buffer_shape = {"none": (0, 0, 0), "whole": (n_out, n_in, 9)}[buffer]
        calls.append((f"sgd_update-{buffer}", sgd.sgd_update,
                      (array(n_out, n_in, 9), array(3, 2, 9), array(*buffer_shape), some_out, some_in, 0.1, momentum,
                       1e-4)))
    return calls


CALLS = kernel_calls()


@pytest.mark.parametrize("kernel, arguments", [call[1:] for call in CALLS], ids=[call[0] for call in CALLS])
def test_plain_and_jitted_kernels_agree(kernel, arguments):
    plain_arguments, jitted_arguments = copy.deepcopy(arguments), copy.deepcopy(arguments)
    with np.errstate(over="ignore"):  # draw.py's random numbers wrap around uint64 on purpose
        plain_result = kernel.py_func(*plain_arguments)
    jitted_result = kernel(*jitted_arguments)
    if plain_result is None:
        assert jitted_result is None
    else:
        assert plain_result == pytest.approx(jitted_result, rel=1e-6)
    for plain, jitted in zip(plain_arguments, jitted_arguments):
        np.testing.assert_allclose(jitted, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, arguments", [call[1:] for call in CALLS], ids=[call[0] for call in CALLS])
def test_jitted_kernel_allocates_nothing(kernel, arguments):
    assert count_allocations(kernel, *copy.deepcopy(arguments)) == 0


def test_every_kernel_is_called_above():
    """A new kernel must join kernel_calls(), so that both checks above cover it."""
    for module in MODULES:
        kernels = {name: value for name, value in vars(module).items()
                   if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__}
        for name, kernel in kernels.items():
            assert kernel.py_func is getattr(module, "_" + name), "each kernel is name = njit(...)(_name)"
            assert any(called is kernel for _, called, _ in CALLS), f"{module.__name__}.{name} is not called"
