"""The patch memory-bank detector (PatchCore, optionally MSDE-enhanced): a pure core and the
PatchBankDetector estimator over it.

:func:`fit_bank_detector` fits a :class:`BankState` (a pytree: the
:class:`~msde_jax.MemoryBank` and its :class:`BankConfig`) and a threshold from the patch
features of normal images; :func:`score_bank_detector` scores new images under that state and is
``jax.jit``-able. :class:`PatchBankDetector` is the facade over the two, with the same surface
as :class:`~msde_jax.MSDEDetector` (PatchCore: Roth et al., *Towards Total Recall in Industrial
Anomaly Detection*, CVPR 2022).

Patch features are (n_images, n_patches, channels) or (n_images, grid, grid, channels), the
:class:`~msde_jax.Embedder`'s ``features="patches"`` output.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.core.anomaly_maps import upsample_maps
from msde_jax.core.blocks import row_keys
from msde_jax.core.memory_bank import REDUCTIONS, MemoryBank, bank_fit, image_scores, patch_scores
from msde_jax.detectors.base import Detector, out_of_fold_scores, quantile_threshold
from msde_jax.detectors.config import (
    auto_batch,
    check_choice,
    check_int,
    check_shift_and_threshold,
)
from msde_jax.detectors.persistence import state_from_arrays

__all__ = [
    "BankConfig",
    "BankFit",
    "BankState",
    "PatchBankDetector",
    "check_patches",
    "fit_bank_detector",
    "score_bank_detector",
    "score_bank_maps",
    "score_bank_patches",
]

# Images hashed per block for their content keys: row_keys makes ~16 bytes per input byte.
_HASH_BLOCK_BYTES = 4 << 20


# A static pytree node, as DetectorConfig: jit specialises on it and traces only the bank.
@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class BankConfig:
    """Every hyperparameter of the patch memory-bank detector, validated on construction.

    The fields are :class:`PatchBankDetector`'s constructor parameters (documented there), with
    the same defaults. Frozen and hashable; it travels inside :class:`BankState` as a static
    pytree node, so ``jax.jit(score_bank_detector)(state, x)`` specialises on it.
    """

    size: int = 2000
    shift: bool = False
    k: int = 50
    step_size: float = 0.33
    max_iter: int = 8
    tol: float = 0.01
    density: str = "msde"
    projection_dim: int | None = 128
    score_neighbors: int = 1
    reduce: str = "top"
    q: float = 0.1
    contamination: float = 0.05
    threshold: str = "cross_fit"
    n_folds: int = 5
    batch_size: int | None = None
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("size", self.size)
        check_int("n_folds", self.n_folds, low=2)
        check_int("seed", self.seed, low=0)
        if not isinstance(self.shift, bool | np.bool_):
            raise ValueError(f"shift must be True or False, got {self.shift!r}.")
        check_shift_and_threshold(self)
        check_choice("reduce", self.reduce, REDUCTIONS)
        if self.threshold == "chi2":
            raise ValueError(
                "threshold='chi2' does not apply to a memory bank: χ² is the law of a squared "
                "Mahalanobis distance under a Gaussian, and patch-to-bank distances have no "
                "such law; use threshold='cross_fit' (out-of-fold scores of the normals)."
            )
        check_choice("threshold", self.threshold, ("cross_fit",))
        if self.projection_dim is not None:
            check_int("projection_dim", self.projection_dim)
        if not 0 < self.q <= 1:
            raise ValueError(f"q must be in (0, 1], got {self.q!r}.")

    def batch(self, n_rows: int) -> int | None:
        """Rows per kNN block for an n_rows-sized search: ``batch_size``, else all rows up to
        1024 and blocks of 256 beyond (as :meth:`~msde_jax.DetectorConfig.batch`)."""
        return auto_batch(self.batch_size, n_rows)

    def projection(self, n_channels: int) -> int | None:
        """The coreset's projection dimension for ``n_channels``: ``None`` (exact) when
        ``projection_dim`` is ``None`` or not below the channel count."""
        dim = self.projection_dim
        return None if dim is None or dim >= n_channels else int(dim)

    def check_n_images(self, n_images: int, n_patches: int) -> None:
        """Refuse too few training images for the folds, the shift's k and ``score_neighbors``."""
        if n_images < self.n_folds:
            raise ValueError(
                f"threshold='cross_fit' needs at least n_folds={self.n_folds} training images "
                f"(one fold each), got {n_images}; pass more normal images or lower n_folds."
            )
        smallest = n_images - math.ceil(n_images / self.n_folds)
        rows = min(self.size, smallest * n_patches)
        need, fix = self.score_neighbors, "score_neighbors"
        if self.shift and self.k > need:
            need, fix = self.k, "k"
        if rows < need:
            raise ValueError(
                f"The smallest cross-fit bank has {rows} patches ({smallest} images of "
                f"{n_patches} patches, at most size={self.size}), fewer than the {need} that "
                f"{fix}={need} needs; pass more normal images, lower n_folds or lower {fix}."
            )


class BankState(NamedTuple):
    """A fitted patch memory-bank detector (a pytree).

    Attributes:
        bank: the :class:`~msde_jax.MemoryBank`; its rows are in content order of the
            training images, then patch position, and its ``indices`` are the rows of the
            training patches flattened to (n_images · n_patches, c) in the order they were
            given.
        config: the :class:`BankConfig` it was fitted with (a static pytree node).
    """

    bank: MemoryBank
    config: BankConfig


class BankFit(NamedTuple):
    """Outcome of :func:`fit_bank_detector`.

    Attributes:
        state: the fitted :class:`BankState`.
        decision_scores: (n_images,) out-of-fold scores of the training images.
        threshold: the anomaly threshold on the score (a Python float).
        n_iter: MSDE iterations run on the bank (0 without ``shift``).
    """

    state: BankState
    decision_scores: np.ndarray
    threshold: float
    n_iter: int


# ---------------------------------------------------------------------- boundary checks
def check_patches(
    x: ArrayLike,
    *,
    dtype: str = "float32",
    n_channels: int | None = None,
    n_patches: int | None = None,
    what: str = "X",
) -> np.ndarray:
    """Check patch features and return them as a NumPy array of ``dtype`` (shape kept).

    Refuses, with a message naming the fix: non-numeric input, anything but
    (n_images, n_patches, c) or (n_images, grid, grid, c), no images, NaN or infinite values,
    and (when given) another channel count or number of patches per image.
    """
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise ValueError(f"{what} must be an array of patch features: {err}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{what} must hold numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise ValueError(f"{what} must hold real numbers, got dtype {arr.dtype}.")
    if arr.ndim not in (3, 4):
        hint = ""
        if arr.ndim == 2:
            hint = (
                "; pooled embeddings (n, d) go to MSDEDetector, and one image's patches "
                "(n_patches, c) need a leading axis: X[None]"
            )
        raise ValueError(
            f"{what} must be patch features of shape (n_images, n_patches, channels) or "
            "(n_images, grid, grid, channels), as Embedder(features='patches') gives, got "
            f"shape {arr.shape}{hint}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{what} has no images.")
    if 0 in arr.shape[1:]:
        raise ValueError(f"{what} has no patches or no channels: shape {arr.shape}.")
    # Checked before the cast to ``dtype``: float64 values beyond float32's range would
    # otherwise turn into infinities and be reported as such.
    bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if bad.any():
        images = np.nonzero(bad)[0]
        raise ValueError(
            f"{what} contains NaN or infinite values in {images.size} image(s) "
            f"(first: {images[:5].tolist()}); remove or impute them before scoring."
        )
    # Squared distances are at most 4 · c · max|x|²: beyond the dtype's range they overflow.
    limit = math.sqrt(float(np.finfo(dtype).max) / (4 * arr.shape[-1])) / 2
    peak = float(np.max(np.abs(arr.astype(np.float64, copy=False))))
    if peak > limit:
        raise ValueError(
            f"{what} has values up to {peak:.3g}, too large for {np.dtype(dtype)} patch "
            f"distances (squared distances overflow beyond about {limit:.3g}); divide the "
            "features by a constant (the scores scale with it) or use dtype='float64'."
        )
    arr = np.asarray(arr, dtype=dtype)
    if n_channels is not None and arr.shape[-1] != n_channels:
        raise ValueError(
            f"{what} has {arr.shape[-1]} channels per patch but the detector was fitted on "
            f"{n_channels}; embed with the same backbone and layers."
        )
    patches = math.prod(arr.shape[1:-1])
    if n_patches is not None and patches != n_patches:
        raise ValueError(
            f"{what} has {patches} patches per image but the detector was fitted on "
            f"{n_patches}; embed with the same grid."
        )
    return arr


def _image_keys(x: np.ndarray) -> np.ndarray:
    """A 64-bit content hash of each image's values (:func:`row_keys`, in blocks of images)."""
    step = max(1, _HASH_BLOCK_BYTES // max(x[0].nbytes, 1))
    blocks = (x[i : i + step] for i in range(0, x.shape[0], step))
    return np.concatenate([row_keys(b.reshape(b.shape[0], -1)) for b in blocks])


# ---------------------------------------------------------------------- the pipeline
def _fit_state(x: np.ndarray, keys: np.ndarray, config: BankConfig) -> tuple[BankState, int]:
    """Fit on checked patches ``x`` (n, ..., c) with image content ``keys``: state, n_iter."""
    n, c = x.shape[0], x.shape[-1]
    n_patches = math.prod(x.shape[1:-1])
    # The images in content order, so the bank depends on which images, not on their order;
    # bank_fit keeps its rows in that order (then patch position) for the weights and shift.
    order = np.argsort(keys, kind="stable")
    flat = x[order].reshape(n * n_patches, c)
    bank = bank_fit(
        flat,
        size=config.size,
        shift=config.shift,
        k=config.k,
        step_size=config.step_size,
        max_iter=config.max_iter,
        tol=config.tol,
        density=config.density,
        projection_dim=config.projection(c),
        key=jax.random.key(config.seed),
        batch_size=config.batch(min(config.size, flat.shape[0])),
    )
    rows = np.asarray(bank.indices)
    given = order[rows // n_patches] * n_patches + rows % n_patches  # rows of x's own order
    bank = bank._replace(indices=jnp.asarray(given, dtype=jnp.int32))
    return BankState(bank, config), int(bank.n_iter)


def score_bank_patches(state: BankState, x: ArrayLike) -> jax.Array:
    """Each test patch's mean distance to its ``score_neighbors`` nearest bank patches.

    :func:`~msde_jax.patch_scores` with the state's config, in blocks of patches (the batch
    rule of :meth:`BankConfig.batch` over the larger of the patch count and the bank size).
    Pure and ``jax.jit``-able; no input checks (see :func:`check_patches`).

    Args:
        state: a fitted :class:`BankState`.
        x: (m, P, c) or (m, g, g, c) patch features, c as at fit time.

    Returns:
        (m, P) or (m, g, g) patch scores, higher = more anomalous.
    """
    config = state.config
    x = jnp.asarray(x, state.bank.bank.dtype)
    n_queries = math.prod(x.shape[:-1])
    batch = config.batch(max(n_queries, state.bank.bank.shape[0]))
    return patch_scores(state.bank, x, k=config.score_neighbors, batch_size=batch)


def score_bank_maps(
    state: BankState, x: ArrayLike, *, size: int, sigma: float | None = None
) -> jax.Array:
    """Anomaly maps: the patch scores on the (g, g) grid upsampled to ``size`` and blurred.

    :func:`score_bank_patches` then :func:`~msde_jax.core.anomaly_maps.upsample_maps` (bilinear,
    then a
    Gaussian of σ = 4 · size / 224 pixels unless ``sigma`` is given, as PatchCore). In the
    units of the patch scores, so of the image score; batch-independent like them. Pure and
    ``jax.jit``-able with ``size`` and ``sigma`` static.

    Args:
        state: a fitted :class:`BankState`.
        x: (m, g, g, c) patch features on a square grid, c as at fit time.
        size: side of the maps, the embedder's ``image_size``.
        sigma: blur σ in map pixels (0: none; ``None``: PatchCore's, scaled to ``size``).

    Returns:
        (m, size, size) maps, higher = more anomalous.
    """
    return upsample_maps(score_bank_patches(state, x), size, sigma)


def score_bank_detector(state: BankState, x: ArrayLike) -> jax.Array:
    """Anomaly score of each image under a fitted ``state``; higher = more anomalous.

    Patch scores (:func:`score_bank_patches`) reduced to one score per image by
    :func:`~msde_jax.image_scores` with the config's ``reduce`` and ``q``. Every image is scored
    on its own: one image alone gets the same score as in any batch. Pure and ``jax.jit``-able
    as ``jax.jit(score_bank_detector)(state, x)``; it recompiles only for a new input shape or
    config. No input checks run here; :func:`check_patches` is the boundary.

    Args:
        state: a fitted :class:`BankState` (from :func:`fit_bank_detector`).
        x: (m, P, c) or (m, g, g, c) patch features, c as at fit time, finite.

    Returns:
        (m,) scores.
    """
    scores = score_bank_patches(state, x)
    scores = scores.reshape(scores.shape[0], -1)
    return image_scores(scores, reduce=state.config.reduce, q=state.config.q)


def fit_bank_detector(x: ArrayLike, config: BankConfig) -> BankFit:
    """Fit the patch memory bank on the patch features of normal images, and its threshold.

    1. the images are put in content order (a hash of their values), so nothing depends on
       the order they come in;
    2. the bank: ``min(size, N)`` of the N training patches by the greedy k-center coreset
       (:func:`~msde_jax.bank_fit`, on a random projection to ``projection_dim`` dimensions
       when that is below the channel count, PRNG key ``seed``);
    3. with ``shift=True``, MSDE on the bank (``bank_fit(..., shift=True)``): density weights
       (``density``) and the blurring weighted mean shift, with the bank rows in content order
       of the images, then patch position.

    The threshold needs no abnormal images: each training image is scored by a bank fitted on
    the images of the other ``n_folds − 1`` folds (folds of images by content order) and the
    threshold is the ``1 − contamination`` quantile of those out-of-fold scores.

    Runs eagerly (NumPy hashing, a Python loop over folds); its parts are jitted.

    Args:
        x: (n, P, c) or (n, g, g, c) patch features of normal images (:func:`check_patches`).
        config: the :class:`BankConfig`.

    Returns:
        :class:`BankFit` ``(state, decision_scores, threshold, n_iter)``.
    """
    x = check_patches(x, dtype=config.dtype)
    config.check_n_images(x.shape[0], math.prod(x.shape[1:-1]))
    keys = _image_keys(x)
    state, n_iter = _fit_state(x, keys, config)

    def fit_score(rest: np.ndarray, held: np.ndarray) -> jax.Array:
        return score_bank_detector(_fit_state(x[rest], keys[rest], config)[0], x[held])

    scores = out_of_fold_scores(np.argsort(keys, kind="stable"), config.n_folds, fit_score)
    return BankFit(state, scores, quantile_threshold(scores, config.contamination), n_iter)


# ---------------------------------------------------------------------- the estimator
class PatchBankDetector(Detector):
    """One-class anomaly detector on patch features: a PatchCore memory bank, optionally MSDE.

    A scikit-learn-style facade over :func:`fit_bank_detector` and :func:`score_bank_detector`
    with the surface of :class:`~msde_jax.MSDEDetector`: the constructor parameters make a
    :class:`BankConfig`, ``fit`` stores the fitted :class:`BankState` as ``state_``.

    ``fit`` learns from the patch features of normal images only, (n, P, c) or (n, g, g, c)
    (``Embedder(features="patches")``): a greedy k-center coreset of ``size`` training patches
    (PatchCore's memory bank), density-enhanced by MSDE with ``shift=True``. Each test patch
    scores its mean Euclidean distance to its ``score_neighbors`` nearest bank patches
    (:meth:`score_patches`, e.g. for heatmaps), and each image the ``reduce`` of its patch
    scores: ``"max"`` (PatchCore's), ``"mean"``, or ``"top"`` (the mean of the ⌈q·P⌉ highest).
    **Higher means more anomalous**; every image is scored on its own (batch-independent).

    The threshold needs no abnormal images: each training image is scored by a bank fitted on
    the other ``n_folds − 1`` folds of images, and ``threshold_`` is the ``1 − contamination``
    quantile of those out-of-fold scores (kept as ``decision_scores_``). There is no χ²
    threshold: patch-to-bank distances have no known law under normality.

    The score-time parameters ``reduce``, ``q``, ``score_neighbors`` and ``batch_size`` may
    change after ``fit``: e.g. ``set_params(reduce="max")`` changes the image score without
    refitting. ``threshold_``, ``decision_scores_`` and ``labels_`` stay those of the fitted
    score, so :meth:`predict` refuses until it is set back or the detector refitted
    (``batch_size`` changes no score). Every other parameter (``shift``, ``size``, …) takes
    effect at the next ``fit``; until then scoring uses its fit-time value (in
    ``state_.config``), and :meth:`save` refuses.

    Args:
        size: bank rows, at most the number of training patches (PatchCore keeps 1–10 %);
            2000 by default, the size measured in README "Which mode" (about 2 % of brain
            MRI's 476 × 196 training patches, 0.8 % of PneumoniaMNIST's), which fits
            ``msde-jax evaluate``'s CPU budget; larger banks cost fit time linearly.
        shift: density-enhance the bank by MSDE (blurring weighted mean shift) before scoring.
        k: neighbours in the mean-shift window (50 in the MSDE paper).
        step_size: η, fraction of the mean-shift vector applied per iteration (0.33).
        max_iter: T, at most this many mean-shift iterations (8).
        tol: θ, stop once the mean shift length falls below it (0.01).
        density: the density-weight scheme of the shift (:func:`~msde_jax.density_weights`):
            ``"msde"``, ``"fuzzy_degree"`` or ``"uniform"``.
        projection_dim: dimension of the coreset's random projection (PatchCore uses 128);
            ``None``, or a value not below the channel count, searches exactly.
        score_neighbors: bank patches averaged per patch score (1: PatchCore's nearest one).
        reduce: ``"top"``, ``"max"`` or ``"mean"``: patch scores → image score.
        q: the share of patches ``reduce="top"`` averages, in (0, 1].
        contamination: expected share of anomalies among normals-like data, in (0, 0.5]; sets
            the threshold quantile.
        threshold: ``"cross_fit"`` (the only one).
        n_folds: folds of images for the threshold (at least 2).
        batch_size: rows per kNN block; ``None`` picks one (all rows at once up to 1024, else
            blocks of 256).
        dtype: floating dtype of the computation (``"float32"``; ``"float64"`` needs
            ``jax.config.update("jax_enable_x64", True)``).
        seed: PRNG seed of the coreset's random projection.
    """

    _score_params = ("reduce", "q", "score_neighbors", "batch_size")
    has_maps = True

    def __init__(
        self,
        *,
        size: int = 2000,
        shift: bool = False,
        k: int = 50,
        step_size: float = 0.33,
        max_iter: int = 8,
        tol: float = 0.01,
        density: str = "msde",
        projection_dim: int | None = 128,
        score_neighbors: int = 1,
        reduce: str = "top",
        q: float = 0.1,
        contamination: float = 0.05,
        threshold: str = "cross_fit",
        n_folds: int = 5,
        batch_size: int | None = None,
        dtype: str = "float32",
        seed: int = 0,
    ):
        self.size = size
        self.shift = shift
        self.k = k
        self.step_size = step_size
        self.max_iter = max_iter
        self.tol = tol
        self.density = density
        self.projection_dim = projection_dim
        self.score_neighbors = score_neighbors
        self.reduce = reduce
        self.q = q
        self.contamination = contamination
        self.threshold = threshold
        self.n_folds = n_folds
        self.batch_size = batch_size
        self.dtype = dtype
        self.seed = seed

    def _config(self) -> BankConfig:
        return BankConfig(**self.get_params())

    def _checked(self, X: ArrayLike) -> tuple[BankState, np.ndarray]:
        """The fitted state with the current score-time parameters, and the checked ``X``."""
        self._check_fitted()
        config = BankConfig(**self._scoring_params())
        x = check_patches(
            X, dtype=config.dtype, n_channels=self.n_features_in_, n_patches=self.n_patches_
        )
        return self.state_._replace(config=config), x

    # ------------------------------------------------------------------ public API
    def fit(self, X: ArrayLike, y: Any = None) -> "PatchBankDetector":
        """Fit on the patch features of normal images only (:func:`fit_bank_detector`).

        Args:
            X: (n, P, c) or (n, g, g, c) patch features of normal images; no NaN or inf.
            y: ignored (scikit-learn API compatibility).

        Returns:
            ``self``, with ``state_``, ``n_features_in_`` (c), ``n_patches_`` (P),
            ``n_iter_``, ``decision_scores_``, ``threshold_`` and ``labels_`` set.
        """
        del y
        result = fit_bank_detector(X, self._config())
        self.state_ = result.state
        x_shape = np.shape(X)
        self.n_features_in_ = int(x_shape[-1])
        self.n_patches_ = int(math.prod(x_shape[1:-1]))
        self.n_iter_ = result.n_iter
        self._set_scores(result.decision_scores, result.threshold)
        return self

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Anomaly score of each image; **higher = more anomalous** (:func:`score_bank_detector`).

        Args:
            X: (m, P, c) or (m, g, g, c) patch features, as at fit time.

        Returns:
            (m,) float scores.
        """
        return np.asarray(score_bank_detector(*self._checked(X)))

    def score_patches(self, X: ArrayLike) -> np.ndarray:
        """Each patch's score (:func:`score_bank_patches`), e.g. for anomaly heatmaps.

        Args:
            X: (m, P, c) or (m, g, g, c) patch features, as at fit time.

        Returns:
            (m, P) or (m, g, g) float scores, higher = more anomalous.
        """
        return np.asarray(score_bank_patches(*self._checked(X)))

    def score_maps(
        self, X: ArrayLike, *, size: int = 224, sigma: float | None = None
    ) -> np.ndarray:
        """Anomaly heatmaps (:func:`score_bank_maps`): where in each image the score comes from.

        The patch scores on the feature grid, resized bilinearly to ``size`` × ``size`` and
        blurred by a Gaussian (σ = 4 · size / 224 pixels, PatchCore's 4 at 224, unless
        ``sigma`` is given), in the units of :meth:`score_samples` (a patch's distance to the
        bank). Pass the embedder's ``image_size``: the maps then lie on the image as the
        embedder saw it (``Embedder.preprocess``). One image alone gets the same map as in any
        batch.

        Args:
            X: (m, g, g, c) patch features (or (m, P, c) with P a square number), as at fit time.
            size: side of the maps in pixels.
            sigma: blur σ in map pixels; 0 for none.

        Returns:
            (m, size, size) float maps, higher = more anomalous.
        """
        state, x = self._checked(X)
        if x.ndim == 3:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise ValueError(
                    f"maps need patches on a square grid: {x.shape[1]} patches per image is "
                    "not g × g; pass (m, g, g, c) features."
                )
            x = x.reshape(x.shape[0], side, side, x.shape[-1])
        elif x.shape[1] != x.shape[2]:
            raise ValueError(f"maps need a square patch grid, got {x.shape[1]} × {x.shape[2]}.")
        check_int("size", size)
        real = isinstance(sigma, int | float | np.number) and not isinstance(sigma, bool)
        if sigma is not None and not (real and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0 (0: no blur), got {sigma!r}.")
        return np.asarray(score_bank_maps(state, x, size=int(size), sigma=sigma))

    # ------------------------------------------------------------------ persistence
    def _fitted_meta(self) -> dict[str, Any]:
        return {
            "n_features_in_": self.n_features_in_,
            "n_patches_": self.n_patches_,
            "n_iter_": self.n_iter_,
        }

    _meta_dims = {"c": "n_features_in_", "patches": "n_patches_"}
    _array_schema = {
        "state.bank.bank": ("f", "size c"),
        "state.bank.density": ("f", "size"),
        "state.bank.indices": ("i", "size"),
        "state.bank.n_iter": ("i", ""),
    }

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.state_ = state_from_arrays(
            BankState, arrays, config=self._config(), what="PatchBankDetector"
        )
        self.n_features_in_ = meta["n_features_in_"]
        self.n_patches_ = meta["n_patches_"]
        self.n_iter_ = meta["n_iter_"]
        bank, indices = self.state_.bank.bank, np.asarray(self.state_.bank.indices)
        # The bank's rows are training patches: at least one, each one of the n · P given.
        n_patches = len(arrays["decision_scores_"]) * self.n_patches_
        in_range = indices.size == 0 or 0 <= indices.min() <= indices.max() < n_patches
        if bank.shape[0] < 1 or not in_range:
            raise ValueError(
                f"not a valid saved PatchBankDetector: a bank of {bank.shape[0]} rows with "
                f"indices in [{indices.min(initial=0)}, {indices.max(initial=0)}], where the "
                f"training images had {n_patches} patches."
            )
