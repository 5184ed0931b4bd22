"""The detector's configuration and the checks at its boundary.

The option lists, :class:`DetectorConfig` (every hyperparameter, validated on construction)
and :func:`check_samples` (user embeddings). Public through :mod:`msde_jax.detectors.msde`.
"""

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from msde_jax.core.density import METHODS
from msde_jax.core.gaussian import COVARIANCE_ESTIMATORS
from msde_jax.core.mean_shift import NEIGHBOR_SEARCHES

__all__ = [
    "BLOCK_ORDERS",
    "MODES",
    "PAPER_PARAMS",
    "SCORES",
    "THRESHOLDS",
    "DetectorConfig",
    "auto_batch",
    "check_samples",
]

MODES = ("inductive", "transductive", "none")
SCORES = ("mahalanobis", "displacement", "knn")
THRESHOLDS = ("cross_fit", "chi2")
BLOCK_ORDERS = ("content", "given")

# Above this many rows the kNN searches run in blocks (memory O(block · n), and faster on CPU).
_AUTO_BATCH_ROWS = 1024
_AUTO_BATCH = 256

# The published medical pipeline (Kar et al., arXiv 2604.19191).
PAPER_PARAMS = dict(
    mode="transductive",
    k=50,
    step_size=0.33,
    max_iter=8,
    tol=0.01,
    density="msde",
    n_neighbors=15,
    block_order="given",
    n_components=256,
    covariance="ridge",
    ridge=1e-4,
    standardize=True,
    score="mahalanobis",
)


# A static pytree node: under ``jax.jit`` the config is part of the state's tree structure
# (hashed, compared, never traced), so the mode, k and batch size stay Python values.
def check_choice(name: str, value: Any, options: tuple) -> None:
    """Refuse ``value`` unless it is one of ``options``, naming them."""
    if value not in options:
        raise ValueError(
            f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, options))}."
        )


def check_int(name: str, value: Any, *, low: int = 1) -> None:
    """Refuse anything but an int (not a bool) of at least ``low``."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")


def check_shift_and_threshold(config: Any) -> None:
    """The checks every config with an MSDE shift and a contamination shares."""
    check_choice("density", config.density, METHODS)
    check_choice("dtype", config.dtype, ("float32", "float64"))
    for name in ("k", "max_iter", "score_neighbors"):
        check_int(name, getattr(config, name))
    if config.batch_size is not None and (
        not isinstance(config.batch_size, int | np.integer)
        or isinstance(config.batch_size, bool)
        or config.batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {config.batch_size!r}.")
    if not 0 < config.step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {config.step_size!r}.")
    if not config.tol >= 0:
        raise ValueError(f"tol must be >= 0, got {config.tol!r}.")
    if not 0 < config.contamination <= 0.5:
        raise ValueError(f"contamination must be in (0, 0.5], got {config.contamination!r}.")


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """Every hyperparameter of the detector, validated on construction.

    The fields are :class:`~msde_jax.MSDEDetector`'s constructor parameters (documented there),
    with the same defaults: the inductive detector's. :meth:`paper` is the published preset.

    Frozen and hashable. It travels inside :class:`~msde_jax.DetectorState` as a static pytree
    node: ``jax.jit(score_detector)(state, x)`` specialises on it (a different config compiles
    anew) and traces only the arrays. The one pairing it does not refuse,
    ``threshold="chi2"`` with a score other than ``"mahalanobis"``, is refused by
    :func:`~msde_jax.fit_detector`, which computes the threshold; a fitted state can be
    scored with any score.
    """

    mode: str = "inductive"
    k: int = 50
    step_size: float = 0.33
    max_iter: int = 8
    tol: float = 0.01
    density: str = "msde"
    n_neighbors: int = 15
    block_order: str = "content"
    index_sum_quirk: bool = False
    n_components: int | float = 256
    covariance: str = "ridge"
    ridge: float = 1e-4
    standardize: bool = True
    score: str = "mahalanobis"
    score_neighbors: int = 1
    contamination: float = 0.05
    threshold: str = "cross_fit"
    n_folds: int = 5
    batch_size: int | None = None
    neighbors: str = "auto"
    dtype: str = "float32"

    @classmethod
    def paper(cls, **overrides: Any) -> "DetectorConfig":
        """The published medical pipeline, as :meth:`msde_jax.MSDEDetector.paper`."""
        return cls(**{**PAPER_PARAMS, **overrides})

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("block_order", self.block_order, BLOCK_ORDERS)
        check_choice("covariance", self.covariance, COVARIANCE_ESTIMATORS)
        check_choice("score", self.score, SCORES)
        check_choice("threshold", self.threshold, THRESHOLDS)
        check_choice("neighbors", self.neighbors, NEIGHBOR_SEARCHES)
        check_int("n_neighbors", self.n_neighbors)
        check_int("n_folds", self.n_folds)
        check_shift_and_threshold(self)
        if self.n_folds < 2 and self.threshold == "cross_fit":
            raise ValueError("threshold='cross_fit' needs n_folds >= 2.")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}.")
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
        if self.score == "knn" and self.mode == "transductive":
            raise ValueError(
                "score='knn' measures the distance to fixed training normals, which the "
                "transductive mode shifts anew with every test batch; use mode='inductive' "
                "(the density-enhanced normals) or mode='none'."
            )

    @property
    def min_samples(self) -> int:
        """The fewest training rows a fit needs: k neighbours, or 2 for a covariance, and
        ``score_neighbors`` for ``score="knn"``."""
        need = self._min_fit_samples
        return max(need, self.score_neighbors) if self.score == "knn" else need

    @property
    def _min_fit_samples(self) -> int:
        return 2 if self.mode == "none" else max(self.k, 2)

    def _min_samples_reason(self) -> tuple[str, str]:
        """Why ``min_samples`` rows are needed, and the parameter that lowers it."""
        if self.score == "knn" and self.score_neighbors > self._min_fit_samples:
            return f"score_neighbors={self.score_neighbors} neighbours", "score_neighbors"
        return (f"k={self.k} neighbours" if self.mode != "none" else "a covariance"), "k"

    @property
    def content_ordered(self) -> bool:
        """Whether the published weight blocks follow a hash of the rows, not their order."""
        return self.density == "msde" and self.block_order == "content"

    def batch(self, n_rows: int) -> int | None:
        """Rows per kNN block against ``n_rows`` rows: ``batch_size``, else all rows up to
        1024 and blocks of 256 beyond."""
        return auto_batch(self.batch_size, n_rows)

    def check_n_samples(self, n: int) -> None:
        """Refuse ``n`` training rows if too few to fit (k neighbours, components, folds)."""
        need = self.min_samples
        if n < need:
            reason, fix = self._min_samples_reason()
            raise ValueError(
                f"Fitting needs at least {need} training samples for {reason}, got {n}; "
                f"pass more normal samples or a smaller {fix}."
            )
        if self.covariance == "empirical":
            nc = self.n_components
            if isinstance(nc, int | np.integer) and n <= min(nc, n - 1):
                raise ValueError("covariance='empirical' needs more samples than components.")
        if self.threshold == "cross_fit":
            smallest = n - math.ceil(n / self.n_folds)
            if smallest < need:
                if self._min_samples_reason()[1] == "score_neighbors":
                    fix = "lower n_folds or score_neighbors"
                elif self.score == "mahalanobis":  # the only score χ² applies to
                    fix = "lower n_folds or k, or use threshold='chi2'"
                else:
                    fix = "lower n_folds or k"
                raise ValueError(
                    f"threshold='cross_fit' fits on {smallest} of the {n} samples per fold, fewer "
                    f"than the {need} needed; {fix}."
                )


def auto_batch(batch_size: int | None, n_rows: int) -> int | None:
    """Rows per kNN block against ``n_rows`` rows: ``batch_size`` if given, else all rows up
    to 1024 and blocks of 256 beyond."""
    if batch_size is not None:
        return int(batch_size)
    return None if n_rows <= _AUTO_BATCH_ROWS else _AUTO_BATCH


# ---------------------------------------------------------------------- boundary checks
def check_samples(
    x: ArrayLike, *, dtype: str = "float32", n_features: int | None = None, what: str = "X"
) -> np.ndarray:
    """Check user embeddings and return them as an (n, d) NumPy array of ``dtype``.

    Refuses, with a message naming the fix: non-numeric or ragged input, anything but 2-D,
    no rows, NaN or infinite values, and (when ``n_features`` is given) another feature count.
    """
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise ValueError(f"{what} must be a 2-D array of numbers: {err}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{what} must hold numbers, got dtype {arr.dtype}.")
    if arr.ndim != 2:
        hint = " (one sample: reshape it to (1, d))" if arr.ndim == 1 else ""
        raise ValueError(
            f"{what} must be a 2-D array (n_samples, n_features), got shape {arr.shape}{hint}."
        )
    if arr.shape[0] == 0:
        raise ValueError(
            f"{what} has no samples (shape {arr.shape}): pass at least one row of features "
            "(fitting needs more: as many normals as the cross-fit folds and k need)."
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{what} has no features (shape {arr.shape}).")
    if np.iscomplexobj(arr):
        raise ValueError(f"{what} must hold real numbers, got dtype {arr.dtype}.")
    # Checked before the cast: float64 values beyond ``dtype``'s range would become infinities.
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{what} contains NaN or infinite values in {rows.size} row(s) "
            f"(first: {rows[:5].tolist()}); remove or impute them before scoring."
        )
    limit = float(np.finfo(dtype).max)
    peak = float(np.max(np.abs(arr))) if arr.dtype.kind == "f" else 0.0
    if peak > limit:
        raise ValueError(
            f"{what} has values up to {peak:.3g}, beyond {dtype}'s range "
            f"({limit:.3g}); divide the features by a constant or use dtype='float64'."
        )
    arr = arr.astype(dtype)
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"{what} has {arr.shape[1]} features but the detector was fitted on "
            f"{n_features}; embed with the same backbone."
        )
    return arr
