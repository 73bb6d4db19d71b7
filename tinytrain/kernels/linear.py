"""Fully connected classifier on (C,) vectors, out = weight @ input + bias: forward, input and weight gradients."""

from numba import njit

# The classifier is tiny (K x C, e.g. 10 x 1280): plain loops are fast enough and read like the formulas.


def _linear_forward(out, input, weight, bias):
    """out[k] = bias[k] + sum_c weight[k, c] * input[c]; out (K,), input (C,), weight (K, C), bias (K,)."""
    n_out, n_in = weight.shape
    for k in range(n_out):
        total = 0.0  # float64 accumulator
        for c in range(n_in):
            total += weight[k, c] * input[c]
        out[k] = bias[k] + total


linear_forward = njit(cache=True)(_linear_forward)


def _linear_backward_input(dinput, dout, weight, accumulate):
    """dinput (= or +=) weight.T @ dout; dinput (C,), dout (K,). Row-wise updates keep the inner loop contiguous."""
    n_out, n_in = weight.shape
    if not accumulate:
        dinput[:] = 0.0
    for k in range(n_out):
        for c in range(n_in):
            dinput[c] += weight[k, c] * dout[k]


linear_backward_input = njit(cache=True)(_linear_backward_input)


def _linear_backward_weight(dweight, dout, input_selected, out_features):
    """dweight[a, b] = dout[out_features[a]] * input_selected[b] (outer product); dweight (n_out, n_in)."""
    n_selected_out, n_selected_in = dweight.shape
    for a in range(n_selected_out):
        d = dout[out_features[a]]
        for b in range(n_selected_in):
            dweight[a, b] = d * input_selected[b]


linear_backward_weight = njit(cache=True)(_linear_backward_weight)
