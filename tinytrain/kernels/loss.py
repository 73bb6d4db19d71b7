"""Softmax cross-entropy of one sample's logits (K,) against an integer label: loss, probabilities and dlogits."""

import numpy as np
from numba import njit


def _softmax_cross_entropy_forward(probs, logits, label):
    """probs = softmax(logits); returns loss = -log probs[label] = log sum_k exp(logits_k - m) - (logits_label - m).

    Subtracting m = max_k logits_k keeps every exp() in (0, 1] so nothing overflows (log-sum-exp trick).
    probs (K,), logits (K,).
    """
    highest = logits.max()
    total = 0.0  # float64 accumulator
    for k in range(logits.shape[0]):
        probs[k] = np.exp(logits[k] - highest)
        total += probs[k]
    for k in range(logits.shape[0]):
        probs[k] /= total
    return float(np.log(total) - (logits[label] - highest))


softmax_cross_entropy_forward = njit(cache=True)(_softmax_cross_entropy_forward)


def _softmax_cross_entropy_backward(dlogits, probs, label):
    """dlogits = probs - onehot(label), the gradient of -log softmax(logits)[label]; dlogits, probs (K,)."""
    for k in range(probs.shape[0]):
        dlogits[k] = probs[k]
    dlogits[label] -= 1.0


softmax_cross_entropy_backward = njit(cache=True)(_softmax_cross_entropy_backward)
