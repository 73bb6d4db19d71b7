"""Kernel test helpers: random data, PyTorch references (test-only), central differences and allocation counting."""

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from numba.core.runtime import _nrt_python, rtsys


def random_array(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def unwritten(*shape):
    """A float32 buffer of NaN: any entry a kernel reads before writing, or forgets to write, shows up as NaN."""
    return np.full(shape, np.nan, dtype=np.float32)


def conv_output_size(size, kernel, stride, pad_before, pad_after):
    return (size + pad_before + pad_after - kernel) // stride + 1


def selection(rng, n_total, n_selected):
    """n_selected distinct channel indices in random (unsorted) order, int64 as the kernels expect."""
    return rng.choice(n_total, size=n_selected, replace=False).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch references
# ---------------------------------------------------------------------------------------------------------------------


def torch_gradients(function, dout, *arrays):
    """Runs function(*tensors) in torch autograd; returns its output and the gradient of every input for dout."""
    tensors = [torch.tensor(array, dtype=torch.float64, requires_grad=True) for array in arrays]
    out = function(*tensors)
    out.backward(torch.tensor(dout, dtype=torch.float64))
    return [out.detach().numpy()] + [tensor.grad.numpy() for tensor in tensors]


def torch_conv2d(input, weight, bias, dout, stride, padding, groups=1):
    """F.conv2d after an explicit F.pad, so padding = (top, left, bottom, right) may be asymmetric (TF "SAME").

    Returns out, dinput, dweight, dbias computed in float64 (the reference is then exact to float32 precision).
    """
    top, left, bottom, right = padding

    def convolve(x, w, b):
        return F.conv2d(F.pad(x[None], (left, right, top, bottom)), w, b, stride=stride, groups=groups)[0]

    return torch_gradients(convolve, dout, input, weight, bias)


# ---------------------------------------------------------------------------------------------------------------------
# Central differences
# ---------------------------------------------------------------------------------------------------------------------


def numerical_gradient(loss, x, eps=1e-6):
    """d loss() / d x by central differences, (loss(x + eps) - loss(x - eps)) / 2 eps, one entry of x at a time.

    Used on the plain Python kernels with float64 arrays (they are dtype-agnostic), so rounding stays near 1e-10.
    """
    gradient = np.zeros_like(x)
    flat_x, flat_gradient = x.reshape(-1), gradient.reshape(-1)
    for i in range(flat_x.size):
        saved = flat_x[i]
        flat_x[i] = saved + eps
        loss_plus = loss()
        flat_x[i] = saved - eps
        loss_minus = loss()
        flat_x[i] = saved
        flat_gradient[i] = (loss_plus - loss_minus) / (2 * eps)
    return gradient


# ---------------------------------------------------------------------------------------------------------------------
# Allocation counting
# ---------------------------------------------------------------------------------------------------------------------


@njit
def _unbox_only(*args):
    """Does nothing: its NRT allocations are those of passing the arguments in, the baseline of every kernel call."""


def count_allocations(kernel, *args):
    """Numba runtime (NRT) allocations made by one jitted call, beyond those of unboxing its array arguments.

    np.empty/np.zeros, array expressions and copies inside a kernel all go through NRT, so 0 means no hidden
    allocation (BLAS calls through np.dot, which write into `out`, do not allocate either).
    """
    was_enabled = _nrt_python.memsys_stats_enabled()
    _nrt_python.memsys_enable_stats()
    try:
        _unbox_only(*args)
        kernel(*args)  # compile outside the measurement
        before = rtsys.get_allocation_stats().alloc
        _unbox_only(*args)
        baseline = rtsys.get_allocation_stats().alloc - before
        before = rtsys.get_allocation_stats().alloc
        kernel(*args)
        return rtsys.get_allocation_stats().alloc - before - baseline
    finally:
        if not was_enabled:
            _nrt_python.memsys_disable_stats()
