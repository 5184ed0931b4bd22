"""The one-class detector: a pure functional core and the MSDEDetector estimator over it.

:func:`fit_detector` fits a :class:`DetectorState` (a pytree) and a threshold from normal
embeddings for a :class:`DetectorConfig`; :func:`score_detector` scores new embeddings under
that state and is ``jax.jit``-able (see its docstring for the one exception). :class:`MSDEDetector`
is a thin scikit-learn-style facade over the two (keyword-only constructor, ``fit`` returns
``self``, fitted attributes end in ``_``) with PyOD's conventions for anomaly detectors
(``decision_function`` higher = more anomalous, ``decision_scores_``, ``threshold_``,
``labels_``, ``predict`` → 0/1), as scikit-learn wraps its functional cores.
"""

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.core.blocks import content_order, padded_rows, row_keys
from msde_jax.core.density import density_weights
from msde_jax.core.gaussian import GaussianState, gaussian_fit, mahalanobis
from msde_jax.core.mean_shift import mean_shift
from msde_jax.core.neighbors import knn
from msde_jax.core.pca import PCAState, pca_fit, pca_transform
from msde_jax.detectors.base import (
    Detector,
    NotFittedError,
    out_of_fold_scores,
    quantile_threshold,
)
from msde_jax.detectors.config import (
    BLOCK_ORDERS,
    MODES,
    PAPER_PARAMS,
    SCORES,
    THRESHOLDS,
    DetectorConfig,
    check_samples,
)
from msde_jax.detectors.persistence import FORMAT_VERSION, state_from_arrays

__all__ = [
    "BLOCK_ORDERS",
    "FORMAT_VERSION",
    "MODES",
    "SCORES",
    "THRESHOLDS",
    "DetectorConfig",
    "DetectorFit",
    "DetectorState",
    "MSDEDetector",
    "NotFittedError",
    "check_samples",
    "fit_detector",
    "score_detector",
]


class DetectorState(NamedTuple):
    """Everything a fitted detector needs to score, as a pytree of arrays and its config.

    Attributes:
        center: (d,) per-feature mean of the training normals (0 without standardising).
        scale: (d,) per-feature standard deviation (1 for constant features or without
            standardising).
        train: (n, d) standardised training normals, before any shift (the transductive mode
            shifts them again together with each test batch).
        density: (n,) density weights of the training normals (:func:`~msde_jax.density_weights`).
        reference: (n, d) the training normals after MSDE (the inductive mode's fixed reference).
        pca: :class:`~msde_jax.PCAState` fitted on ``reference``.
        gaussian: :class:`~msde_jax.GaussianState` of ``reference`` in PCA space.
        train_keys: (n, 2) uint32, the 64-bit content hash of each raw training row as two
            32-bit words (JAX has no uint64 without x64), with content-ordered weight blocks;
            else ``None``. The transductive mode orders the joint blocks by it.
        config: the :class:`DetectorConfig` it was fitted with (a static pytree node).
    """

    center: jax.Array
    scale: jax.Array
    train: jax.Array
    density: jax.Array
    reference: jax.Array
    pca: PCAState
    gaussian: GaussianState
    train_keys: jax.Array | None
    config: DetectorConfig


class DetectorFit(NamedTuple):
    """Outcome of :func:`fit_detector`.

    Attributes:
        state: the fitted :class:`DetectorState`.
        decision_scores: (n,) scores of the training normals: out-of-fold with
            ``threshold="cross_fit"``, in-sample with ``"chi2"``.
        threshold: the anomaly threshold on the score (a Python float).
        n_iter: MSDE iterations run on the training normals (0 with ``mode="none"``).
    """

    state: DetectorState
    decision_scores: np.ndarray
    threshold: float
    n_iter: int


# ---------------------------------------------------------------------- the pipeline
def _density(z: ArrayLike, keys: np.ndarray | None, config: DetectorConfig) -> jax.Array:
    """Density weights of ``z``; with content order, blocks follow the raw rows' ``keys``."""
    batch = config.batch(z.shape[0])
    if not config.content_ordered:
        return density_weights(
            z,
            method=config.density,
            n_neighbors=config.n_neighbors,
            index_sum_quirk=config.index_sum_quirk,
            batch_size=batch,
        )
    order = np.argsort(keys, kind="stable")
    w = density_weights(
        z[order],
        n_neighbors=config.n_neighbors,
        index_sum_quirk=config.index_sum_quirk,
        batch_size=batch,
    )
    return jnp.zeros_like(w).at[order].set(w)


def _shift_kwargs(config: DetectorConfig, n_rows: int) -> dict[str, Any]:
    return dict(
        k=config.k,
        step_size=config.step_size,
        max_iter=config.max_iter,
        tol=config.tol,
        batch_size=config.batch(n_rows),
    )


def _fit_state(x: np.ndarray, config: DetectorConfig) -> tuple[DetectorState, int]:
    """Fit on checked raw rows ``x``: the state and the MSDE iterations run."""
    n, d = x.shape
    keys = row_keys(x) if config.content_ordered else None
    if config.standardize:
        # float64 sums, so that reordering the rows does not change the rounded result.
        center = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
        scale = x.std(axis=0, dtype=np.float64).astype(x.dtype)
        scale[scale == 0] = 1.0  # constant features, as sklearn's StandardScaler
    else:
        center, scale = np.zeros(d, x.dtype), np.ones(d, x.dtype)
    z = (x - center) / scale
    if config.mode == "none":
        w = jnp.ones(n, z.dtype)
        reference, n_iter = jnp.asarray(z), 0
    else:
        w = _density(z, keys, config)
        shifted = mean_shift(z, w, neighbors=config.neighbors, **_shift_kwargs(config, n))
        reference, n_iter = shifted.points, int(shifted.n_iter)
    nc = config.n_components
    if isinstance(nc, int | np.integer):
        nc = int(min(nc, d, n - 1))
    pca = pca_fit(reference, nc)
    gaussian = gaussian_fit(
        pca_transform(pca, reference), covariance=config.covariance, ridge=config.ridge
    )
    state = DetectorState(
        center=jnp.asarray(center),
        scale=jnp.asarray(scale),
        train=jnp.asarray(z),
        density=w,
        reference=reference,
        pca=pca,
        gaussian=gaussian,
        train_keys=None if keys is None else jnp.asarray(keys.view(np.uint32).reshape(n, 2)),
        config=config,
    )
    return state, n_iter


def score_detector(state: DetectorState, x: ArrayLike) -> jax.Array:
    """Anomaly scores of raw embeddings ``x`` under a fitted ``state``; higher = more anomalous.

    Standardises ``x`` with the training statistics, shifts it as ``state.config.mode`` says
    (``"inductive"``: toward the fixed shifted training normals; ``"transductive"``: jointly
    with the training normals; ``"none"``: not at all), and returns the Mahalanobis distance
    (not squared) in the training PCA space under the training Gaussian, or the total MSDE
    displacement with ``score="displacement"``. With ``score="knn"`` the standardised query is
    not shifted: the score is its mean Euclidean distance to its ``score_neighbors`` nearest
    rows of ``state.reference`` (the density-enhanced training normals, or the standardised
    normals with ``mode="none"``), by :func:`~msde_jax.knn` in row blocks.

    Pure, and ``jax.jit``-able as ``jax.jit(score_detector)(state, x)`` (the config is a
    static part of the state): it recompiles only for a new input shape or config. The
    exception is ``mode="transductive"`` with content-ordered weight blocks (``density="msde"``,
    ``block_order="content"``): it orders the joint rows by a NumPy hash of their values and
    must run eagerly. No input checks run here; :func:`check_samples` is the boundary
    (``check_samples(x, dtype=..., n_features=state.center.shape[0])``).

    Args:
        state: a fitted :class:`DetectorState` (from :func:`fit_detector`).
        x: (m, d) embeddings, same features as at fit time, finite.

    Returns:
        (m,) scores.
    """
    config = state.config
    z = (jnp.asarray(x, state.center.dtype) - state.center[None, :]) / state.scale[None, :]
    if config.score == "knn":
        # Measured from the query as it is: shifting it toward the normals first would
        # discard part of how far away it was.
        n_ref = state.reference.shape[0]
        near = knn(z, state.reference, k=config.score_neighbors, batch_size=config.batch(n_ref))
        return jnp.mean(near.distances, axis=-1)
    if config.mode == "none":
        points = z
    elif config.mode == "inductive":
        res = mean_shift(
            z,
            reference=state.reference,
            reference_weights=state.density,
            **_shift_kwargs(config, state.reference.shape[0]),
        )
        points, displacement = res.points, res.displacement
    else:
        n_train = state.train.shape[0]
        joint = jnp.concatenate([state.train, z])
        joint_keys = None
        if config.content_ordered:
            train_keys = np.asarray(state.train_keys).view(np.uint64).reshape(-1)
            test_keys = row_keys(np.asarray(x, dtype=state.center.dtype))
            joint_keys = np.concatenate([train_keys, test_keys])
        res = mean_shift(
            joint,
            _density(joint, joint_keys, config),
            neighbors=config.neighbors,
            **_shift_kwargs(config, joint.shape[0]),
        )
        points, displacement = res.points[n_train:], res.displacement[n_train:]
    if config.score == "displacement":
        return displacement
    return mahalanobis(state.gaussian, pca_transform(state.pca, points))


def _cross_fit(x: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Out-of-fold scores: each fold (by content order) scored by a fit on the others."""

    def fit_score(rest: np.ndarray, held: np.ndarray) -> jax.Array:
        return score_detector(_fit_state(x[rest], config)[0], x[held])

    return out_of_fold_scores(content_order(x), config.n_folds, fit_score)


def fit_detector(x: ArrayLike, config: DetectorConfig) -> DetectorFit:
    """Fit the detector on normal embeddings only, and its threshold.

    1. standardise each feature with the training mean and standard deviation;
    2. density weights (``config.density``) and the blurring weighted mean shift of the
       training normals toward their dense regions (MSDE, :func:`~msde_jax.core.mean_shift`);
    3. PCA to ``min(n_components, d, n − 1)`` components of the shifted normals;
    4. a Gaussian in PCA space (``config.covariance``).

    The threshold needs no abnormal images: with ``threshold="cross_fit"`` each training normal
    is scored by a model fitted on the other ``n_folds − 1`` folds (folds by content order, so
    they do not depend on the row order) and the threshold is the ``1 − contamination``
    quantile of those out-of-fold scores; with ``"chi2"`` it is the square root of the
    ``1 − contamination`` quantile of χ²(n_components), the law of a squared Mahalanobis
    distance under the Gaussian, and the decision scores are in-sample.

    Runs eagerly (NumPy statistics and hashing, a Python loop over folds); its parts are jitted.

    Args:
        x: (n, d) embeddings of normal images; checked with :func:`check_samples`.
        config: the :class:`DetectorConfig`.

    Returns:
        :class:`DetectorFit` ``(state, decision_scores, threshold, n_iter)``.
    """
    if config.threshold == "chi2" and config.score != "mahalanobis":
        raise ValueError(
            "threshold='chi2' applies to score='mahalanobis' only (the χ² law is that of a "
            "squared Mahalanobis distance); use threshold='cross_fit'."
        )
    x = check_samples(x, dtype=config.dtype)
    config.check_n_samples(x.shape[0])
    state, n_iter = _fit_state(x, config)
    if config.threshold == "cross_fit":
        scores = _cross_fit(x, config)
        threshold = quantile_threshold(scores, config.contamination)
    else:
        from scipy.stats import chi2  # scipy ships with jax

        scores = np.asarray(score_detector(state, x))
        df = int(state.pca.components.shape[0])
        threshold = float(math.sqrt(chi2.ppf(1 - config.contamination, df=df)))
    return DetectorFit(state, scores, threshold, n_iter)


# ---------------------------------------------------------------------- the estimator
class MSDEDetector(Detector):
    """One-class anomaly detector: MSDE → PCA → Gaussian → Mahalanobis distance.

    A scikit-learn-style facade over :func:`fit_detector` and :func:`score_detector`: the
    constructor parameters make a :class:`DetectorConfig`, ``fit`` stores the fitted
    :class:`DetectorState` as ``state_``.

    ``fit`` learns from normal samples only (embeddings, one row each):

    1. standardise each feature with the training mean and standard deviation;
    2. density weights (``density``) and the blurring weighted mean shift of the training
       normals toward their dense regions (MSDE, :func:`~msde_jax.core.mean_shift`);
    3. PCA to ``min(n_components, d, n − 1)`` components of the shifted normals;
    4. a Gaussian in PCA space (``covariance``; the paper's is the unbiased covariance +
       ``ridge``·I).

    ``score_samples`` / ``decision_function`` return the Mahalanobis distance (not squared) of
    each sample, after shifting it according to ``mode``. **Higher means more anomalous** (the
    PyOD convention). scikit-learn's own outlier detectors use the opposite sign in their
    ``score_samples`` (higher = more normal).

    Modes — what a user should expect:

    * ``"inductive"`` (default, for deployment): each test sample moves toward the fixed,
      already-shifted training normals; samples never influence each other, so a score does not
      depend on which other images are scored with it, and one image at a time gives the same
      score as a batch. It pulls a far-away sample most of the way to its nearest normals,
      which discards part of how far away it was: on the data we measured it does not beat
      the plain Gaussian (``mode="none"``; benchmarks/RESULTS.md).
    * ``"transductive"`` (the published pipeline, :meth:`paper`): the training normals and the
      *whole test batch* are shifted jointly, then the test rows are scored. A test batch with
      many abnormal images lets them form their own dense cluster and drift away from the
      normal mode, which is where the paper's gains come from; the same image can get a
      different score in a different batch, and a batch with few abnormal images (or a single
      image) can score worse than the plain Gaussian. State the test mix with any number.
    * ``"none"``: no mean shift; standardise → PCA → Gaussian, a baseline.

    ``score="displacement"`` returns instead the total MSDE displacement of each sample (the
    tabular MSDE paper's score); ``score="knn"`` the mean Euclidean distance from the
    standardised, unshifted sample to its ``score_neighbors`` nearest training normals after
    MSDE (the density-enhanced normals; with ``mode="none"`` the standardised normals
    themselves), an inductive score that keeps how far away a sample is.

    The threshold needs no abnormal images: with ``threshold="cross_fit"`` each training
    normal is scored by a model fitted on the other ``n_folds − 1`` folds, and ``threshold_``
    is the ``1 − contamination`` quantile of those out-of-fold scores (also kept as
    ``decision_scores_``); with ``threshold="chi2"`` it is the square root of the
    ``1 − contamination`` quantile of χ²(n_components), the law of a squared Mahalanobis
    distance under the Gaussian model.

    The score-time parameters ``score``, ``score_neighbors`` and ``batch_size`` may change
    after ``fit``: e.g. ``set_params(score="displacement")`` switches the score without
    refitting. ``threshold_``, ``decision_scores_`` and ``labels_`` stay those of the fitted
    score, so :meth:`predict` refuses until it is set back or the detector refitted
    (``batch_size`` changes no score). Every other parameter takes effect at the next ``fit``;
    until then scoring uses its fit-time value (in ``state_.config``), and :meth:`save`
    refuses.

    Args:
        mode: ``"inductive"``, ``"transductive"`` or ``"none"``.
        k: neighbours in the mean-shift window (50 in the paper).
        step_size: η, fraction of the mean-shift vector applied per iteration (0.33).
        max_iter: T, at most this many mean-shift iterations (8).
        tol: θ, stop once the mean shift length falls below it (0.01).
        density: the density-weight scheme (:func:`~msde_jax.density_weights`): ``"msde"``
            (the paper's block-wise fuzzy-graph weights), ``"fuzzy_degree"`` or ``"uniform"``.
        n_neighbors: q, neighbours of the fuzzy graph behind the density weights (15).
        block_order: ``"content"`` assigns rows to the published weight blocks by a hash of
            their values, so results do not depend on the row order; ``"given"`` uses
            consecutive rows as the published code does (the :meth:`paper` preset).
        index_sum_quirk: reproduce the published code's weight bug (see
            :func:`~msde_jax.density_weights`); for parity checks only.
        n_components: PCA components, capped at ``min(d, n − 1)``; an int, or a float in (0, 1)
            for a fraction of explained variance.
        covariance: ``"ridge"``, ``"empirical"``, ``"ledoit_wolf"`` or ``"oas"``.
        ridge: added to the covariance diagonal with ``covariance="ridge"`` (1e-4).
        standardize: standardise features with the training mean and standard deviation.
        score: ``"mahalanobis"``, ``"displacement"`` or ``"knn"`` (not with
            ``mode="transductive"``).
        score_neighbors: neighbours averaged by ``score="knn"`` (1: the nearest one).
        contamination: expected share of anomalies among normals-like data, in (0, 0.5]; sets
            the threshold quantile.
        threshold: ``"cross_fit"`` or ``"chi2"``.
        n_folds: folds for ``threshold="cross_fit"``.
        batch_size: rows per kNN block; ``None`` picks one (all rows at once up to 1024, else
            blocks of 256).
        neighbors: the neighbour search of the blurring shift (fit, and the transductive
            score): ``"exact"``, ``"approximate"``
            (:func:`~msde_jax.core.approximate_knn.approximate_knn`'s
            tree) or ``"auto"`` (exact up to 4,096 rows; see :func:`~msde_jax.core.mean_shift`).
        dtype: floating dtype of the computation (``"float32"``; ``"float64"`` needs
            ``jax.config.update("jax_enable_x64", True)``).
    """

    _score_params = ("score", "score_neighbors", "batch_size")

    def __init__(
        self,
        *,
        mode: str = "inductive",
        k: int = 50,
        step_size: float = 0.33,
        max_iter: int = 8,
        tol: float = 0.01,
        density: str = "msde",
        n_neighbors: int = 15,
        block_order: str = "content",
        index_sum_quirk: bool = False,
        n_components: int | float = 256,
        covariance: str = "ridge",
        ridge: float = 1e-4,
        standardize: bool = True,
        score: str = "mahalanobis",
        score_neighbors: int = 1,
        contamination: float = 0.05,
        threshold: str = "cross_fit",
        n_folds: int = 5,
        batch_size: int | None = None,
        neighbors: str = "auto",
        dtype: str = "float32",
    ):
        self.mode = mode
        self.k = k
        self.step_size = step_size
        self.max_iter = max_iter
        self.tol = tol
        self.density = density
        self.n_neighbors = n_neighbors
        self.block_order = block_order
        self.index_sum_quirk = index_sum_quirk
        self.n_components = n_components
        self.covariance = covariance
        self.ridge = ridge
        self.standardize = standardize
        self.score = score
        self.score_neighbors = score_neighbors
        self.contamination = contamination
        self.threshold = threshold
        self.n_folds = n_folds
        self.batch_size = batch_size
        self.neighbors = neighbors
        self.dtype = dtype

    # ------------------------------------------------------------------ presets and params
    @classmethod
    def paper(cls, **overrides: Any) -> "MSDEDetector":
        """The published medical pipeline (Kar et al., arXiv 2604.19191), exactly.

        Standardise; MSDE of the training normals with the paper's density weights (k = 50,
        η = 0.33, T = 8, θ = 0.01, blocks of consecutive rows); PCA to min(256, d, n − 1);
        unbiased covariance + 1e-4·I; at scoring time the joint (transductive) shift of
        train + test and the Mahalanobis distance of the shifted test rows. Its scores depend
        on the test batch (see the class docstring). ``overrides`` change any parameter, e.g.
        ``index_sum_quirk=True`` for parity with the authors' code.
        """
        return cls(**{**PAPER_PARAMS, **overrides})

    def _config(self) -> DetectorConfig:
        return DetectorConfig(**self.get_params())

    # ------------------------------------------------------------------ public API
    def fit(self, X: ArrayLike, y: Any = None) -> "MSDEDetector":
        """Fit on normal samples only (:func:`fit_detector`).

        Args:
            X: (n, d) embeddings of normal images; float, no NaN or inf.
            y: ignored (scikit-learn API compatibility).

        Returns:
            ``self``, with ``state_``, ``n_features_in_``, ``n_components_``, ``n_iter_``,
            ``decision_scores_``, ``threshold_`` and ``labels_`` set.
        """
        del y
        result = fit_detector(X, self._config())
        self.state_ = result.state
        self.n_features_in_ = int(result.state.center.shape[0])
        self.n_components_ = int(result.state.pca.components.shape[0])
        self.n_iter_ = result.n_iter
        self._set_scores(result.decision_scores, result.threshold)
        return self

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Anomaly score of each sample; **higher = more anomalous** (PyOD's convention).

        The Mahalanobis distance (not squared) in the training PCA space after the ``mode``'s
        shift, the total displacement with ``score="displacement"``, or the mean distance to
        the ``score_neighbors`` nearest (shifted) training normals with ``score="knn"``
        (:func:`score_detector`), under the fitted state's config with the current
        score-time parameters. scikit-learn's outlier detectors return the opposite sign from
        their ``score_samples``.

        Args:
            X: (m, d) embeddings, same features as at fit time.

        Returns:
            (m,) float scores.
        """
        self._check_fitted()
        config = DetectorConfig(**self._scoring_params())
        x = check_samples(X, dtype=config.dtype, n_features=self.n_features_in_)
        state = self.state_._replace(config=config)
        if config.mode == "transductive":  # the batch is part of the answer: no padding
            return np.asarray(score_detector(state, x))
        return padded_rows(partial(score_detector, state), x)

    # ------------------------------------------------------------------ persistence
    def _fitted_meta(self) -> dict[str, Any]:
        return {
            "n_features_in_": self.n_features_in_,
            "n_components_": self.n_components_,
            "n_iter_": self.n_iter_,
        }

    _meta_dims = {"d": "n_features_in_", "k": "n_components_"}
    _array_schema = {
        "state.center": ("f", "d"),
        "state.scale": ("f", "d"),
        "state.train": ("f", "n d"),
        "state.density": ("f", "n"),
        "state.reference": ("f", "m d"),
        "state.pca.mean": ("f", "d"),
        "state.pca.components": ("f", "k d"),
        "state.pca.explained_variance": ("f", "k"),
        "state.pca.explained_variance_ratio": ("f", "k"),
        "state.gaussian.mean": ("f", "k"),
        "state.gaussian.covariance": ("f", "k k"),
        "state.gaussian.cholesky": ("f", "k k"),
        "state.train_keys": ("u", "n two"),
    }

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.state_ = state_from_arrays(
            DetectorState, arrays, config=self._config(), what="MSDEDetector"
        )
        self.n_features_in_ = meta["n_features_in_"]
        self.n_components_ = meta["n_components_"]
        self.n_iter_ = meta["n_iter_"]
