"""The MSDE detector on pooled embeddings: its pure fit / score and the facade.

:func:`fit_detector` fits a :class:`DetectorState` (a pytree) and a threshold from normal
embeddings for a :class:`~msde_jax.detectors.msde_config.DetectorConfig` (re-exported here);
:func:`score_detector` scores new embeddings under that state and is ``jax.jit``-able (see its
docstring for the exceptions). :class:`MSDEDetector` is the facade over the two
(:class:`~msde_jax.detectors.base.Detector`). A fit pads its rows to a bucketed count
(:func:`fit_rows`), so nearby training sizes share their compiled programs.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax._memory import Lower
from msde_jax._platform import cpu_paths
from msde_jax.core.blocks import bucket_fit_rows, row_keys, sample_keys
from msde_jax.core.density import density_weights
from msde_jax.core.gaussian import GaussianState, gaussian_fit, mahalanobis
from msde_jax.core.mean_shift import choose_neighbors, mean_shift
from msde_jax.core.neighbors import knn
from msde_jax.core.pca import PCAState, pca_fit, pca_transform
from msde_jax.detectors.base import Detector
from msde_jax.detectors.config import check_features, score_chunk
from msde_jax.detectors.fitting import (
    DetectorFit,
    check_groups,
    chunked_scores,
    cross_fit,
    largest_fold,
)
from msde_jax.detectors.msde_config import (
    _FIT_NUMBERS,
    BLOCK_ORDERS,
    MODES,
    NORMALIZATIONS,
    PAPER_PARAMS,
    SCORES,
    THRESHOLDS,
    DetectorConfig,
)
from msde_jax.detectors.msde_state import DetectorState
from msde_jax.detectors.persistence import state_arrays

__all__ = [
    "BLOCK_ORDERS",
    "MODES",
    "NORMALIZATIONS",
    "PAPER_PARAMS",
    "SCORES",
    "THRESHOLDS",
    "DetectorConfig",
    "DetectorState",
    "MSDEDetector",
    "fit_detector",
    "fit_rows",
    "padded",
    "score_batch",
    "score_detector",
    "unpadded",
]


def fit_rows(config: DetectorConfig, n: int) -> int:
    """The rows a fit on ``n`` samples runs on: :func:`~msde_jax.core.blocks.bucket_fit_rows`
    (n) (≤ 1/8 padding), or ``n`` where padding is not supported: the shift's approximate search
    (``neighbors="approximate"``, or ``"auto"`` past 4,096 rows), ``"fuzzy_degree"`` density,
    over 333 neighbours (the published blocks would depend on the padded count), a variance
    fraction as ``n_components``. Transductive batches pad too (:func:`score_batch`)."""
    return bucket_fit_rows(n) if _pads(config, n) else n


def _pads(config: DetectorConfig, n: int) -> bool:
    if not isinstance(config.n_components, int | np.integer):
        return False
    return config.mode == "none" or (
        config.density != "fuzzy_degree"
        and 3 * config.n_neighbors <= 1000
        and choose_neighbors(config.neighbors, n) == "exact"
    )


_ROWS = ("train", "density", "reference", "train_keys")  # one row per training sample


def unpadded(state: DetectorState) -> DetectorState:
    """``state`` without its padding rows (``valid`` ``None``), through the host once."""
    if state.valid is None:
        return state
    n = int(np.sum(np.asarray(state.valid)))  # the padding rows are the last ones
    cut = {name: _host_map(getattr(state, name), lambda a: a[:n]) for name in _ROWS}
    return state._replace(**cut, valid=None)


def padded(state: DetectorState) -> DetectorState:
    """``state`` padded with zero rows to :func:`fit_rows` of its size, as a fit pads it (the
    inverse of :func:`unpadded`): a loaded detector then scores with the programs of a fit of
    its size. As is if already padded, or where a fit does not pad."""
    n = state.train.shape[0]
    if state.valid is not None or not _pads(state.config, n):
        return state
    rows = fit_rows(state.config, n)

    grow = lambda a: np.concatenate([a, np.zeros((rows - n, *a.shape[1:]), a.dtype)])  # noqa: E731
    more = {name: _host_map(getattr(state, name), grow) for name in _ROWS}
    return state._replace(**more, valid=jax.device_put(np.arange(rows) < n))


def _host_map(a: jax.Array | None, fn: Any) -> jax.Array | None:  # no program per shape
    return None if a is None else jax.device_put(fn(np.asarray(a)))


# ---------------------------------------------------------------------- the pipeline
def _density(
    z: jax.Array, order: ArrayLike | None, config: DetectorConfig, n_valid: jax.Array | None = None
) -> jax.Array:
    """Density weights of ``z``; with ``order``, the blocks follow it (content order: the
    rows sorted by their raw content keys). With padding, the first ``n_valid`` rows in
    ``order`` (which puts the padding last) are the real ones; the published block rule on
    the padded count gives the real count's blocks while 3q ≤ 1,000 (:func:`fit_rows`)."""
    common = dict(
        n_neighbors=config.n_neighbors,
        index_sum_quirk=config.index_sum_quirk,
        batch_size=config.batch(z.shape[0]),
        n_valid=n_valid,
    )
    if order is None:
        return density_weights(z, method=config.density, **common)
    w = density_weights(z[order], method=config.density, **common)
    return jnp.zeros_like(w).at[order].set(w)


def _shift_kwargs(
    config: DetectorConfig, n_rows: int, numbers: jax.Array | None = None
) -> dict[str, Any]:
    """The shift's arguments; ``numbers`` (:attr:`DetectorState.shift_numbers`), where given,
    its step size and tolerance as data instead of the config's."""
    step_size, tol = (config.step_size, config.tol) if numbers is None else numbers
    return dict(
        k=config.k,
        step_size=step_size,
        max_iter=config.max_iter,
        tol=tol,
        batch_size=config.batch(n_rows),
    )


@functools.partial(jax.jit, static_argnames=("config", "n_components"))
def _fit_arrays(
    z: jax.Array,
    order: jax.Array | None,
    valid: jax.Array | None,
    numbers: dict[str, jax.Array],
    config: DetectorConfig,
    n_components: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array, PCAState | None, GaussianState | None]:
    """The fit after standardising, as one program: density weights, the MSDE shift, and with
    an int ``n_components`` the PCA and the Gaussian (``None`` for a variance fraction, whose
    component count is read from the spectrum on the host). ``numbers`` holds the traced
    ``step_size``, ``tol`` and ``ridge``; ``config`` (:meth:`DetectorConfig.fit_program`) the
    rest; ``valid`` marks the real rows of a padded ``z`` (:func:`fit_rows`), ``None`` if all are.

    Returns:
        ``(density, reference, n_iter, pca, gaussian)``.
    """
    n = z.shape[0]
    if config.mode == "none":
        w = jnp.ones(n, z.dtype) if valid is None else valid.astype(z.dtype)
        reference, n_iter = z, jnp.zeros((), jnp.int32)
    else:
        n_valid = None if valid is None else jnp.sum(valid)
        w = _density(z, order, config, n_valid)
        traced = {"step_size": numbers["step_size"], "tol": numbers["tol"]}
        shift = {**_shift_kwargs(config, n), **traced}
        shifted = mean_shift(z, w, neighbors=config.neighbors, valid=valid, **shift)
        reference, n_iter = shifted.points, jnp.asarray(shifted.n_iter, jnp.int32)
    if n_components is None:
        return w, reference, n_iter, None, None
    pca = pca_fit(reference, n_components, valid)
    gaussian = _gaussian(pca, reference, config.covariance, numbers["ridge"], valid)
    return w, reference, n_iter, pca, gaussian


def _gaussian(
    pca: PCAState,
    reference: jax.Array,
    covariance: str,
    ridge: float | jax.Array,
    valid: jax.Array | None = None,
) -> GaussianState:
    coords = pca_transform(pca, reference)
    return gaussian_fit(coords, covariance=covariance, ridge=ridge, valid=valid)


def _fold_rows(config: DetectorConfig, n: int) -> int:
    """The cross-fit folds' least fit rows: the padded whole fit's (one program for it and its
    folds) on an accelerator or up to 1,024 rows; else 0, own buckets (README, "Compilation")."""
    rows = fit_rows(config, n)  # no fold pads where the fit does not (an approximate search)
    return rows if _pads(config, n) and (rows <= 1024 or not cpu_paths()) else 0


def _fit_state(
    x: np.ndarray,
    keys: np.ndarray,
    config: DetectorConfig,
    rows: int = 0,
    search: str | None = None,
) -> tuple[DetectorState, int]:
    """Fit on checked raw rows ``x`` with their content ``keys``: the state and the MSDE
    iterations run. Standardising runs on the host (float64 sums: the row order does not change
    the rounding); the rest is one program per padded size, at least ``rows`` (:func:`fit_rows`,
    :func:`_fit_arrays`, :func:`_fold_rows`). ``search``: the blurring shift's neighbour search
    where ``neighbors="auto"`` (``None``: chosen for ``n``): a cross-fit's folds search as the
    whole fit does, so the threshold comes from models of the kind it is applied to."""
    n, d = x.shape
    fit_config = config
    if search is not None and config.neighbors == "auto":
        fit_config = dataclasses.replace(config, neighbors=choose_neighbors(search, n))
    pads = _pads(fit_config, n)  # a padded program even where n fills its bucket
    rows = max(bucket_fit_rows(n), rows) if pads else n
    # no order without a shift: no weight blocks to order (one program for every block order)
    keys = keys if config.content_ordered and config.mode != "none" else None
    if rows > n:  # zero rows: finite throughout
        x = np.concatenate([x, np.zeros((rows - n, d), x.dtype)])
    if config.normalize == "l2":
        x = np.asarray(_l2_normalized(x))
    if config.standardize:
        center = x[:n].mean(axis=0, dtype=np.float64).astype(x.dtype)
        scale = x[:n].std(axis=0, dtype=np.float64).astype(x.dtype)
        # Constant features, as sklearn's StandardScaler; and those whose spread is subnormal
        # (below the dtype's smallest normal number), which XLA flushes to 0: x / 0 = NaN.
        scale[scale < np.finfo(scale.dtype).tiny] = 1.0
    else:
        center, scale = np.zeros(d, x.dtype), np.ones(d, x.dtype)
    z = (x - center) / scale
    z[n:] = 0
    valid = np.arange(rows) < n
    order = None
    if keys is not None:  # the padding rows last
        order = np.concatenate([np.argsort(keys, kind="stable"), np.arange(n, rows)])
    # device_put copies; jnp.asarray of a NumPy array would compile a program per shape
    z, order, valid = jax.device_put((z, order, valid if pads else None))
    nc = config.n_components
    if isinstance(nc, int | np.integer):
        nc = int(min(nc, d, n - 1))
    numbers = {name: np.asarray(getattr(config, name), z.dtype) for name in _FIT_NUMBERS}
    w, reference, n_iter, pca, gaussian = _fit_arrays(
        z,
        order,
        valid,
        numbers,
        fit_config.fit_program(),
        nc if isinstance(nc, int) else None,
    )
    if pca is None:  # a fraction of the variance: its component count is read on the host
        pca = pca_fit(reference, nc)
        gaussian = _gaussian(pca, reference, config.covariance, config.ridge)
    if keys is not None:
        keys = np.concatenate([keys, np.zeros(rows - n, keys.dtype)]).view(np.uint32)
        keys = jax.device_put(keys.reshape(rows, 2))
    state = DetectorState(
        center=jax.device_put(center),
        scale=jax.device_put(scale),
        train=z,
        density=w,
        reference=reference,
        pca=pca,
        gaussian=gaussian,
        train_keys=keys,
        config=config,
        valid=valid,
    )
    return state, int(n_iter)


@jax.jit
def _l2_normalized(x: ArrayLike) -> jax.Array:
    """Rows divided by their Euclidean norm (a zero row stays zero)."""
    x = jnp.asarray(x)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


def score_detector(state: DetectorState, x: ArrayLike) -> jax.Array:
    """Anomaly scores of raw embeddings ``x`` under a fitted ``state``; higher = more anomalous.

    Divides each row by its norm with ``normalize="l2"``, standardises ``x`` with the
    training statistics, shifts it as ``state.config.mode`` says
    (``"inductive"``: toward the fixed shifted training normals; ``"transductive"``: jointly
    with the training normals; ``"none"``: not at all), and returns the Mahalanobis distance
    (not squared) in the training PCA space under the training Gaussian, or the total MSDE
    displacement with ``score="displacement"``. With ``score="knn"`` the standardised query is
    not shifted: the score is its mean Euclidean distance to its ``score_neighbors`` nearest
    rows of ``state.reference`` (the density-enhanced training normals, or the standardised
    normals with ``mode="none"``), by :func:`~msde_jax.core.knn` in row blocks.

    Pure, and ``jax.jit``-able as ``jax.jit(score_detector)(state, x)`` (the config is a
    static part of the state): it recompiles only for a new input shape or config. The
    exception is ``mode="transductive"`` with content-ordered weight blocks (``density="msde"``,
    ``block_order="content"``): it orders the joint rows by a NumPy hash of their values and
    must run eagerly, as must a padded state whose joint rows need the approximate search (it
    drops the padding on the host); :func:`score_batch` scores a transductive batch as one
    compiled program per padded size, whatever the order. No input checks run here;
    :func:`~msde_jax.detectors.config.check_features` is the boundary
    (``check_features(x, dtype=..., n_features=state.center.shape[0])``).

    Args:
        state: a fitted :class:`DetectorState` (from :func:`fit_detector`).
        x: (m, d) embeddings, same features as at fit time, finite.

    Returns:
        (m,) scores.
    """
    config, order = state.config, None
    if config.mode == "transductive":
        joint = state.train.shape[0] + x.shape[0]
        if state.valid is not None and choose_neighbors(config.neighbors, joint) != "exact":
            if isinstance(state.valid, jax.core.Tracer):
                raise ValueError(
                    f"{joint} joint rows need the approximate search, which takes no padding "
                    "rows: score without jax.jit (score_batch), or jit it on unpadded(state)."
                )
            state = unpadded(state)  # the approximate search takes no padding (eager)
        if config.content_ordered:
            order = _joint_order(state, x, None)
    return _score(state, x, order, None)


def _score(
    state: DetectorState, x: ArrayLike, order: ArrayLike | None, queries_valid: ArrayLike | None
) -> jax.Array:
    """:func:`score_detector` with the transductive joint rows' block ``order`` given
    (:func:`_joint_order`, ``None`` for the given order) and, for a padded batch, which rows
    of ``x`` are real (``queries_valid``): jittable in every mode."""
    config = state.config
    x = jnp.asarray(x, state.center.dtype)
    if config.normalize == "l2":
        x = _l2_normalized(x)
    z = (x - state.center[None, :]) / state.scale[None, :]
    if config.score == "knn":
        # Measured from the query as it is: a shift first would hide part of how far it was.
        n_ref = state.reference.shape[0]
        near = knn(
            z,
            state.reference,
            k=config.score_neighbors,
            batch_size=config.batch(n_ref),
            reference_valid=state.valid,
        )
        return jnp.mean(near.distances, axis=-1)
    if config.mode == "none":
        points = z
    elif config.mode == "inductive":
        res = mean_shift(
            z,
            reference=state.reference,
            reference_weights=state.density,
            valid=state.valid,
            **_shift_kwargs(config, state.reference.shape[0], state.shift_numbers),
        )
        points, displacement = res.points, res.displacement
    else:
        points, displacement = _joint_shift(state, z, order, queries_valid)
    if config.score == "displacement":
        return displacement
    return mahalanobis(state.gaussian, pca_transform(state.pca, points))


def _joint_shift(
    state: DetectorState, z: jax.Array, order: ArrayLike | None, queries_valid: ArrayLike | None
) -> tuple[jax.Array, jax.Array]:
    """The transductive shift: the training rows and the standardised batch ``z`` shifted
    together (weights of the joint rows in blocks by position, training rows first, or by
    ``order``); the batch's shifted points and displacements. Padding rows, of the state
    (``state.valid``) or of the batch (``queries_valid``), go last in the blocks, weigh
    nothing and are never neighbours."""
    config = state.config
    n_train = state.train.shape[0]
    joint = jnp.concatenate([state.train, z])
    valid = None
    if state.valid is not None or queries_valid is not None:
        train = jnp.ones(n_train, bool) if state.valid is None else state.valid
        batch = jnp.ones(z.shape[0], bool) if queries_valid is None else queries_valid
        valid = jnp.concatenate([train, jnp.asarray(batch, bool)])
        if order is None:  # the rows' own order, the padding rows last
            order = jnp.argsort(~valid, stable=True)
    n_valid = None if valid is None else jnp.sum(valid)
    res = mean_shift(
        joint,
        _density(joint, order, config, n_valid),
        neighbors=config.neighbors,
        valid=valid,
        **_shift_kwargs(config, joint.shape[0], state.shift_numbers),
    )
    return res.points[n_train:], res.displacement[n_train:]


def _joint_order(state: DetectorState, x: ArrayLike, queries_valid: np.ndarray | None):
    """The content order of the transductive joint rows (training rows, then ``x``): the real
    rows sorted by the content keys (a NumPy hash) of their raw values, then the padding rows.
    (Raw, as the training rows' keys: a normalised row's bytes could differ in the last bit
    between program shapes, and any bit reorders the blocks.)"""
    train_keys = np.asarray(state.train_keys).view(np.uint64).reshape(-1)
    test_keys = row_keys(np.asarray(jax.device_get(x), dtype=state.center.dtype))
    keys = np.concatenate([train_keys, test_keys])
    valid = np.ones(keys.size, bool)
    if state.valid is not None:
        valid[: train_keys.size] = np.asarray(state.valid)
    if queries_valid is not None:
        valid[train_keys.size :] = queries_valid
    real = np.flatnonzero(valid)
    return np.concatenate([real[np.argsort(keys[real], kind="stable")], np.flatnonzero(~valid)])


_score_jitted = jax.jit(_score)


def score_batch(state: DetectorState, x: ArrayLike) -> np.ndarray:
    """:func:`score_detector` of ``x`` as one batch (NumPy scores), one compiled program per
    padded size: in the transductive mode the batch is padded so that the joint rows (the
    state's and the batch's) fill :func:`~msde_jax.core.blocks.bucket_fit_rows` rows, which go
    last in the weight blocks, weigh nothing and are never neighbours (the same scores to
    float32 rounding; batches and cross-fit folds of nearby sizes share the program). Not
    padded (eager for content order) where a fit would not be (:func:`fit_rows`), as when the
    joint rows need the approximate search. The program is keyed by
    :meth:`DetectorState.for_scoring`. Other modes: :func:`chunked_scores`, whose programs
    later scoring shares.
    """
    config = state.config
    if config.mode != "transductive":
        return chunked_scores(score_detector, state, x)
    m, n_train = x.shape[0], state.train.shape[0]
    rows = bucket_fit_rows(n_train + m)
    if not _pads(config, rows):
        return np.asarray(jax.device_get(score_detector(state, x)))
    batch = np.zeros((rows - n_train, x.shape[1]), state.center.dtype)
    batch[:m] = np.asarray(jax.device_get(x))
    valid = np.arange(batch.shape[0]) < m
    order = _joint_order(state, batch, valid) if config.content_ordered else None
    scores = _score_jitted(state.for_scoring(), *jax.device_put((batch, order, valid)))
    return np.asarray(scores)[:m]


def fit_detector(
    x: ArrayLike, config: DetectorConfig, *, groups: ArrayLike | None = None
) -> DetectorFit:
    """Fit the detector on normal embeddings only, and its threshold.

    1. (``normalize="l2"``: divide each row by its norm, then) standardise each feature with
       the training mean and standard deviation;
    2. density weights (``config.density``) and the blurring weighted mean shift of the
       training normals toward their dense regions (MSDE, :func:`~msde_jax.core.mean_shift`);
    3. PCA to ``min(n_components, d, n − 1)`` components of the shifted normals;
    4. a Gaussian in PCA space (``config.covariance``).

    The threshold needs no abnormal images: with ``threshold="cross_fit"`` each training normal
    is scored by a model fitted on the other ``n_folds − 1`` folds (by content order, not row
    order; :func:`~msde_jax.detectors.fitting.cross_fit`); the threshold is the
    ``1 − contamination`` quantile of those out-of-fold scores; with ``"chi2"`` it is the square
    root of the ``1 − contamination`` quantile of χ²(n_components), the law of a squared
    Mahalanobis distance under the Gaussian, and the decision scores are in-sample; with
    ``"none"`` there is neither (the model alone).

    Runs eagerly (NumPy statistics and hashing, a Python loop over folds); its parts are jitted.

    Args:
        x: (n, d) embeddings of normal images (:func:`~msde_jax.detectors.config.check_features`).
        config: the :class:`DetectorConfig`.
        groups: one group id per row (e.g. the volume each slice comes from): with
            ``threshold="cross_fit"`` a group's rows share a fold (:func:`.fitting.folds`).

    Returns:
        :class:`~msde_jax.detectors.fitting.DetectorFit` ``(state, decision_scores,
        threshold, n_iter)``.
    """
    if config.threshold == "chi2" and config.score != "mahalanobis":
        raise ValueError(
            "threshold='chi2' applies to score='mahalanobis' only (the χ² law is that of a "
            "squared Mahalanobis distance); use threshold='cross_fit'."
        )
    x = check_features(x, dtype=config.dtype)
    config.check_n_samples(x.shape[0])
    keys = sample_keys(x)  # hashed once: the content-ordered blocks and the folds use them
    if groups is not None:  # checked even where no fold reads them: a wrong list is a mistake
        check_groups(groups, x.shape[0])
    if config.threshold == "cross_fit":  # copies of one sample share a fold: maybe uneven
        config.check_n_samples(x.shape[0], largest_fold(keys, config.n_folds, groups))
    if config.threshold != "chi2":  # "cross_fit", or "none": the state alone
        independent = config.mode != "transductive"
        return cross_fit(
            x,
            keys,
            config,
            functools.partial(
                _fit_state,
                rows=_fold_rows(config, x.shape[0]),
                search=choose_neighbors(config.neighbors, x.shape[0]),
            ),
            score_detector if independent else score_batch,
            batch_independent=independent,
            groups=groups,
        )
    from scipy.special import chdtri  # the χ² upper quantile; scipy ships with jax

    state, n_iter = _fit_state(x, keys, config)
    scores = score_batch(state, x)
    df = int(state.pca.components.shape[0])
    threshold = float(math.sqrt(chdtri(df, config.contamination)))
    return DetectorFit(state, scores, threshold, n_iter)


# ---------------------------------------------------------------------- the estimator
class MSDEDetector(Detector):
    """One-class anomaly detector: MSDE → PCA → Gaussian → Mahalanobis distance.

    The facade over :func:`fit_detector` and :func:`score_detector` (their docstrings say what
    is computed): the parameters make a :class:`DetectorConfig`, ``fit`` stores the fitted
    :class:`DetectorState` as ``state_`` and learns from normal embeddings only, (n, d) one row
    per image. ``score_samples`` / ``decision_function`` return the Mahalanobis distance (not
    squared) after the ``mode``'s shift, the total displacement with
    ``score="displacement"``, or the kNN distance to the shifted normals with ``score="knn"``.
    **Higher means more anomalous** (PyOD's convention).

    Modes: ``"inductive"`` (default, for deployment) shifts each sample toward the fixed,
    already-shifted training normals, so one image alone gets the same score as in any batch;
    ``"transductive"`` (:meth:`paper`, the published pipeline) shifts the training normals and
    the *whole test batch* jointly, so a score depends on the other images in the batch: state
    the test mix with any number; ``"none"`` scores the standardised embedding without a shift.
    README "Which mode" says what to expect from each.

    The score-time parameters ``score``, ``score_neighbors`` and ``batch_size`` may change
    after ``fit`` (e.g. ``set_params(score="displacement")``); ``threshold_``,
    ``decision_scores_`` and ``labels_`` stay those of the fitted score, so :meth:`predict`
    and :meth:`save` refuse until it is set back or the detector refitted (``batch_size``
    changes no score; :meth:`predict` also takes a ``score_neighbors`` that the score does
    not read, i.e. of any score but ``"knn"``).
    Every other parameter takes effect at the next ``fit``; until then scoring uses its
    fit-time value (in ``state_.config``), and :meth:`save` refuses.
    """

    config_class = DetectorConfig
    state_class = DetectorState
    fit_function = staticmethod(fit_detector)
    score_function = staticmethod(score_detector)
    fitted_scalars = ("n_features_in_", "n_components_", "n_iter_")
    meta_dims = {"d": "n_features_in_", "k": "n_components_"}
    saved_arrays = """
        state.center                          f  d
        state.scale                           f  d
        state.train                           f  n d
        state.density                         f  n
        state.reference                       f  m d
        state.pca.mean                        f  d
        state.pca.components                  f  k d
        state.pca.explained_variance          f  k
        state.pca.explained_variance_ratio    f  k
        state.gaussian.mean                   f  k
        state.gaussian.covariance             f  k k
        state.gaussian.cholesky               f  k k
        state.train_keys                      u4 n 2
    """

    @classmethod
    def paper(cls, **overrides: Any) -> "MSDEDetector":
        """The published medical pipeline (Kar et al., arXiv 2604.19191), exactly.

        Standardise; MSDE of the training normals with the paper's density weights (k = 50,
        η = 0.33, T = 8, θ = 0.01, blocks of consecutive rows); PCA to min(256, d, n − 1);
        unbiased covariance + 1e-4·I; at scoring time the joint (transductive) shift of
        train + test and the Mahalanobis distance of the shifted test rows. Its scores depend
        on the test batch. ``overrides`` change any parameter, e.g. ``index_sum_quirk=True``
        for parity with the authors' code.
        """
        return cls(**{**PAPER_PARAMS, **overrides})

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """The state's arrays without its padding rows (:func:`unpadded`)."""
        return state_arrays(unpadded(self.state_))

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """The saved state, padded again as its fit was (:func:`padded`)."""
        scale = arrays.get("state.scale")  # a missing one is reported with the others
        if scale is not None and np.any(np.asarray(scale) <= 0):  # a fit writes 1 for constants
            raise ValueError(
                "not a valid saved MSDEDetector: 'state.scale' holds values ≤ 0 (features are "
                "divided by it; a fit writes positive scales)."
            )
        super()._restore(meta, arrays)
        config = self.state_.config
        if config.mode == "transductive" and config.content_ordered:
            if self.state_.train_keys is None:  # the joint shift orders its blocks by them
                raise ValueError(
                    "not a saved MSDEDetector: the array 'state.train_keys' is missing (a "
                    "transductive fit with content-ordered blocks saves it)."
                )
        self.state_ = padded(self.state_)

    def _describe(self, state: DetectorState, shape: tuple[int, ...]) -> dict[str, int]:
        n_components = int(state.pca.components.shape[0])
        return {"n_features_in_": int(state.center.shape[0]), "n_components_": n_components}

    def _memory_needed(
        self, shape: tuple[int, ...], state: DetectorState | None = None
    ) -> tuple[dict[str, int], list[Lower]]:
        """Fitting n rows of d features: four float32 copies (checked, standardised, shifted,
        on the device), the PCA's QR factorisation (one more n × d copy; the SVD is then of a
        d × d factor) and the kNN distance blocks of the shift (rows per block × n, with its
        top-k, × 2). Scoring m rows: three copies and the blocks against the reference rows
        (the n training rows, for a chunk of at most ``score_chunk(1)`` rows at a time; n + m,
        all shifted together, in the transductive mode)."""
        if len(shape) != 2 or min(shape) < 1:
            return {}, []
        n, d = shape
        config = self.config() if state is None else state.config
        if state is None:
            reference = n
            needs = {"features": 4 * n * d * 4, "PCA": n * d * 4}
        else:
            reference = int(state.reference.shape[0])
            if config.mode == "transductive":
                reference += n
            needs = {"features": 3 * n * d * 4}
        lower = [Lower("the number of images", n)]
        if config.mode != "none" or (state is not None and config.score == "knn"):
            rows = reference if config.mode == "transductive" or state is None else n
            if state is not None and config.mode != "transductive":
                rows = min(rows, score_chunk(1))  # scored a chunk at a time (chunked_scores)
            block = min(config.batch(reference) or rows, rows)
            needs["kNN distance blocks"] = 2 * block * reference * 4
            if needs["kNN distance blocks"] > needs["features"]:
                lower.insert(0, Lower("the detector's batch_size", block))
        return needs, lower

    def _check_scoring(self, config: DetectorConfig) -> None:
        if config.score == "knn" and (valid := self.state_.valid) is not None:
            config.check_n_samples(int(np.sum(valid)), scoring=True)  # not the padding rows

    def _score_batch(self, state: DetectorState, x: Any) -> np.ndarray:
        return score_batch(state, x)

    def _batch_independent(self, state: DetectorState) -> bool:
        return state.config.mode != "transductive"  # the batch is the answer there
