"""Softmax cross-entropy of one sample's logits (K,) against an integer label, optionally label-smoothed (Szegedy et
al. 2016: the target is 1 - smoothing on the label plus smoothing / K on every class): loss, probabilities, dlogits."""

import numpy as np
from numba import njit


def _softmax_cross_entropy_forward(probs, logits, label, smoothing):
    """probs = softmax(logits); returns the loss -sum_k target_k log probs_k, where
    -log probs_k = log sum_j exp(logits_j - m) - (logits_k - m).

    Subtracting m = max_k logits_k keeps every exp() in (0, 1] so nothing overflows (log-sum-exp trick).
    probs (K,), logits (K,).
    """
    classes = logits.shape[0]
    highest = logits.max()
    total = 0.0  # float64 accumulator
    mean_shifted = 0.0  # mean over k of logits_k - m
    for k in range(classes):
        probs[k] = np.exp(logits[k] - highest)
        total += probs[k]
        mean_shifted += (logits[k] - highest) / classes
    for k in range(classes):
        probs[k] /= total
    log_total = np.log(total)
    return float((1.0 - smoothing) * (log_total - (logits[label] - highest)) + smoothing * (log_total - mean_shifted))


softmax_cross_entropy_forward = njit(cache=True)(_softmax_cross_entropy_forward)


def _softmax_cross_entropy_backward(dlogits, probs, label, smoothing):
    """dlogits = probs - target, the gradient of the loss above; dlogits, probs (K,)."""
    classes = probs.shape[0]
    for k in range(classes):
        dlogits[k] = probs[k] - smoothing / classes
    dlogits[label] -= 1.0 - smoothing


softmax_cross_entropy_backward = njit(cache=True)(_softmax_cross_entropy_backward)
