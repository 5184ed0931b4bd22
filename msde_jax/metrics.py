"""Ranking metrics for anomaly scores: area under the ROC curve and average precision.

Both are jit-able (no data-dependent shapes), O(n log n), and equal to scikit-learn's
``roc_auc_score`` / ``average_precision_score`` including tied scores.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

__all__ = ["average_precision", "roc_auc"]


def _ranked(labels: ArrayLike, scores: ArrayLike):
    """Shared set-up, everything in ascending score order.

    Returns the positives mask (sorted), the float dtype, the tie-group bounds ``lo`` / ``hi``
    (the sorted element k is tied exactly with positions ``lo[k]:hi[k]``, i.e. ``lo`` / ``hi``
    are ``searchsorted`` left / right of its score) and prefix counts of positives and
    negatives with a leading 0 (``count(sorted[:k]) = prefix[k]``; integer, hence exact).
    """
    scores = jnp.asarray(scores)
    positive = jnp.asarray(labels) != 0
    dtype = jnp.result_type(scores.dtype, jnp.float32)
    n = scores.shape[0]
    sorted_scores, positive = lax.sort((scores, positive), num_keys=1)
    # Tie groups from neighbour comparisons and running maxima of their boundaries: O(n) after
    # the sort, with no per-element binary search. Each cumulative op adds ~0.1-0.2 s of XLA
    # compile time on CPU, hence one stacked cummax (group starts forwards, group ends
    # backwards) and one cumsum (negatives = index - positives).
    index = jnp.arange(n)
    changes = sorted_scores[1:] != sorted_scores[:-1]
    true = jnp.ones((1,), dtype=bool)
    starts = jnp.concatenate([true, changes])
    ends_reversed = jnp.concatenate([changes, true])[::-1]
    marks = jnp.stack([jnp.where(starts, index, 0), jnp.where(ends_reversed, index, 0)])
    lo, last_from_end = lax.cummax(marks, axis=1)
    hi = n - last_from_end[::-1]
    cum_pos = jnp.concatenate(
        [jnp.zeros((1,), dtype=jnp.int32), jnp.cumsum(positive, dtype=jnp.int32)]
    )
    cum_neg = jnp.arange(n + 1, dtype=jnp.int32) - cum_pos
    return positive, dtype, lo, hi, cum_pos, cum_neg


@jax.jit
def _auc_and_ap(labels: ArrayLike, scores: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Both metrics from one sort, compiled once per (length, dtypes) for both public functions.

    Under an outer ``jit`` the half a caller does not use is dead code and is removed.
    """
    positive, dtype, lo, hi, cum_pos, cum_neg = _ranked(labels, scores)
    n = positive.shape[0]
    n_pos = jnp.sum(positive)
    n_neg = n - n_pos
    one_class = (n_pos == 0) | (n_neg == 0)

    neg_below = cum_neg[lo]
    neg_tied = cum_neg[hi] - neg_below
    # Normalise per element before summing: the raw sum of counts can exceed int32 and loses
    # precision in float32 at n ~ 1e5, while each term here is in [0, 1].
    per_positive = (neg_below.astype(dtype) + 0.5 * neg_tied.astype(dtype)) / n_neg.astype(dtype)
    auc = jnp.sum(jnp.where(positive, per_positive, 0)) / n_pos.astype(dtype)

    # Everything scored >= s_k sits at sorted positions lo[k]:n.
    precision = (n_pos - cum_pos[lo]).astype(dtype) / (n - lo).astype(dtype)
    ap = jnp.sum(jnp.where(positive, precision, 0)) / n_pos.astype(dtype)
    return jnp.where(one_class, jnp.nan, auc), jnp.where(one_class, jnp.nan, ap)


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> jax.Array:
    """Area under the ROC curve (Mann-Whitney U / (P N)), ties counted as one half.

    ``AUC = (1 / (P N)) sum_{i positive} (#{j negative: s_j < s_i}
    + 0.5 #{j negative: s_j = s_i})``, which equals the trapezoidal area under the ROC curve
    that ``sklearn.metrics.roc_auc_score`` computes, ties included. Jitted (and jit-able):
    one sort, O(n log n).

    Args:
        labels: (n,) bool or 0/1 labels; non-zero = positive (anomalous).
        scores: (n,) scores, higher = more likely positive. Must not contain NaN.

    Returns:
        A scalar in [0, 1] (float32, or float64 for float64 scores). NaN when only one class
        is present (scikit-learn raises instead; traced code cannot).
    """
    return _auc_and_ap(labels, scores)[0]


def average_precision(labels: ArrayLike, scores: ArrayLike) -> jax.Array:
    """Average precision: the mean, over positives, of the precision at that positive's score.

    ``AP = (1 / P) sum_{i positive} #{j positive: s_j >= s_i} / #{j: s_j >= s_i}``. Grouping
    the positives by distinct score gives ``sum_k (R_k - R_{k-1}) P_k`` over thresholds, i.e.
    exactly the step-wise (non-interpolated) ``sklearn.metrics.average_precision_score``,
    ties included. Jitted (and jit-able): one sort, O(n log n).

    Args:
        labels: (n,) bool or 0/1 labels; non-zero = positive (anomalous).
        scores: (n,) scores, higher = more likely positive. Must not contain NaN.

    Returns:
        A scalar in [0, 1] (float32, or float64 for float64 scores). NaN when only one class
        is present, for symmetry with :func:`roc_auc` and because a one-class evaluation set is
        almost always a mistake (scikit-learn returns 1.0 for all-positive labels and warns and
        returns 0.0 for all-negative ones).
    """
    return _auc_and_ap(labels, scores)[1]
