"""Rank calibration of scores: a score mapped to the tail of the normals' score distribution.

A detector's score is on its own scale (a Mahalanobis distance, a kNN distance, a patch
distance); to combine detectors, :class:`~msde_jax.detectors.fused.FusedDetector` with
``calibration="rank"`` maps each component's score ``s`` through the empirical distribution of
its out-of-fold scores on the training normals, o_(1) ≤ … ≤ o_(n), to a *tail score*

    c(s) = −log p(s),        p(s) = (1 + G(s)) / (n + 1),

where G(s) is the number of out-of-fold scores at or above ``s``, interpolated linearly
between distinct order statistics (G(o_(i)) = #{o ≥ o_(i)}, n − i + 1 without ties, so at an
order statistic p is the usual conformal p-value (1 + #{o ≥ s}) / (n + 1), ties included).
Below o_(1), G = n and c = 0: every score below all normals is equally normal. Beyond o_(n)
the p-value decays exponentially, p(s) = p(o_(n)) · exp(−(s − o_(n)) / β), with β the mean
excess of the top ⌈n/10⌉ scores over the next one (the maximum-likelihood scale of an
exponential tail, as in the peaks-over-threshold method), so c grows linearly there and
anomalies beyond every normal still rank among themselves. c is continuous and non-decreasing
in s, strictly increasing above o_(1) except across tied scores (where the empirical
distribution itself jumps).

Under the null (a new normal's score drawn like the out-of-fold ones) p(s) is a (continuous
version of the) conformal p-value, so c(s) has about the same law for every component and
``c > −log α`` flags about a share α of normals (Vovk et al., *Algorithmic Learning in a Random
World*, 2005; Bates et al., "Testing for outliers with conformal p-values", 2023).

:func:`rank_calibration` fits a :class:`RankCalibration` (a pytree), :func:`tail_scores` maps
scores through it (pure, ``jax.jit``-able, elementwise: one sample scored alone gets its batch
score) and :func:`loo_tail_scores` calibrates the out-of-fold scores themselves, each with the
map of the *other* n − 1 (leave one out): the score of a training normal then has the law of a
new normal's, so a threshold taken as their quantile keeps its false-positive rate (calibrating
a score with a distribution that holds it would rank every training normal one place lower,
at the top of the tail a factor of 2 in p, and let the threshold flag more than promised).
"""

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "CALIBRATIONS",
    "STD_FLOOR",
    "TAIL_FRACTION",
    "FusionStats",
    "RankCalibration",
    "calibrated_scores",
    "fuse_scores",
    "fusion_stats",
    "loo_tail_scores",
    "rank_calibration",
    "tail_scale",
    "tail_score",
    "tail_scores",
    "z_scores",
]

TAIL_FRACTION = 0.1
"""The share of the largest out-of-fold scores the exponential tail's scale β is fitted to."""

# β is at least this · max(|o_(n)|, o_(n) − o_(1)) (1 where both are 0): tied top scores stay
# finite, and scores of any unit get the same tail.
_SCALE_FLOOR = 1e-6


CALIBRATIONS = ("zscore", "rank")

STD_FLOOR = 1e-6
"""σ_j is at least ``STD_FLOOR · max(|μ_j|, 1)``: a component whose out-of-fold scores are
(numerically) constant gets a finite, very large weight instead of a division by zero."""


# ---------------------------------------------------------------------- z-scores
class FusionStats(NamedTuple):
    """Per-component standardisation of scores, as :func:`fusion_stats` fits it (a pytree).

    Attributes:
        mean: ``{name: μ_j}``, the mean of component j's out-of-fold scores.
        std: ``{name: σ_j}``, their standard deviation (``ddof=0``), floored at
            ``STD_FLOOR · max(|μ_j|, 1)``.
    """

    mean: dict[str, Any]
    std: dict[str, Any]


def _checked_components(scores: Mapping[str, ArrayLike], what: str) -> dict[str, np.ndarray]:
    """The components' out-of-fold scores as float64, each checked finite, 1-D, at least 2."""
    if not scores:
        raise ValueError(f"{what} needs at least one component's scores.")
    checked = {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        if s.ndim != 1 or s.size < 2 or not np.isfinite(s).all():
            raise ValueError(
                f"component {name!r}: out-of-fold scores must be a finite 1-D array of at "
                f"least 2 values, got shape {s.shape}."
            )
        checked[name] = s
    return checked


def fusion_stats(scores: Mapping[str, ArrayLike], *, floor: float = STD_FLOOR) -> FusionStats:
    """μ_j and σ_j of each component's out-of-fold training scores (in float64, on the host).

    Args:
        scores: ``{name: (n_j,) scores}``, the components' out-of-fold ``decision_scores_``.
        floor: σ_j is at least ``floor · max(|μ_j|, 1)``.

    Returns:
        :class:`FusionStats` with Python floats, keyed in the order of ``scores``.

    Raises:
        ValueError: no components, or a component's scores are not 1-D, finite, and at least 2.
    """
    mean, std = {}, {}
    for name, s in _checked_components(scores, "fusion").items():
        mu = float(s.mean())
        mean[name] = mu
        std[name] = max(float(s.std()), floor * max(abs(mu), 1.0))
    return FusionStats(mean, std)


def _check_stats_names(scores: Mapping[str, Any], stats: FusionStats) -> None:
    if set(scores) != set(stats.mean):
        raise ValueError(
            f"scores are for components {sorted(scores)}; the stats for {sorted(stats.mean)}."
        )


def z_scores(scores: Mapping[str, ArrayLike], stats: FusionStats) -> dict[str, jax.Array]:
    """Each component's standardised score ``(s_j − μ_j) / σ_j``, keyed in ``stats`` order.

    Args:
        scores: ``{name: (m,) scores}`` with the names of ``stats``.
        stats: from :func:`fusion_stats`.

    Returns:
        ``{name: (m,) z-scores}``.
    """
    _check_stats_names(scores, stats)
    # A product by 1 / σ: a division may round apart in a batch and alone on a CPU.
    return {
        name: (jnp.asarray(scores[name]) - stats.mean[name]) * (1 / stats.std[name])
        for name in stats.mean
    }


# ---------------------------------------------------------------------- rank
class RankCalibration(NamedTuple):
    """Per-component rank calibration, as :func:`rank_calibration` fits it (a pytree).

    Attributes:
        sorted: ``{name: (n,) out-of-fold scores, sorted ascending}``.
        scale: ``{name: β}``, the exponential tail's scale beyond the largest
            (:func:`tail_scale`).
    """

    sorted: dict[str, Any]
    scale: dict[str, Any]


def _tail_size(n: int) -> int:
    """How many of the top scores β is fitted to: ⌈n · TAIL_FRACTION⌉, in [1, n − 1]."""
    return max(1, min(n - 1, math.ceil(n * TAIL_FRACTION)))


def tail_scale(sorted_scores: ArrayLike) -> jax.Array:
    """β: the mean excess of the top m = ⌈n/10⌉ scores over the (m + 1)-th largest.

    The maximum-likelihood scale of an exponential fitted to the excesses over that threshold;
    floored at ``1e-6 · max(|o_(n)|, o_(n) − o_(1))`` (``1e-6`` where both are 0) so tied top
    scores give a steep, finite tail whatever the scores' unit.

    Args:
        sorted_scores: (n,) scores sorted ascending, n >= 2.

    Returns:
        () β > 0.
    """
    o = jnp.asarray(sorted_scores)
    m = _tail_size(o.shape[0])
    beta = jnp.mean(o[-m:] - o[-m - 1])
    unit = jnp.maximum(jnp.abs(o[-1]), o[-1] - o[0])
    return jnp.maximum(beta, _SCALE_FLOOR * jnp.where(unit > 0, unit, 1.0))


def tail_score(s: ArrayLike, sorted_scores: ArrayLike, scale: ArrayLike) -> jax.Array:
    """c(s) = −log p(s) of scores ``s`` against one component's sorted normal scores.

    See the module docstring for p. Elementwise in ``s``, pure and ``jax.jit``-able.

    Args:
        s: (m,) scores (any shape: elementwise).
        sorted_scores: (n,) out-of-fold scores of the training normals, sorted ascending.
        scale: β (:func:`tail_scale` of ``sorted_scores``).

    Returns:
        c(s), the shape of ``s``, >= 0.
    """
    o = jnp.asarray(sorted_scores)
    s = jnp.asarray(s, o.dtype)
    n = o.shape[0]
    # G at o_(i): #{o >= o_(i)}, n - (the first index of o_(i)'s ties), so tied scores share
    # the conformal count (interpolating n - i would give each tie its own)
    index = jnp.arange(n)
    starts = jnp.concatenate([jnp.ones(1, bool), o[1:] != o[:-1]])
    counts = (n - jax.lax.cummax(jnp.where(starts, index, 0))).astype(o.dtype)
    # Interpolated on [0, 1]: jnp.interp takes gaps below ~1e-14 (float32) for zero width, so
    # scores that small would lose their interpolation on their own scale.
    # (A product by 1 / span: a division may round apart in a batch and alone on a CPU.)
    span = o[-1] - o[0]
    inverse = 1 / jnp.where(span > 0, span, jnp.ones((), o.dtype))
    count = jnp.interp((s - o[0]) * inverse, (o - o[0]) * inverse, counts)  # n at o_(1) … 1
    inside = math.log(n + 1) - jnp.log1p(count)
    # p(o_(n)) = (1 + #{o ≥ o_(n)}) / (n + 1), the maximum's ties counted: c is continuous there
    beyond = math.log(n + 1) - jnp.log1p(counts[-1]) + (s - o[-1]) * (1 / scale)
    return jnp.where(s > o[-1], beyond, inside)


def rank_calibration(scores: Mapping[str, ArrayLike]) -> RankCalibration:
    """Each component's sorted out-of-fold scores and tail scale (float64, on the host).

    Args:
        scores: ``{name: (n,) scores}``, the components' out-of-fold ``decision_scores_``.

    Returns:
        :class:`RankCalibration` of NumPy float64 arrays, keyed in the order of ``scores``.

    Raises:
        ValueError: no components, or a component's scores are not 1-D, finite, and at least 2.
    """
    ordered, scale = {}, {}
    for name, s in _checked_components(scores, "calibration").items():
        ordered[name] = np.sort(s)
        scale[name] = _host_tail_scale(ordered[name])
    return RankCalibration(ordered, scale)


def _host_tail_scale(o: np.ndarray) -> np.ndarray:
    m = _tail_size(o.size)
    beta = np.mean(o[-m:] - o[-m - 1])
    unit = max(abs(o[-1]), o[-1] - o[0])
    return np.asarray(max(beta, _SCALE_FLOOR * (unit if unit > 0 else 1.0)), np.float64)


def _check_names(scores: Mapping[str, Any], calibration: RankCalibration) -> None:
    if set(scores) != set(calibration.sorted):
        raise ValueError(
            f"scores are for components {sorted(scores)}; the calibration for "
            f"{sorted(calibration.sorted)}."
        )


def tail_scores(
    scores: Mapping[str, ArrayLike], calibration: RankCalibration
) -> dict[str, jax.Array]:
    """Each component's tail score c_j(s_j) (:func:`tail_score`), keyed in calibration order.

    Args:
        scores: ``{name: (m,) scores}`` with the names of ``calibration``.
        calibration: from :func:`rank_calibration`.

    Returns:
        ``{name: (m,) tail scores}``.
    """
    _check_names(scores, calibration)
    return {
        name: tail_score(scores[name], calibration.sorted[name], calibration.scale[name])
        for name in calibration.sorted
    }


def _loo_one(scores: jax.Array) -> jax.Array:
    """Each of ``scores`` (n,) calibrated against the other n − 1, in the given order."""
    n = scores.shape[0]
    order = jnp.argsort(scores)
    o = scores[order]
    i = jnp.arange(n - 1)

    def at(k: jax.Array) -> jax.Array:
        others = jnp.where(i < k, o[:-1], o[1:])  # o without its k-th, still sorted
        return tail_score(o[k], others, tail_scale(others))

    calibrated = jax.lax.map(at, jnp.arange(n), batch_size=256)
    return jnp.zeros_like(calibrated).at[order].set(calibrated)


def loo_tail_scores(scores: Mapping[str, ArrayLike]) -> dict[str, jax.Array]:
    """The out-of-fold scores' own tail scores, each against the other n − 1 (leave one out).

    Score k of component j gets c_j computed from the calibration of its n − 1 other
    out-of-fold scores, so it is distributed as a new normal's tail score (the module
    docstring says why this keeps the threshold's false-positive promise).

    Args:
        scores: ``{name: (n,) out-of-fold scores}``, 1-D, n >= 3.

    Returns:
        ``{name: (n,) tail scores}`` in the given order.

    Raises:
        ValueError: a component's scores are not 1-D or fewer than 3 (each is calibrated
            against the other n − 1, and a tail scale needs at least 2 of them).
    """
    for name, s in scores.items():
        if np.ndim(s) != 1 or np.shape(s)[0] < 3:
            raise ValueError(
                f"component {name!r}: leave-one-out calibration needs 1-D scores of at least 3 "
                f"samples, got shape {np.shape(s)}."
            )
    return {name: _loo_one(jnp.asarray(s)) for name, s in scores.items()}


# ---------------------------------------------------------------------- fused
def calibrated_scores(
    scores: Mapping[str, ArrayLike], stats: FusionStats | RankCalibration
) -> dict[str, jax.Array]:
    """Each component's calibrated score: its z-score under :class:`FusionStats`
    (:func:`z_scores`), its tail score −log p under a
    :class:`~msde_jax.detectors.calibration.RankCalibration`
    (:func:`~msde_jax.detectors.calibration.tail_scores`)."""
    if isinstance(stats, RankCalibration):
        return tail_scores(scores, stats)
    return z_scores(scores, stats)


def fuse_scores(scores: Mapping[str, ArrayLike], stats: FusionStats | RankCalibration) -> jax.Array:
    """The fused score, the mean of the components' calibrated scores; higher = more anomalous.

    ``(1 / J) Σ_j (s_j − μ_j) / σ_j`` under :class:`FusionStats` (z-scores), ``(1 / J) Σ_j
    c_j(s_j)`` under a :class:`~msde_jax.detectors.calibration.RankCalibration` (tail scores
    −log p_j). Pure, elementwise over samples (a sample scored alone gets its batch score) and
    ``jax.jit``-able (``jax.jit(fuse_scores)(scores, stats)`` with dicts of arrays).

    Args:
        scores: ``{name: (m,) scores}``, one entry per component of ``stats``, each scored on
            the same m samples.
        stats: from :func:`fusion_stats` or
            :func:`~msde_jax.detectors.calibration.rank_calibration`.

    Returns:
        (m,) fused scores.
    """
    z = calibrated_scores(scores, stats)
    return jnp.mean(jnp.stack(list(z.values())), axis=0)
