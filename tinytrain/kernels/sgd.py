"""SGD step (momentum, weight decay) on the selected rows x cols of a (K, C, S) weight; other entries stay untouched."""

from numba import njit, prange


def _sgd_update(weight, dweight, momentum_buffer, rows, cols, lr, momentum, weight_decay):
    """torch.optim.SGD (dampening 0, no Nesterov) restricted to w = weight[rows][:, cols]:

        g = dweight + weight_decay * w;  if momentum: buffer = momentum * buffer + g, g = buffer;  w -= lr * g.

    weight (K, C, S), dweight (n_rows, n_cols, S) compact, rows (n_rows,) and cols (n_cols,) int64.
    momentum_buffer (K, C, S), zero-initialised (so the first step sets buffer = g, as torch does), is indexed like
    the weight, so a channel keeps its own velocity when the selection changes between steps; it may be size 0
    when momentum == 0.
    """
    n_rows, n_cols, n_taps = dweight.shape
    for a in prange(n_rows):
        row = rows[a]
        for b in range(n_cols):
            col = cols[b]
            for s in range(n_taps):
                w = weight[row, col, s]
                g = dweight[a, b, s] + weight_decay * w
                if momentum != 0.0:
                    g = momentum * momentum_buffer[row, col, s] + g
                    momentum_buffer[row, col, s] = g
                weight[row, col, s] = w - lr * g


sgd_update = njit(cache=True, parallel=True)(_sgd_update)
