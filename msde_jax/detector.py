"""MSDEDetector: the one-class estimator composing the functional core.

Learns "normal" from normal embeddings alone and scores new ones by how abnormal they look.
scikit-learn style (keyword-only constructor, ``fit`` returns ``self``, fitted attributes end
in ``_``) with PyOD's conventions for anomaly detectors (``decision_function`` higher = more
anomalous, ``decision_scores_``, ``threshold_``, ``labels_``, ``predict`` → 0/1).
"""

import inspect
import json
import math
import os
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.density import METHODS as WEIGHT_METHODS
from msde_jax.density import density_weights
from msde_jax.gaussian import COVARIANCE_ESTIMATORS, GaussianState, gaussian_fit, mahalanobis
from msde_jax.mean_shift import mean_shift
from msde_jax.pca import PCAState, pca_fit, pca_transform

FORMAT_VERSION = 1

MODES = ("inductive", "transductive", "none")
SCORES = ("mahalanobis", "displacement")
THRESHOLDS = ("cross_fit", "chi2")
BLOCK_ORDERS = ("content", "given")

# Above this many rows the kNN searches run in blocks (memory O(block · n), and faster on CPU).
_AUTO_BATCH_ROWS = 1024
_AUTO_BATCH = 256


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector is used before ``fit`` (as scikit-learn's ``NotFittedError``)."""


class DetectorState(NamedTuple):
    """Everything a fitted detector needs to score, as a pytree of arrays.

    Attributes:
        center: (d,) per-feature mean of the training normals (0 without standardising).
        scale: (d,) per-feature standard deviation (1 for constant features or without
            standardising).
        train: (n, d) standardised training normals, before any shift (the transductive mode
            shifts them again together with each test batch).
        weights: (n,) density weights of the training normals.
        reference: (n, d) the training normals after MSDE (the inductive mode's fixed reference).
        pca: :class:`~msde_jax.PCAState` fitted on ``reference``.
        gaussian: :class:`~msde_jax.GaussianState` of ``reference`` in PCA space.
    """

    center: jnp.ndarray
    scale: jnp.ndarray
    train: jnp.ndarray
    weights: jnp.ndarray
    reference: jnp.ndarray
    pca: PCAState
    gaussian: GaussianState


def row_keys(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes, (n,) uint64: a key that ignores where the row is.

    Sorting rows by it scatters them pseudo-randomly (unlike sorting by a coordinate, which
    would put similar rows in the same weight block) and depends only on their values.
    """
    words = np.ascontiguousarray(x).view(np.uint8).reshape(x.shape[0], -1).astype(np.uint64)
    # Polynomial rolling hash with wrap-around arithmetic, then a final avalanche mix.
    multipliers = np.cumprod(
        np.full(words.shape[1], 0x100000001B3, dtype=np.uint64), dtype=np.uint64
    )
    with np.errstate(over="ignore"):
        keys = (words * multipliers[None, :]).sum(axis=1, dtype=np.uint64)
        keys ^= keys >> np.uint64(33)
        keys *= np.uint64(0xFF51AFD7ED558CCD)
        keys ^= keys >> np.uint64(33)
    return keys


def content_order(x: np.ndarray) -> np.ndarray:
    """A permutation of the rows of ``x`` that depends only on their values, not their order.

    Identical rows tie, and their order does not matter.
    """
    return np.argsort(row_keys(x), kind="stable")


class MSDEDetector:
    """One-class anomaly detector: MSDE → PCA → Gaussian → Mahalanobis distance.

    ``fit`` learns from normal samples only (embeddings, one row each):

    1. standardise each feature with the training mean and standard deviation;
    2. density weights (``weights``) and the blurring weighted mean shift of the training
       normals toward their dense regions (MSDE, :func:`~msde_jax.mean_shift`);
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
    tabular MSDE paper's score).

    The threshold needs no abnormal images: with ``threshold="cross_fit"`` each training
    normal is scored by a model fitted on the other ``n_folds − 1`` folds, and ``threshold_``
    is the ``1 − contamination`` quantile of those out-of-fold scores (also kept as
    ``decision_scores_``); with ``threshold="chi2"`` it is the square root of the
    ``1 − contamination`` quantile of χ²(n_components), the law of a squared Mahalanobis
    distance under the Gaussian model.

    Args:
        mode: ``"inductive"``, ``"transductive"`` or ``"none"``.
        k: neighbours in the mean-shift window (50 in the paper).
        step_size: η, fraction of the mean-shift vector applied per iteration (0.33).
        max_iter: T, at most this many mean-shift iterations (8).
        tol: θ, stop once the mean shift length falls below it (0.01).
        weights: ``"msde"`` (the paper's block-wise fuzzy-graph weights), ``"fuzzy_degree"`` or
            ``"uniform"``.
        n_neighbors: q, neighbours of the fuzzy graph behind the weights (15).
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
        score: ``"mahalanobis"`` or ``"displacement"``.
        contamination: expected share of anomalies among normals-like data, in (0, 0.5]; sets
            the threshold quantile.
        threshold: ``"cross_fit"`` or ``"chi2"``.
        n_folds: folds for ``threshold="cross_fit"``.
        batch_size: rows per kNN block; ``None`` picks one (all rows at once up to 1024, else
            blocks of 256).
        dtype: floating dtype of the computation (``"float32"``; ``"float64"`` needs
            ``jax.config.update("jax_enable_x64", True)``).
    """

    def __init__(
        self,
        *,
        mode: str = "inductive",
        k: int = 50,
        step_size: float = 0.33,
        max_iter: int = 8,
        tol: float = 0.01,
        weights: str = "msde",
        n_neighbors: int = 15,
        block_order: str = "content",
        index_sum_quirk: bool = False,
        n_components: int | float = 256,
        covariance: str = "ridge",
        ridge: float = 1e-4,
        standardize: bool = True,
        score: str = "mahalanobis",
        contamination: float = 0.05,
        threshold: str = "cross_fit",
        n_folds: int = 5,
        batch_size: int | None = None,
        dtype: str = "float32",
    ):
        self.mode = mode
        self.k = k
        self.step_size = step_size
        self.max_iter = max_iter
        self.tol = tol
        self.weights = weights
        self.n_neighbors = n_neighbors
        self.block_order = block_order
        self.index_sum_quirk = index_sum_quirk
        self.n_components = n_components
        self.covariance = covariance
        self.ridge = ridge
        self.standardize = standardize
        self.score = score
        self.contamination = contamination
        self.threshold = threshold
        self.n_folds = n_folds
        self.batch_size = batch_size
        self.dtype = dtype

    # ------------------------------------------------------------------ presets and params
    @classmethod
    def paper(cls, **overrides: Any) -> "MSDEDetector":
        """The published medical pipeline (Kar et al., arXiv 2604.19191), exactly.

        Standardise; MSDE of the training normals with the paper's weights (k = 50, η = 0.33,
        T = 8, θ = 0.01, blocks of consecutive rows); PCA to min(256, d, n − 1); unbiased
        covariance + 1e-4·I; at scoring time the joint (transductive) shift of train + test and
        the Mahalanobis distance of the shifted test rows. Its scores depend on the test batch
        (see the class docstring). ``overrides`` change any parameter, e.g.
        ``index_sum_quirk=True`` for parity with the authors' code.
        """
        params = dict(
            mode="transductive",
            k=50,
            step_size=0.33,
            max_iter=8,
            tol=0.01,
            weights="msde",
            n_neighbors=15,
            block_order="given",
            n_components=256,
            covariance="ridge",
            ridge=1e-4,
            standardize=True,
            score="mahalanobis",
        )
        params.update(overrides)
        return cls(**params)

    @classmethod
    def _param_names(cls) -> list[str]:
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, as scikit-learn's ``get_params``."""
        del deep  # no nested estimators
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "MSDEDetector":
        """Set constructor parameters (as scikit-learn's ``set_params``); returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Unknown parameter {name!r} for MSDEDetector; valid ones: {', '.join(valid)}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k)]
        return f"MSDEDetector({', '.join(changed)})"

    def _validate_params(self) -> None:
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(
                    f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, options))}."
                )

        choice("mode", MODES)
        choice("weights", WEIGHT_METHODS)
        choice("block_order", BLOCK_ORDERS)
        choice("covariance", COVARIANCE_ESTIMATORS)
        choice("score", SCORES)
        choice("threshold", THRESHOLDS)
        choice("dtype", ("float32", "float64"))
        for name in ("k", "max_iter", "n_neighbors", "n_folds"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.n_folds < 2 and self.threshold == "cross_fit":
            raise ValueError("threshold='cross_fit' needs n_folds >= 2.")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}.")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {self.step_size!r}.")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}.")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}.")
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination!r}.")
        nc = self.n_components
        if isinstance(nc, bool) or not (
            (isinstance(nc, int | np.integer) and nc >= 1) or (isinstance(nc, float) and 0 < nc < 1)
        ):
            raise ValueError(
                f"n_components must be a positive int or a float in (0, 1), got {nc!r}."
            )
        if self.score == "displacement" and self.mode == "none":
            raise ValueError(
                "score='displacement' needs a mean shift: use a mode other than 'none'."
            )
        if self.threshold == "chi2" and self.score != "mahalanobis":
            raise ValueError("threshold='chi2' applies to score='mahalanobis' only.")

    # ------------------------------------------------------------------ input checks
    def _min_samples(self) -> int:
        return 2 if self.mode == "none" else max(self.k, 2)

    def _check_array(self, x: ArrayLike, what: str) -> np.ndarray:
        try:
            arr = np.asarray(x)
        except Exception as err:  # ragged lists and the like
            raise ValueError(f"{what} must be a 2-D array of numbers: {err}") from err
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise ValueError(f"{what} must hold numbers, got dtype {arr.dtype}.")
        if arr.ndim != 2:
            hint = " (one sample: reshape it to (1, d))" if arr.ndim == 1 else ""
            raise ValueError(
                f"{what} must be a 2-D array (n_samples, n_features), got shape {arr.shape}{hint}."
            )
        if arr.shape[0] == 0:
            raise ValueError(f"{what} has no samples.")
        arr = arr.astype(self.dtype)
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise ValueError(
                f"{what} contains NaN or infinite values in {rows.size} row(s) "
                f"(first: {rows[:5].tolist()}); remove or impute them before scoring."
            )
        return arr

    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise NotFittedError(
                "This MSDEDetector is not fitted yet; call fit(X_normal) first (or load one)."
            )

    # ------------------------------------------------------------------ the pipeline
    def _batch(self, n_rows: int) -> int | None:
        if self.batch_size is not None:
            return int(self.batch_size)
        return None if n_rows <= _AUTO_BATCH_ROWS else _AUTO_BATCH

    def _content_ordered(self) -> bool:
        return self.weights == "msde" and self.block_order == "content"

    def _weights(self, z: np.ndarray, keys: np.ndarray | None) -> jnp.ndarray:
        """Density weights of ``z``; with content order, blocks follow the raw rows' ``keys``."""
        batch = self._batch(z.shape[0])
        if not self._content_ordered():
            return density_weights(
                z,
                method=self.weights,
                n_neighbors=self.n_neighbors,
                index_sum_quirk=self.index_sum_quirk,
                batch_size=batch,
            )
        order = np.argsort(keys, kind="stable")
        w = density_weights(
            z[order],
            n_neighbors=self.n_neighbors,
            index_sum_quirk=self.index_sum_quirk,
            batch_size=batch,
        )
        return jnp.zeros_like(w).at[order].set(w)

    def _shift_kwargs(self, n_rows: int) -> dict[str, Any]:
        return dict(
            k=self.k,
            step_size=self.step_size,
            max_iter=self.max_iter,
            tol=self.tol,
            batch_size=self._batch(n_rows),
        )

    def _fit_state(self, x: np.ndarray) -> tuple[DetectorState, np.ndarray | None, int]:
        """Fit on raw rows ``x``: the state, the rows' content keys (or None), MSDE iterations."""
        n, d = x.shape
        keys = row_keys(x) if self._content_ordered() else None
        if self.standardize:
            # float64 sums, so that reordering the rows does not change the rounded result.
            center = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
            scale = x.std(axis=0, dtype=np.float64).astype(x.dtype)
            scale[scale == 0] = 1.0  # constant features, as sklearn's StandardScaler
        else:
            center, scale = np.zeros(d, x.dtype), np.ones(d, x.dtype)
        z = (x - center) / scale
        if self.mode == "none":
            w = jnp.ones(n, z.dtype)
            reference, n_iter = jnp.asarray(z), 0
        else:
            w = self._weights(z, keys)
            shifted = mean_shift(z, w, **self._shift_kwargs(n))
            reference, n_iter = shifted.points, int(shifted.n_iter)
        nc = self.n_components
        if isinstance(nc, int | np.integer):
            nc = int(min(nc, d, n - 1))
        pca = pca_fit(reference, nc)
        gaussian = gaussian_fit(
            pca_transform(pca, reference), covariance=self.covariance, ridge=self.ridge
        )
        state = DetectorState(
            jnp.asarray(center), jnp.asarray(scale), jnp.asarray(z), w, reference, pca, gaussian
        )
        return state, keys, n_iter

    def _score_state(
        self, state: DetectorState, keys: np.ndarray | None, x: np.ndarray
    ) -> np.ndarray:
        """Scores of raw rows ``x`` under a fitted ``state`` (``keys``: its training rows')."""
        z = (jnp.asarray(x) - state.center[None, :]) / state.scale[None, :]
        if self.mode == "none":
            points = z
        elif self.mode == "inductive":
            res = mean_shift(
                z,
                reference=state.reference,
                reference_weights=state.weights,
                **self._shift_kwargs(state.reference.shape[0]),
            )
            points, displacement = res.points, res.displacement
        else:
            n_train = state.train.shape[0]
            joint = np.concatenate([np.asarray(state.train), np.asarray(z)])
            joint_keys = None if keys is None else np.concatenate([keys, row_keys(x)])
            res = mean_shift(
                joint, self._weights(joint, joint_keys), **self._shift_kwargs(joint.shape[0])
            )
            points, displacement = res.points[n_train:], res.displacement[n_train:]
        if self.score == "displacement":
            return np.asarray(displacement)
        return np.asarray(mahalanobis(state.gaussian, pca_transform(state.pca, points)))

    def _check_sizes(self, n: int) -> None:
        need = self._min_samples()
        if n < need:
            reason = f"k={self.k} neighbours" if self.mode != "none" else "a covariance"
            raise ValueError(
                f"Fitting needs at least {need} training samples for {reason}, got {n}; "
                "pass more normal samples or a smaller k."
            )
        if self.covariance == "empirical":
            nc = self.n_components
            if isinstance(nc, int | np.integer) and n <= min(nc, n - 1):
                raise ValueError("covariance='empirical' needs more samples than components.")
        if self.threshold == "cross_fit":
            smallest = n - math.ceil(n / self.n_folds)
            if smallest < need:
                raise ValueError(
                    f"threshold='cross_fit' fits on {smallest} of the {n} samples per fold, fewer "
                    f"than the {need} needed; lower n_folds or k, or use threshold='chi2'."
                )

    def _cross_fit(self, x: np.ndarray) -> np.ndarray:
        order = content_order(x)
        scores = np.empty(x.shape[0], np.float64)
        for fold in range(self.n_folds):
            held = np.sort(order[fold :: self.n_folds])
            rest = np.setdiff1d(np.arange(x.shape[0]), held)  # keeps the given row order
            state, keys, _ = self._fit_state(x[rest])
            scores[held] = self._score_state(state, keys, x[held])
        return scores

    # ------------------------------------------------------------------ public API
    def fit(self, X: ArrayLike, y: Any = None) -> "MSDEDetector":
        """Fit on normal samples only.

        Args:
            X: (n, d) embeddings of normal images; float, no NaN or inf.
            y: ignored (scikit-learn API compatibility).

        Returns:
            ``self``, with ``state_``, ``n_features_in_``, ``n_components_``, ``n_iter_``,
            ``decision_scores_``, ``threshold_`` and ``labels_`` set.
        """
        del y
        self._validate_params()
        x = self._check_array(X, "X")
        self._check_sizes(x.shape[0])
        state, keys, n_iter = self._fit_state(x)
        self.state_ = state
        self.train_keys_ = keys
        self.n_features_in_ = x.shape[1]
        self.n_components_ = int(state.pca.components.shape[0])
        self.n_iter_ = n_iter
        if self.threshold == "cross_fit":
            self.decision_scores_ = self._cross_fit(x)
            self.threshold_ = float(np.quantile(self.decision_scores_, 1 - self.contamination))
        else:
            from scipy.stats import chi2  # scipy ships with jax

            self.decision_scores_ = self._score_state(state, keys, x)
            self.threshold_ = float(
                math.sqrt(chi2.ppf(1 - self.contamination, df=self.n_components_))
            )
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        return self

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Anomaly score of each sample; **higher = more anomalous** (PyOD's convention).

        The Mahalanobis distance (not squared) in the training PCA space after the ``mode``'s
        shift, or the total displacement with ``score="displacement"``. scikit-learn's outlier
        detectors return the opposite sign from their ``score_samples``.

        Args:
            X: (m, d) embeddings, same features as at fit time.

        Returns:
            (m,) float scores.
        """
        self._check_fitted()
        x = self._check_array(X, "X")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features but the detector was fitted on "
                f"{self.n_features_in_}; embed with the same backbone."
            )
        return self._score_state(self.state_, self.train_keys_, x)

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Same as :meth:`score_samples` (higher = more anomalous), as in PyOD."""
        return self.score_samples(X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """1 for samples scoring above ``threshold_`` (anomalous), else 0."""
        return (self.score_samples(X) > self.threshold_).astype(int)

    def fit_predict(self, X: ArrayLike, y: Any = None) -> np.ndarray:
        """Fit on ``X`` and return ``labels_``: its out-of-fold (or in-sample) 0/1 labels."""
        return self.fit(X, y).labels_

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> None:
        """Save the configuration and every fitted array to ``path`` (an ``.npz`` file).

        Plain arrays and a JSON string: loading executes no code (no pickle).

        Args:
            path: the file to write (written as given, no suffix added).
            metadata: JSON-serialisable extras stored alongside (e.g. the embedder that produced
                the features); :meth:`load` returns them as ``metadata_``.
        """
        self._check_fitted()
        meta = {
            "metadata": metadata or {},
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "n_features_in_": self.n_features_in_,
            "n_components_": self.n_components_,
            "n_iter_": self.n_iter_,
            "threshold_": self.threshold_,
        }
        arrays = {f"state.{name}": np.asarray(value) for name, value in _flatten(self.state_)}
        arrays["decision_scores_"] = np.asarray(self.decision_scores_)
        if self.train_keys_ is not None:
            arrays["train_keys_"] = self.train_keys_
        with open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MSDEDetector":
        """Load a detector written by :meth:`save`; it gives identical scores."""
        try:
            with np.load(path, allow_pickle=False) as data:
                files = {name: data[name] for name in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a saved MSDEDetector (.npz): {err}") from err
        if "meta" not in files:
            raise ValueError(f"{path} is not a saved MSDEDetector: no 'meta' entry.")
        meta = json.loads(str(files["meta"]))
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {version}; this msde_jax reads version "
                f"{FORMAT_VERSION}. Refit the detector with this version."
            )
        det = cls(**meta["params"])
        det.state_ = _unflatten(
            {k.removeprefix("state."): v for k, v in files.items() if k.startswith("state.")}
        )
        det.n_features_in_ = meta["n_features_in_"]
        det.n_components_ = meta["n_components_"]
        det.n_iter_ = meta["n_iter_"]
        det.threshold_ = meta["threshold_"]
        det.metadata_ = meta.get("metadata", {})
        det.decision_scores_ = files["decision_scores_"]
        det.train_keys_ = files.get("train_keys_")
        det.labels_ = (det.decision_scores_ > det.threshold_).astype(int)
        return det


def _flatten(state: DetectorState):
    for name, value in state._asdict().items():
        if isinstance(value, tuple):
            for sub, arr in value._asdict().items():
                yield f"{name}.{sub}", arr
        else:
            yield name, value


def _unflatten(arrays: dict[str, np.ndarray]) -> DetectorState:
    def part(cls, prefix):
        return cls(**{f: jnp.asarray(arrays[f"{prefix}.{f}"]) for f in cls._fields})

    plain = {
        f: jnp.asarray(arrays[f]) for f in DetectorState._fields if f not in ("pca", "gaussian")
    }
    return DetectorState(
        **plain, pca=part(PCAState, "pca"), gaussian=part(GaussianState, "gaussian")
    )
