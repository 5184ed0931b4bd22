"""Metrics for anomaly scores: AUROC, average precision, their curves, and counts at a threshold.

:func:`roc_auc` and :func:`average_precision` are jitted (no data-dependent shapes),
O(n log n), and equal scikit-learn's ``roc_auc_score`` / ``average_precision_score`` including
tied scores. The curves (:func:`roc_curve`, :func:`precision_recall_curve`) have one point per
distinct score, a size known only from the data, so they are NumPy functions run on the host,
as is :func:`evaluation_metrics` (everything a report shows at one threshold, as plain Python
numbers); all three give scikit-learn's values. For anomaly maps, pixel-level AUROC is
:func:`roc_auc` of the flattened masks and maps, and :func:`aupro` is the per-region overlap
of MVTec AD (host-side: connected regions with SciPy).

Labels: non-zero = abnormal (the positive class); a higher score means more anomalous.
"""

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from msde_jax.core.blocks import bucket_rows

__all__ = [
    "check_scores",
    "aupro",
    "average_precision",
    "evaluation_metrics",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
]


def _ranked(labels: ArrayLike, scores: ArrayLike, valid: ArrayLike):
    """Shared set-up, everything in ascending score order.

    Returns the positives mask (sorted; valid positives only), the float dtype, the tie-group
    bounds ``lo`` / ``hi`` (the sorted element k is tied exactly with positions
    ``lo[k]:hi[k]``, i.e. ``lo`` / ``hi`` are ``searchsorted`` left / right of its score) and
    prefix counts of valid positives, valid negatives and valid elements with a leading 0
    (``count(sorted[:k]) = prefix[k]``; integer, hence exact). Invalid (padding) elements
    take part in the sort but in no count.
    """
    scores = jnp.asarray(scores)
    positive = jnp.asarray(labels) != 0
    dtype = jnp.result_type(scores.dtype, jnp.float32)
    n = scores.shape[0]
    sorted_scores, positive, valid = lax.sort((scores, positive, jnp.asarray(valid)), num_keys=1)
    positive = positive & valid
    # Tie groups from neighbour comparisons and running maxima of their boundaries: O(n) after
    # the sort, with no per-element binary search. Each cumulative op adds ~0.1-0.2 s of XLA
    # compile time on CPU, hence one stacked cummax (group starts forwards, group ends
    # backwards) and one stacked cumsum (positives, valid elements; negatives by difference).
    index = jnp.arange(n)
    changes = sorted_scores[1:] != sorted_scores[:-1]
    true = jnp.ones((1,), dtype=bool)
    starts = jnp.concatenate([true, changes])
    ends_reversed = jnp.concatenate([changes, true])[::-1]
    marks = jnp.stack([jnp.where(starts, index, 0), jnp.where(ends_reversed, index, 0)])
    lo, last_from_end = lax.cummax(marks, axis=1)
    hi = n - last_from_end[::-1]
    counts = jnp.cumsum(jnp.stack([positive, valid]), axis=1, dtype=jnp.int32)
    cum_pos, cum_valid = jnp.pad(counts, ((0, 0), (1, 0)))
    return positive, dtype, lo, hi, cum_pos, cum_valid - cum_pos, cum_valid


@jax.jit
def _auc_and_ap(
    labels: ArrayLike, scores: ArrayLike, valid: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Both metrics from one sort, compiled once per (length, dtypes) for both public functions;
    ``valid`` marks the elements that count (the rest pad to a bucketed length).

    Under an outer ``jit`` the half a caller does not use is dead code and is removed.
    """
    positive, dtype, lo, hi, cum_pos, cum_neg, cum_valid = _ranked(labels, scores, valid)
    n = cum_valid[-1]
    n_pos = cum_pos[-1]
    n_neg = n - n_pos
    one_class = (n_pos == 0) | (n_neg == 0)

    neg_below = cum_neg[lo]
    neg_tied = cum_neg[hi] - neg_below
    # Normalise per element before summing: the raw sum of counts can exceed int32 and loses
    # precision in float32 at n ~ 1e5, while each term here is in [0, 1].
    per_positive = (neg_below.astype(dtype) + 0.5 * neg_tied.astype(dtype)) / n_neg.astype(dtype)
    auc = jnp.sum(jnp.where(positive, per_positive, 0)) / n_pos.astype(dtype)

    # Everything scored >= s_k sits at sorted positions lo[k]:n, of which n − cum_valid[lo]
    # count.
    precision = (n_pos - cum_pos[lo]).astype(dtype) / (n - cum_valid[lo]).astype(dtype)
    ap = jnp.sum(jnp.where(positive, precision, 0)) / n_pos.astype(dtype)
    return jnp.where(one_class, jnp.nan, auc), jnp.where(one_class, jnp.nan, ap)


# Sorting 1,024 elements takes microseconds, compiling a program for another length ~0.3 s.
_LEAST_ROWS = 1024


def _metrics(labels: ArrayLike, scores: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """:func:`_auc_and_ap` of all elements. Called with concrete arrays (not under a trace),
    the inputs are padded to :func:`~msde_jax.core.blocks.bucket_rows` elements, at least
    ``_LEAST_ROWS``, so metrics of many lengths (validation kinds, test sets) share a few
    compiled programs, up to 1,024 elements one."""
    tracing = any(isinstance(a, jax.core.Tracer) for a in (labels, scores))
    if tracing or isinstance(scores, jax.Array):
        n = np.shape(scores)[0] if np.ndim(scores) else 0
        if tracing or n == 0 or np.shape(labels) != np.shape(scores):
            return _auc_and_ap(labels, scores, jnp.ones(np.shape(scores), bool))
    else:
        scores = _host_scores(labels, scores)
        n = scores.shape[0]
        if n == 0:
            return _auc_and_ap(labels, scores, np.ones(0, bool))
    size = bucket_rows(n, _LEAST_ROWS)
    valid = np.arange(size) < n
    pad = (0, size - n)
    xp = jnp if isinstance(scores, jax.Array) else np
    scores = xp.pad(xp.asarray(scores), pad)
    labels = np.pad(np.asarray(labels) != 0, pad)
    return _auc_and_ap(labels, scores, valid)


def _host_scores(labels: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """Host scores checked (1-D, as long as the labels, no NaN) and, where the device would
    not keep their order, replaced by their ranks (both metrics depend on the order and the
    ties alone; float32, as most scores are, while it holds them exactly, to 2²⁴): float64
    without x64 (float32 would merge scores closer than it resolves), integers beyond int32
    (JAX would wrap them), and subnormal floats (XLA flushes them to 0)."""
    host = np.asarray(scores)
    if host.ndim != 1 or np.shape(labels) != host.shape:
        raise ValueError(
            f"labels and scores must be 1-D of the same length, got shapes {np.shape(labels)} "
            f"and {host.shape}."
        )
    inexact = jax.dtypes.issubdtype(host.dtype, np.inexact)
    if inexact and np.isnan(host).any():
        raise ValueError(
            f"scores hold {int(np.isnan(host).sum())} NaN of {host.size}: a NaN has no rank; "
            "drop those samples or find why their scores are NaN."
        )
    if inexact:
        tiny = float(np.finfo(host.dtype).tiny) if host.dtype.kind == "f" else 0.0
        ranked = (host.dtype == np.float64 and not jax.config.jax_enable_x64) or bool(
            np.any((host != 0) & (np.abs(host) < tiny))
        )
    else:
        ranked = host.dtype.kind in "iu" and host.dtype.itemsize >= 4 and host.dtype != np.int32
    if ranked:
        ranks = np.unique(host, return_inverse=True)[1].reshape(-1)
        return ranks.astype(np.float32 if host.size <= 1 << 24 else np.int32)
    return host


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> jax.Array:
    """Area under the ROC curve (Mann-Whitney U / (P N)), ties counted as one half.

    ``AUC = (1 / (P N)) sum_{i positive} (#{j negative: s_j < s_i}
    + 0.5 #{j negative: s_j = s_i})``, which equals the trapezoidal area under the ROC curve
    that ``sklearn.metrics.roc_auc_score`` computes, ties included. Jitted (and jit-able):
    one sort, O(n log n).

    Args:
        labels: (n,) bool or 0/1 labels; non-zero = positive (anomalous).
        scores: (n,) scores, higher = more likely positive. Must not contain NaN (NumPy
            scores with NaN raise ``ValueError``; device arrays are not checked, which would
            wait for them).

    Returns:
        A scalar in [0, 1], float32 (float64 for float64 scores with x64 enabled). NumPy scores
        the device would not keep apart are ranked on the host first: float64 without x64
        (float32 would merge scores closer than it resolves), integers beyond int32 (JAX
        would wrap them) and subnormal values (XLA flushes them to 0). NaN when only one class
        is present, or none (scikit-learn raises instead; traced code cannot).

    Raises:
        ValueError: NumPy scores that are not 1-D, not as long as the labels, or hold NaN.
    """
    return _metrics(labels, scores)[0]


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
        A scalar in [0, 1], float32 (float64 for float64 scores with x64 enabled; NumPy scores
        the device would not keep apart are ranked on the host first, and faults raised, as
        for :func:`roc_auc`). NaN when only one class is present, for symmetry with
        :func:`roc_auc` and because a one-class evaluation set is almost always a mistake
        (scikit-learn returns 1.0 for all-positive labels and warns and returns 0.0 for
        all-negative ones).
    """
    return _metrics(labels, scores)[1]


# --------------------------------------------------------------------------------------------
# Curves and threshold metrics (NumPy, host-side)


def check_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as a bool vector (non-zero = abnormal) and scores as float64, validated."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must be 1-D of the same length, got shapes {labels.shape} and "
            f"{scores.shape}."
        )
    if scores.size == 0:
        raise ValueError("labels and scores are empty.")
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values.")
    return labels != 0, scores


def _counts_at_thresholds(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False / true positive counts at every distinct score, in decreasing score order.

    Entry k counts the samples with ``score >= thresholds[k]`` (scikit-learn's
    ``confusion_matrix_at_thresholds``); tied scores form one threshold.
    """
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores = scores[order]
    labels = labels[order]
    distinct = np.flatnonzero(np.diff(scores))
    idx = np.r_[distinct, scores.size - 1]
    tps = np.cumsum(labels, dtype=np.float64)[idx]
    fps = 1.0 + idx - tps
    return fps, tps, scores[idx]


def roc_curve(
    labels: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic, the same points as ``sklearn.metrics.roc_curve``.

    Args:
        labels: (n,) bool or 0/1 labels; non-zero = abnormal (positive).
        scores: (n,) anomaly scores, higher = more anomalous.
        drop_intermediate: drop collinear points that do not change the plotted curve (as
            scikit-learn does by default).

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays in increasing FPR order; point k is the
        rate at ``score >= thresholds[k]``, and the first point (0, 0) has threshold ``inf``.
        FPR (TPR) is NaN throughout when there are no normal (abnormal) samples.
    """
    labels, scores = check_scores(labels, scores)
    fps, tps, thresholds = _counts_at_thresholds(labels, scores)
    if drop_intermediate and fps.size > 2:
        corners = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[corners], tps[corners], thresholds[corners]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def precision_recall_curve(
    labels: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve, the same points as ``sklearn.metrics.precision_recall_curve``.

    Args:
        labels: (n,) bool or 0/1 labels; non-zero = abnormal (positive).
        scores: (n,) anomaly scores, higher = more anomalous.
        drop_intermediate: keep only the first and last point of each run of equal recall
            (scikit-learn's option, off by default there too).

    Returns:
        ``(precision, recall, thresholds)`` in decreasing recall order: precision and recall
        have one more entry than thresholds, the final point (recall 0, precision 1) having no
        threshold; point k is at ``score >= thresholds[k]``. Recall is 1 throughout when there
        are no abnormal samples (as in scikit-learn).
    """
    labels, scores = check_scores(labels, scores)
    fps, tps, thresholds = _counts_at_thresholds(labels, scores)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(tps[:-1]), np.diff(tps[1:])), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def _ratio(num: int, den: int) -> float:
    """``num / den``, 0.0 when the denominator is 0 (scikit-learn's ``zero_division`` value)."""
    return num / den if den else 0.0


def evaluation_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, Any]:
    """Threshold-free ranking metrics and the confusion matrix at one threshold.

    Args:
        labels: (n,) bool or 0/1 labels; non-zero = abnormal (positive).
        scores: (n,) anomaly scores, higher = more anomalous.
        threshold: a sample is predicted abnormal when ``score > threshold``.

    Returns:
        A JSON-serialisable dict of plain Python numbers: ``auroc`` and ``average_precision``
        (:func:`roc_auc`, :func:`average_precision`; NaN when only one class is present), and at
        the threshold ``f1``, ``precision``, ``recall`` (= ``sensitivity``), ``specificity``,
        ``false_positive_rate``, ``accuracy``, the counts ``tp`` / ``fp`` / ``tn`` / ``fn``,
        ``n_normal``, ``n_abnormal`` and ``threshold``. Ratios with a zero denominator are 0.0,
        like scikit-learn's default ``zero_division``.
    """
    positive, scores = check_scores(labels, scores)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN.")
    # In float64, so that rounding to float32 neither creates nor breaks ties and the values
    # equal scikit-learn's to the last digits.
    with jax.enable_x64(True):
        auroc = float(roc_auc(positive, scores))
        ap = float(average_precision(positive, scores))

    predicted = scores > threshold
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "auroc": auroc,
        "average_precision": ap,
        "threshold": threshold,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "false_positive_rate": _ratio(fp, tn + fp),
        "accuracy": _ratio(tp + tn, scores.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_normal": tn + fp,
        "n_abnormal": tp + fn,
    }


def aupro(masks: ArrayLike, maps: ArrayLike, *, max_fpr: float = 0.3, n_steps: int = 200) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    MVTec AD's localisation metric (Bergmann et al., CVPR 2019 / IJCV 2021): every connected
    region of the ground-truth masks (8-connectivity, per image) counts equally, however
    large. At a threshold t, PRO(t) is the mean over regions of the share of the region's
    pixels with ``map ≥ t``, and FPR(t) the share of all pixels outside every region with
    ``map ≥ t``; the curve PRO(FPR) from (0, the regions' share above every normal pixel) to
    FPR ``max_fpr`` is integrated by the trapezoid rule and divided by ``max_fpr`` (a random
    map scores about ``max_fpr / 2``). Thresholds: up to ``n_steps`` normal pixel values, at
    quantiles, each giving the points ``map > t`` and ``map ≥ t``, so that the curve climbs at
    constant FPR through the region values between two thresholds before FPR moves on, as the
    curve over every map value does (with ``n_steps`` at least the number of distinct normal
    values it *is* that curve; fewer thresholds cut across its steps by chords). Tied map
    values (quantised maps, maps set to 0 outside a foreground) make FPR jump: PRO at
    ``max_fpr`` is then interpolated between the operating points on either side, as MVTec's
    evaluation code does.

    Args:
        masks: (n, H, W) ground truth, non-zero = anomalous pixel; at least one region.
        maps: (n, H, W) anomaly maps, higher = more anomalous.
        max_fpr: the FPR limit, in (0, 1].
        n_steps: thresholds on the FPR axis, at least 1.

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: shapes that differ or are not (n, H, W), no region or no normal pixel,
            ``max_fpr`` outside (0, 1], ``n_steps`` not a positive int, or NaN in the maps.
    """
    from scipy import ndimage

    masks, maps = np.asarray(masks) != 0, np.asarray(maps, np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(
            f"masks and maps must be (n, H, W) alike, got {masks.shape} and {maps.shape}."
        )
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}.")
    if np.isnan(maps).any():
        raise ValueError(
            f"maps hold {int(np.isnan(maps).sum())} NaN pixels: a NaN pixel is neither above "
            "nor below a threshold; find why the maps are NaN."
        )
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [np.sort(amap[labelled == r]) for r in range(1, count + 1)]
    normal = np.sort(maps[~masks])
    if not regions or normal.size == 0:
        raise ValueError("aupro needs at least one anomalous region and some normal pixels.")
    # Operating points at thresholds t that are normal values, counting map >= t: up to
    # n_steps of them between FPR 0 and max_fpr, and the next one beyond max_fpr (the largest
    # normal value whose FPR exceeds it), so that PRO at max_fpr is interpolated between real
    # operating points even when tied values make FPR jump past max_fpr.
    n = normal.size
    levels = np.quantile(normal, 1.0 - np.linspace(0.0, max_fpr, n_steps), method="nearest")
    beyond = n - math.floor(max_fpr * n) - 1  # normal[beyond]'s FPR is the first > max_fpr
    thresholds = np.unique(np.r_[levels, normal[beyond]] if beyond >= 0 else levels)[::-1]
    # Two points per threshold t, map > t and then map ≥ t. Between two adjacent normal values
    # FPR stays put while PRO climbs through the region values between them: the curve rises
    # vertically to (FPR(> t), PRO(> t)) before FPR moves on at t (along a diagonal where t
    # is tied). The first point, above every normal value, is (0, PRO(> max)).
    points = []
    for side in ("right", "left"):  # map > t, map ≥ t
        fpr = 1.0 - np.searchsorted(normal, thresholds, side=side) / n
        pro = np.mean(
            [1.0 - np.searchsorted(r, thresholds, side=side) / r.size for r in regions], 0
        )
        points.append((fpr, pro))
    fpr = np.stack([points[0][0], points[1][0]], axis=1).reshape(-1)
    pro = np.stack([points[0][1], points[1][1]], axis=1).reshape(-1)
    keep = fpr <= max_fpr
    last = np.flatnonzero(keep)[-1]  # the point just before the curve passes max_fpr
    end = pro[last]
    if last + 1 < fpr.size:  # PRO at max_fpr, on the segment that crosses it
        step = (max_fpr - fpr[last]) / (fpr[last + 1] - fpr[last])
        end += (pro[last + 1] - pro[last]) * step
    x = np.r_[fpr[keep], max_fpr]
    y = np.r_[pro[keep], end]
    return float(np.trapezoid(y, x) / max_fpr)
