"""The MSDE detector's configuration: every hyperparameter, validated, and the paper preset.

:class:`DetectorConfig` is a frozen, hashable dataclass (a static pytree node); the pure fit
and score of :mod:`msde_jax.detectors.msde` read it.
"""

import dataclasses
import math
from typing import Any, ClassVar

import jax
import numpy as np

from msde_jax.core.gaussian import COVARIANCE_ESTIMATORS
from msde_jax.core.mean_shift import NEIGHBOR_SEARCHES
from msde_jax.detectors.config import (
    UNEVEN,
    BaseConfig,
    check_bool,
    check_choice,
    check_int,
    check_real,
    param,
)

__all__ = [
    "BLOCK_ORDERS",
    "MODES",
    "NORMALIZATIONS",
    "PAPER_PARAMS",
    "SCORES",
    "THRESHOLDS",
    "DetectorConfig",
]

MODES = ("inductive", "transductive", "none")
# The numbers the MSDE programs take as data, not in their key: the fit program all three
# (a new step size, tolerance or ridge does not recompile it), the score program the shift's
# two (DetectorState.for_scoring).
_SHIFT_NUMBERS = ("step_size", "tol")
_FIT_NUMBERS = (*_SHIFT_NUMBERS, "ridge")
SCORES = ("mahalanobis", "displacement", "knn")
THRESHOLDS = ("cross_fit", "chi2", "none")
BLOCK_ORDERS = ("content", "given")
NORMALIZATIONS = ("none", "l2")

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


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorConfig(BaseConfig):
    """Every hyperparameter of the MSDE detector, validated on construction.

    The shared parameters of :class:`~msde_jax.detectors.config.BaseConfig` and the MSDE
    pipeline's own; the defaults are the inductive detector's, :meth:`paper` is the published
    preset. Frozen and hashable. It travels inside
    :class:`~msde_jax.detectors.msde_state.DetectorState` as a static pytree node:
    ``jax.jit(score_detector)(state, x)`` specialises on it (a different config compiles anew)
    and traces only the arrays. The one pairing it does not refuse, ``threshold="chi2"`` with
    a score other than ``"mahalanobis"``, is refused by
    :func:`~msde_jax.detectors.msde.fit_detector`, which computes the threshold; a fitted
    state can be scored with any score.
    """

    score_params: ClassVar[tuple[str, ...]] = ("score", "score_neighbors", "batch_size")

    mode: str = param(
        "inductive",
        '``"inductive"`` (each query shifted toward the fixed, shifted training normals; '
        'batch-independent), ``"transductive"`` (the published joint shift of the training '
        'normals and the whole test batch: a score depends on the batch) or ``"none"`` (no '
        "shift). See the class docstring.",
    )
    n_neighbors: int = param(15, "q, neighbours of the fuzzy graph behind the density weights.")
    block_order: str = param(
        "content",
        '``"content"`` assigns rows to the published weight blocks by a hash of their values, '
        'so results do not depend on the row order; ``"given"`` uses consecutive rows as the '
        "published code does (the :meth:`paper` preset).",
    )
    index_sum_quirk: bool = param(
        False,
        "reproduce the published code's weight bug (:func:`~msde_jax.core.density_weights`); "
        "for parity checks only.",
    )
    n_components: int | float = param(
        256,
        "PCA components, capped at ``min(d, n − 1)``; an int, or a float in (0, 1) for a "
        "fraction of explained variance.",
    )
    covariance: str = param(
        "ridge",
        '``"ridge"`` (the paper\'s: unbiased covariance + ``ridge``·I), ``"empirical"``, '
        '``"ledoit_wolf"`` or ``"oas"``.',
    )
    ridge: float = param(1e-4, 'added to the covariance diagonal with ``covariance="ridge"``.')
    normalize: str = param(
        "none",
        '``"l2"`` divides each row by its Euclidean norm before anything else (before '
        'standardising); with ``standardize=False`` and ``score="knn"`` the kNN distance is '
        'then the cosine one, √(2 − 2 cos). ``"none"`` (the default) keeps rows as given.',
    )
    standardize: bool = param(
        True,
        "standardise features with the training mean and standard deviation (a feature "
        "whose deviation is 0, or below the dtype's smallest normal number, is only centred).",
    )
    score: str = param(
        "mahalanobis",
        '``"mahalanobis"``, ``"displacement"`` (the total MSDE displacement) or ``"knn"`` '
        "(the distance to the nearest shifted training normals; not with "
        '``mode="transductive"``).',
    )
    score_neighbors: int = param(1, 'neighbours averaged by ``score="knn"`` (1: the nearest).')
    threshold: str = param(
        "cross_fit",
        '``"cross_fit"`` (the ``1 − contamination`` quantile of out-of-fold scores of the '
        'training normals), ``"chi2"`` (the square root of that quantile of '
        'χ²(n_components), the law of a squared Mahalanobis distance) or ``"none"`` (the '
        "model alone, without scoring any fold: no ``threshold_``, so ``predict`` refuses; "
        "for ranking, as synthetic validation does).",
    )
    neighbors: str = param(
        "auto",
        "the blurring shift's neighbour search (fit, and the transductive score): "
        '``"exact"``, ``"approximate"`` (:func:`~msde_jax.core.approximate_knn`\'s tree) or '
        '``"auto"`` (:func:`~msde_jax.core.mean_shift`: by the rows shifted; a cross-fit\'s '
        "folds search as the whole fit does).",
    )

    @classmethod
    def paper(cls, **overrides: Any) -> "DetectorConfig":
        """The published medical pipeline, as :meth:`msde_jax.MSDEDetector.paper`."""
        return cls(**{**PAPER_PARAMS, **overrides})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        check_choice("normalize", self.normalize, NORMALIZATIONS)
        check_choice("block_order", self.block_order, BLOCK_ORDERS)
        check_choice("covariance", self.covariance, COVARIANCE_ESTIMATORS)
        check_choice("score", self.score, SCORES)
        check_choice("threshold", self.threshold, THRESHOLDS)
        check_choice("neighbors", self.neighbors, NEIGHBOR_SEARCHES)
        check_int("n_neighbors", self.n_neighbors)
        check_int("n_folds", self.n_folds)
        if self.n_folds < 2 and self.threshold == "cross_fit":
            raise ValueError("threshold='cross_fit' needs n_folds >= 2.")
        largest = float(np.finfo(np.float32).max)  # beyond: inf in float32, NaN scores
        check_real("ridge", self.ridge, "finite, >= 0 and <= 3.4e38", lambda v: 0 <= v <= largest)
        for name in ("standardize", "index_sum_quirk"):
            check_bool(name, getattr(self, name))
        nc = self.n_components
        if isinstance(nc, bool | np.bool_) or not (
            (isinstance(nc, int | np.integer) and nc >= 1)
            or (isinstance(nc, float | np.floating) and 0 < nc < 1)
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

    def _min_samples_reason(self) -> tuple[str, str | None]:
        """Why ``min_samples`` rows are needed, and the parameter that lowers it (``None``:
        only more samples help)."""
        if self.score == "knn" and self.score_neighbors > self._min_fit_samples:
            return f"score_neighbors={self.score_neighbors} neighbours", "score_neighbors"
        return (f"k={self.k} neighbours", "k") if self.mode != "none" else ("a covariance", None)

    def unread_by_score(self) -> tuple[str, ...]:
        """``fit_only``; the PCA's and the Gaussian's parameters and ``standardize`` and
        ``dtype`` (the state's arrays carry them); the density weights' outside the
        transductive mode (the inductive shift moves toward the fitted weights); the shift's
        where no shift is scored (``mode="none"``, ``score="knn"``, which has no transductive
        mode); and ``score_neighbors`` or ``batch_size`` where no kNN search is run."""
        unread = [*self.fit_only, "n_components", "covariance", "ridge", "standardize", "dtype"]
        if self.mode != "transductive":
            unread += ["density", "n_neighbors", "block_order", "index_sum_quirk", "neighbors"]
        if self.mode == "none" or self.score == "knn":
            unread += ["k", "step_size", "max_iter", "tol"]
        if self.score == "knn":
            unread.append("mode")  # read only to choose a shift
        else:
            unread.append("score_neighbors")
            if self.mode == "none":
                unread.append("batch_size")
        return tuple(unread)

    def fit_program(self) -> "DetectorConfig":
        """This config with the parameters the fit program (after standardising) never reads
        at their defaults: ``fit_only``, the score's, ``block_order`` (the blocks' order
        reaches it as an array), ``normalize`` and ``standardize`` (applied before it),
        ``n_components`` and ``dtype`` (a static argument and the arrays carry them), and the
        traced ``step_size``, ``tol`` and ``ridge``; the mode only as shift or no shift, and
        with no shift the shift's and the density weights' parameters too."""
        unread = [*self.fit_only, "score", "score_neighbors", "normalize", "standardize"]
        unread += ["block_order", "n_components", "dtype", *_FIT_NUMBERS]
        if self.mode == "none":
            unread += ["k", "max_iter", "neighbors", "batch_size"]
            unread += ["density", "n_neighbors", "index_sum_quirk"]
        else:
            unread.append("mode")  # the inductive and the transductive fit are one
        return self.with_defaults(unread)

    @property
    def content_ordered(self) -> bool:
        """Whether the published weight blocks follow a hash of the rows, not their order."""
        return self.density == "msde" and self.block_order == "content"

    def check_n_samples(
        self, n: int, largest_fold: int | None = None, *, scoring: bool = False
    ) -> None:
        """Refuse ``n`` training rows if too few to fit (k neighbours, components, folds);
        ``largest_fold``: the most rows a cross-fit fold holds out (uneven with groups),
        default ⌈n / n_folds⌉ (more where copies of one sample, or with groups a volume's
        slices, share a fold); ``scoring``: refuse a ``score_neighbors`` set after a fit on
        ``n`` rows, which has no more neighbours to give."""
        need = self.min_samples
        reason, fix = self._min_samples_reason()
        smaller = f" or a smaller {fix}" if fix else ""
        if scoring:
            if n < need:
                raise ValueError(
                    f"score='knn' with score_neighbors={self.score_neighbors} needs that many "
                    f"training samples, but the detector was fitted on {n}; set a smaller "
                    "score_neighbors or refit on more normal samples."
                )
            return
        if n < need:
            raise ValueError(
                f"Fitting needs at least {need} training samples for {reason}, got {n}; "
                f"pass more normal samples{smaller}."
            )
        if self.threshold == "cross_fit":
            if n < self.n_folds:
                raise ValueError(
                    f"threshold='cross_fit' needs at least n_folds={self.n_folds} training "
                    f"samples (one fold each), got {n}; pass more normal samples or lower "
                    "n_folds."
                )
            even = math.ceil(n / self.n_folds)
            held = even if largest_fold is None else largest_fold
            if n - held < need:
                grouped = "" if held <= even else f" ({UNEVEN})"
                chi2 = ", or use threshold='chi2'" if self.score == "mahalanobis" else ""
                raise ValueError(
                    f"threshold='cross_fit' fits a fold on as few as {n - held} of the {n} "
                    f"samples{grouped}, fewer than the {need} needed for {reason}; pass more "
                    f"normal samples, raise n_folds (each fold then holds out fewer){smaller}"
                    f"{chi2}."
                )
