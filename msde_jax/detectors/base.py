"""What every detector facade shares: parameters, fitted checks, out-of-fold thresholds,
predictions and persistence.

:class:`Detector` is the private base of :class:`~msde_jax.MSDEDetector` and
:class:`~msde_jax.PatchBankDetector`. A subclass declares its hyperparameters as keyword-only
constructor arguments (stored under the same names, as scikit-learn expects), fits in ``fit``
(setting ``state_`` and calling :meth:`Detector._set_scores`), scores in ``score_samples``, and
describes its fitted attributes by three hooks (``_fitted_meta``, ``_fitted_arrays``,
``_restore``); the base turns those into ``to_arrays`` / ``from_arrays`` and ``save`` /
``load``. Every subclass (``FusedDetector`` too) is registered by its class name, which the
saved metadata stores as ``"detector"``, so :func:`load_detector` returns the right class for
any saved file; a class is only ever looked up by that name (:func:`detector_class`), never
imported from a module a file names.
"""

import inspect
import math
import os
from collections.abc import Callable
from typing import Any, Self

import numpy as np
from jax.typing import ArrayLike

from msde_jax.detectors.persistence import (
    check_version,
    read_npz,
    state_arrays,
    stored_class,
    write_detector_file,
)

__all__ = [
    "Detector",
    "NotFittedError",
    "check_saved_floats",
    "detector_class",
    "detector_from_arrays",
    "load_detector",
    "out_of_fold_scores",
    "quantile_threshold",
]

# Detector classes by name, filled by Detector.__init_subclass__.
_DETECTORS: dict[str, type["Detector"]] = {}


def no_maps_message(detector: Any) -> str:
    """Why ``detector`` has no heatmaps, and what to use instead."""
    return (
        f"{type(detector).__name__} scores one pooled vector per image: its score has no "
        "spatial resolution, so there are no heatmaps. Use PatchBankDetector on "
        "Embedder(features='patches') features (the default of `msde-jax fit`) for maps."
    )


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector is used before ``fit`` (as scikit-learn's ``NotFittedError``)."""


def check_saved_floats(name: str, a: np.ndarray, *, where: str) -> None:
    """Refuse a saved float array that :meth:`Detector.save` never writes: another float
    width than float32 / float64 (scoring would run in it), or NaN / infinite values (they
    would become NaN or infinite scores). ``where`` starts the message."""
    if a.dtype.kind != "f":
        return
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{where}: {name!r} is {a.dtype}; saved detectors hold float32 or float64."
        )
    if not np.isfinite(a).all():
        raise ValueError(
            f"{where}: {name!r} holds NaN or infinite values, which no fitted detector has; "
            "restore the file from a copy or refit."
        )


# ---------------------------------------------------------------------- thresholds
def out_of_fold_scores(
    order: np.ndarray, n_folds: int, fit_score: Callable[[np.ndarray, np.ndarray], ArrayLike]
) -> np.ndarray:
    """Out-of-fold scores of n samples: each fold scored by a model fitted on the others.

    Fold f holds ``order[f::n_folds]`` (``order`` a permutation of the n samples, e.g. their
    content order, so that the folds do not depend on the row order), both index sets sorted.

    Args:
        order: (n,) permutation of ``range(n)``.
        n_folds: number of folds, at most n.
        fit_score: ``fit_score(train_indices, held_indices)`` fits on the first and returns the
            scores of the second.

    Returns:
        (n,) float64 scores.
    """
    n = order.shape[0]
    scores = np.empty(n, np.float64)
    for fold in range(n_folds):
        held = np.sort(order[fold::n_folds])
        rest = np.setdiff1d(np.arange(n), held)  # keeps the given row order
        scores[held] = np.asarray(fit_score(rest, held))
    return scores


def quantile_threshold(scores: np.ndarray, contamination: float) -> float:
    """The ``1 − contamination`` quantile of (out-of-fold) scores of normals."""
    return float(np.quantile(scores, 1 - contamination))


# ---------------------------------------------------------------------- the base facade
class Detector:
    """Base of the detector facades (PyOD conventions: higher score = more anomalous)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _DETECTORS[cls.__name__] = cls

    # ------------------------------------------------------------------ params
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

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters (as scikit-learn's ``set_params``); returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Unknown parameter {name!r} for {type(self).__name__}; "
                    f"valid ones: {', '.join(valid)}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(X_normal) first "
                "(or load one)."
            )

    # ------------------------------------------------------------------ fit-time vs now
    # Score-time parameters: read when scoring, so they may change after fit (a subclass lists
    # its own). Every other parameter takes effect at the next fit; until then scoring uses
    # its value at fit time, kept in the state's config.
    _score_params: tuple[str, ...] = ()
    # Parameters that change how a score is computed (block sizes), never its value.
    _neutral_params: tuple[str, ...] = ("batch_size",)

    def _fit_params(self) -> dict[str, Any]:
        """The parameters the fitted state was fitted with: its ``config``'s fields (the
        current ones for a state without a config, which has nothing to compare)."""
        config = getattr(self.state_, "config", None)
        if config is None:
            return self.get_params()
        return {name: getattr(config, name) for name in self._param_names()}

    def _scoring_params(self) -> dict[str, Any]:
        """The fit-time parameters with the current values of the score-time ones."""
        return {**self._fit_params(), **{name: getattr(self, name) for name in self._score_params}}

    def _changed_since_fit(self, names: Any) -> list[tuple[str, Any, Any]]:
        """``(name, now, at fit)`` of each of ``names`` whose value differs from fit time."""
        fitted = self._fit_params()
        return [(n, getattr(self, n), fitted[n]) for n in names if getattr(self, n) != fitted[n]]

    def _score_changes(self) -> list[tuple[str, Any, Any]]:
        """``(name, now, at fit)`` of each score-time parameter changed since fit (a hook: a
        fused detector reports its components' as ``<name>__<param>``)."""
        names = [n for n in self._score_params if n not in self._neutral_params]
        return self._changed_since_fit(names)

    def _check_threshold(self) -> None:
        """Refuse to compare fresh scores with ``threshold_`` when a score-time parameter no
        longer has its fit-time value: the threshold is on the fitted score's scale."""
        self._check_fitted()
        changed = self._score_changes()
        if changed:
            fitted = ", ".join(f"{n}={at_fit!r}" for n, _, at_fit in changed)
            now = ", ".join(f"{n}={value!r}" for n, value, _ in changed)
            which = ", ".join(n for n, _, _ in changed)
            raise ValueError(
                f"threshold_ was computed for {fitted}, but the detector now scores with {now}; "
                f"refit, or set {which} back (set_params({fitted})) to predict."
            )

    def _set_scores(self, decision_scores: np.ndarray, threshold: float) -> None:
        self.decision_scores_ = np.asarray(decision_scores)
        self.threshold_ = float(threshold)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)

    # ------------------------------------------------------------------ predictions
    def score_samples(self, X: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # Whether score_maps gives heatmaps (a detector that scores patches sets it).
    has_maps: bool = False

    def score_maps(self, X: ArrayLike, *, size: int = 224, sigma: float | None = None):
        """Anomaly heatmaps; only detectors that score patches have them.

        Raises:
            ValueError: always here: this detector scores one vector per image, so its score
                has no place in the image (a subclass that scores patches overrides this).
        """
        del X, size, sigma
        raise ValueError(no_maps_message(self))

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Same as :meth:`score_samples` (higher = more anomalous), as in PyOD."""
        return self.score_samples(X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """1 for samples scoring above ``threshold_`` (anomalous), else 0.

        Raises:
            ValueError: a score-time parameter (e.g. ``score``, ``reduce``) was changed since
                fit, so ``threshold_`` is on another score's scale.
        """
        self._check_threshold()
        return (self.score_samples(X) > self.threshold_).astype(int)

    def fit_predict(self, X: ArrayLike, y: Any = None) -> np.ndarray:
        """Fit on ``X`` and return ``labels_``: its out-of-fold (or in-sample) 0/1 labels."""
        return self.fit(X, y).labels_

    # ------------------------------------------------------------------ persistence
    def _fitted_meta(self) -> dict[str, Any]:
        """JSON-able fitted scalars beyond ``threshold_`` (a subclass hook)."""
        return {}

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays beyond ``decision_scores_`` (a subclass hook): the state's."""
        return state_arrays(self.state_)

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Set ``state_`` and the fitted scalars from saved ones (a subclass hook)."""
        raise NotImplementedError

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted detector as JSON-able metadata and flat named NumPy arrays.

        ``meta`` holds ``"detector"`` (the class name), ``"params"`` (:meth:`get_params`),
        ``"threshold_"``, the other fitted scalars and ``"metadata"`` (``metadata_`` of a
        loaded detector, else ``{}``); ``arrays`` holds ``"decision_scores_"`` and the state's
        arrays by dotted path (``"state.center"``, …). :meth:`from_arrays` is the inverse,
        and :meth:`save` writes exactly these (plus the format version).

        Raises:
            ValueError: a parameter other than ``batch_size`` was changed since fit: the
                saved parameters are the ones the fitted state and ``threshold_`` were made
                with, so refit or set it back first.
        """
        self._check_fitted()
        names = [n for n in self._param_names() if n not in self._neutral_params]
        changed = self._changed_since_fit(names)
        if changed:
            now = ", ".join(f"{n}={value!r}" for n, value, _ in changed)
            fitted = ", ".join(f"{n}={at_fit!r}" for n, _, at_fit in changed)
            raise ValueError(
                f"This {type(self).__name__} was fitted with {fitted}, but its parameters now "
                f"say {now}; a saved detector holds the parameters it was fitted with. Refit "
                f"(fit applies them), or set_params({fitted}) to save the fitted one."
            )
        meta = {
            "detector": type(self).__name__,
            "params": self.get_params(),
            **self._fitted_meta(),
            "threshold_": self.threshold_,
            "metadata": dict(getattr(self, "metadata_", {})),
        }
        arrays = {**self._fitted_arrays(), "decision_scores_": np.asarray(self.decision_scores_)}
        return meta, arrays

    @classmethod
    def _check_class(cls, meta: dict[str, Any], where: str = "the saved detector") -> None:
        name = stored_class(meta)
        if name != cls.__name__:
            raise ValueError(
                f"{where} holds a {name}, not a {cls.__name__}; load it with {name}.load "
                "or msde_jax.load_detector."
            )

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """Rebuild a fitted detector from :meth:`to_arrays`' ``(meta, arrays)``.

        Raises:
            ValueError: ``meta`` names another detector class, or an array is missing.
        """
        cls._check_class(meta)
        if "decision_scores_" not in arrays:
            raise ValueError(f"not a saved {cls.__name__}: 'decision_scores_' is missing.")
        params = cls._checked_meta(meta)
        cls._check_arrays(meta, arrays)
        try:
            det = cls(**params)
            det._restore(meta, arrays)
        except (KeyError, TypeError) as err:  # a scalar the state needs is missing or odd
            raise ValueError(f"not a valid saved {cls.__name__}: {err!r}.") from err
        det._set_scores(arrays["decision_scores_"], meta["threshold_"])
        det.metadata_ = dict(meta.get("metadata", {}))
        return det

    # Each fitted array's dtype kind and shape, in named dimensions ("" for a scalar), that
    # from_arrays checks before anything is built (a subclass lists its state's arrays; a
    # dimension named in _meta_dims takes its value from the metadata, the others must merely
    # agree across arrays). Names not listed are refused.
    _array_schema: dict[str, tuple[str, str]] = {}
    _meta_dims: dict[str, str] = {}

    @classmethod
    def _checked_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """The saved constructor parameters, after checking the metadata's structure."""
        params = meta.get("params")
        if not isinstance(params, dict):
            raise ValueError(f"not a valid saved {cls.__name__}: 'params' is not a JSON object.")
        unknown = sorted(set(params) - set(cls._param_names()))
        if unknown:
            raise ValueError(
                f"not a valid saved {cls.__name__}: unknown parameters {unknown} (written by "
                "another version, or edited)."
            )
        threshold = meta.get("threshold_")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
        ):
            raise ValueError(
                f"not a valid saved {cls.__name__}: 'threshold_' must be a finite number, got "
                f"{threshold!r}."
            )
        if not isinstance(meta.get("metadata", {}), dict):
            raise ValueError(f"not a valid saved {cls.__name__}: 'metadata' is not an object.")
        for name in cls._meta_dims.values():
            value = meta.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"not a valid saved {cls.__name__}: {name!r} must be a positive integer, "
                    f"got {value!r}."
                )
        return params

    @classmethod
    def _check_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Refuse arrays of an unexpected name, dtype kind, rank or size (see _array_schema)."""
        if not cls._array_schema:
            return
        schema = {**cls._array_schema, "decision_scores_": ("f", "images")}
        unknown = sorted(set(arrays) - set(schema))
        if unknown:
            raise ValueError(f"not a valid saved {cls.__name__}: unexpected arrays {unknown}.")
        dims = {dim: meta[name] for dim, name in cls._meta_dims.items()}
        for name, (kinds, shape) in schema.items():
            if name not in arrays:
                continue  # a missing one is reported when the state is built
            a = np.asarray(arrays[name])
            named = shape.split()
            if a.dtype.kind not in kinds or a.ndim != len(named):
                raise ValueError(
                    f"not a valid saved {cls.__name__}: {name!r} is {a.dtype} of shape "
                    f"{a.shape}, expected {len(named)} axes of kind {kinds!r}."
                )
            check_saved_floats(name, a, where=f"not a valid saved {cls.__name__}")
            for dim, size in zip(named, a.shape, strict=True):
                if dims.setdefault(dim, size) != size:
                    raise ValueError(
                        f"not a valid saved {cls.__name__}: {name!r} has shape {a.shape}, "
                        f"which disagrees with the other arrays ({dim} = {dims[dim]})."
                    )

    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> None:
        """Save the configuration and every fitted array to ``path`` (an ``.npz`` file).

        Plain arrays and a JSON string: loading executes no code (no pickle). Written
        atomically: a reader sees the old file or the whole new one.

        Args:
            path: the file to write (written as given, no suffix added).
            metadata: JSON-serialisable extras stored alongside (e.g. the embedder that produced
                the features); :meth:`load` returns them as ``metadata_``.
        """
        meta, arrays = self.to_arrays()
        write_detector_file(path, {**meta, "metadata": metadata or {}}, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        """Load a detector written by :meth:`save`; it gives identical scores.

        Raises:
            ValueError: not a saved detector, one of another class (use
                :func:`~msde_jax.load_detector` for any class) or of another format version.
        """
        meta, arrays = read_npz(path, what=cls.__name__)
        cls._check_class(meta, where=str(path))
        check_version(meta, path)
        try:
            return cls.from_arrays(meta, arrays)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def detector_class(name: Any, where: str | os.PathLike) -> type[Detector]:
    """The registered detector class called ``name``, looked up by name only.

    Nothing is imported from what a file says: a saved name can only pick one of the classes
    already registered (every :class:`Detector` subclass, ``FusedDetector`` included).

    Raises:
        ValueError: no detector class has that name (``where`` names the file or the part).
    """
    cls = _DETECTORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"{where} holds a {name!r}, which is not a detector of this msde_jax "
            f"(known: {', '.join(sorted(_DETECTORS))})."
        )
    return cls


def detector_from_arrays(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], *, where: str | os.PathLike
) -> Detector:
    """The detector of the class ``meta`` names, after checking its format version.

    Raises:
        ValueError: an unknown class, or another format version (``where`` names the file or
            the part, e.g. a fused detector's component).
    """
    cls = detector_class(stored_class(meta), where)
    check_version(meta, where)
    return cls.from_arrays(meta, arrays)


def load_detector(path: str | os.PathLike) -> Detector:
    """Load any saved detector, as the class its file names (``MSDEDetector``, …).

    Raises:
        ValueError: not a saved detector, an unknown class, or another format version.
    """
    meta, arrays = read_npz(path)
    try:
        return detector_from_arrays(meta, arrays, where=path)
    except ValueError as err:
        message = str(err)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from err
