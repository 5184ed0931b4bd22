"""Fused scores: several detectors, each on its own features, combined into one score.

Each component's score is standardised by the distribution of its *out-of-fold* scores on the
training normals (the cross-fitting that ``threshold="cross_fit"`` already runs), and the fused
score is the mean of those z-scores::

    z_j(x) = (s_j(x) − μ_j) / σ_j,        fused(x) = (1 / J) Σ_j z_j(x),

with μ_j, σ_j the mean and standard deviation of component j's out-of-fold
``decision_scores_``. The fused out-of-fold scores of the training normals are the same
formula applied to the components' out-of-fold scores, and the threshold is their
``1 − contamination`` quantile, so ``contamination`` keeps its meaning: about that share of
new normals score above it. In-sample scores would not do: a training normal typically scores
lower under a model fitted on it, which would bias μ_j and σ_j, the weights and the
threshold.

:func:`fusion_stats` and :func:`fuse_scores` (over a :class:`FusionStats` pytree) are the
functional form; :class:`FusedDetector` is the thin facade with the detectors' surface
(``fit``, ``score_samples``, ``threshold_``, ``save`` / ``load``), taking a mapping
``{component name: features}`` wherever a detector takes an array. Z-scoring and averaging
is the usual combination of unsupervised outlier detectors (Aggarwal & Sathe, *Outlier
Ensembles*, 2017; PyOD's ``standardizer`` then ``combination.average``), here with the
statistics estimated out of fold.
"""

import importlib
import inspect
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax._detector_io import read_npz, stored_class
from msde_jax._files import atomic_write
from msde_jax.detector import NotFittedError

__all__ = [
    "FUSION_FORMAT_VERSION",
    "STD_FLOOR",
    "FusedDetector",
    "FusionStats",
    "SupportsDetect",
    "fuse_scores",
    "fusion_stats",
    "z_scores",
]

FUSION_FORMAT_VERSION = 1

STD_FLOOR = 1e-6
"""σ_j is at least ``STD_FLOOR · max(|μ_j|, 1)``: a component whose out-of-fold scores are
(numerically) constant gets a finite, very large weight instead of a division by zero."""


class SupportsDetect(Protocol):
    """What fusion and :func:`msde_jax.evaluation.evaluate` need from a detector facade."""

    decision_scores_: np.ndarray
    threshold_: float

    def fit(self, X: Any, y: Any = None) -> Any: ...

    def score_samples(self, X: Any) -> np.ndarray: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


class FusionStats(NamedTuple):
    """Per-component standardisation of scores, as :func:`fusion_stats` fits it (a pytree).

    Attributes:
        mean: ``{name: μ_j}``, the mean of component j's out-of-fold scores.
        std: ``{name: σ_j}``, their standard deviation (``ddof=0``), floored at
            ``STD_FLOOR · max(|μ_j|, 1)``.
    """

    mean: dict[str, Any]
    std: dict[str, Any]


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
    if not scores:
        raise ValueError("fusion needs at least one component's scores.")
    mean, std = {}, {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        if s.ndim != 1 or s.size < 2 or not np.isfinite(s).all():
            raise ValueError(
                f"component {name!r}: out-of-fold scores must be a finite 1-D array of at "
                f"least 2 values, got shape {s.shape}."
            )
        mu = float(s.mean())
        mean[name] = mu
        std[name] = max(float(s.std()), floor * max(abs(mu), 1.0))
    return FusionStats(mean, std)


def _check_names(scores: Mapping[str, Any], stats: FusionStats) -> None:
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
    _check_names(scores, stats)
    return {
        name: (jnp.asarray(scores[name]) - stats.mean[name]) / stats.std[name]
        for name in stats.mean
    }


def fuse_scores(scores: Mapping[str, ArrayLike], stats: FusionStats) -> jax.Array:
    """The fused score ``(1 / J) Σ_j (s_j − μ_j) / σ_j``; higher = more anomalous.

    Pure and ``jax.jit``-able (``jax.jit(fuse_scores)(scores, stats)`` with dicts of arrays).

    Args:
        scores: ``{name: (m,) scores}``, one entry per component of ``stats``, each scored on
            the same m samples.
        stats: from :func:`fusion_stats`.

    Returns:
        (m,) fused scores.
    """
    z = z_scores(scores, stats)
    return jnp.mean(jnp.stack(list(z.values())), axis=0)


def _rows(x: Any) -> int:
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    if len(shape) == 0:
        raise ValueError("features must have one row per sample, got a scalar.")
    return int(shape[0])


def _component_class(record: Mapping[str, Any]) -> type:
    """The detector class a saved component names; only classes of ``msde_jax`` are loaded."""
    module, name = record.get("module", ""), record.get("class", "")
    if module != "msde_jax" and not module.startswith("msde_jax."):
        raise ValueError(
            f"component {record.get('name')!r} is a {module}.{name}; only msde_jax detectors load."
        )
    cls = getattr(importlib.import_module(module), name, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_arrays"):
        raise ValueError(f"{module}.{name} is not a detector class with from_arrays.")
    return cls


class FusedDetector:
    """Several detectors, each on its own features, fused into one score and one threshold.

    ``fit`` fits every component on its features of the training normals, each with
    ``threshold="cross_fit"`` so that its ``decision_scores_`` are out of fold, and standardises
    component j by the mean μ_j and standard deviation σ_j of those out-of-fold scores
    (:func:`fusion_stats`). ``score_samples`` is the mean of the components' z-scores
    (:func:`fuse_scores`); ``decision_scores_`` is the same of the out-of-fold scores, and
    ``threshold_`` their ``1 − contamination`` quantile, as each detector's own threshold. The
    components' own ``contamination`` does not enter.

    ``X`` is a mapping ``{component name: features}`` with the components' names, one row per
    sample in every entry (e.g. pooled vectors (n, d) for a Gaussian and patch features
    (n, g, g, c) for a patch bank, from different embedders). Components are fitted in place.
    Scores are batch-independent when every component's are (e.g. not a transductive one).

    Args:
        components: ``{name: detector}``, distinct fitted-or-not detector facades
            (:class:`~msde_jax.MSDEDetector`, ``PatchBankDetector``, …); names are non-empty
            strings without ``"/"``.
        contamination: expected share of anomalies among normals-like data, in (0, 0.5]; the
            threshold is the ``1 − contamination`` quantile of the fused out-of-fold scores.
    """

    def __init__(self, components: Mapping[str, SupportsDetect], *, contamination: float = 0.05):
        self.components = components
        self.contamination = contamination

    # ------------------------------------------------------------------ params
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """``components`` and ``contamination``; with ``deep``, also ``<name>__<param>``."""
        params: dict[str, Any] = {
            "components": self.components,
            "contamination": self.contamination,
        }
        if deep:
            for name, component in dict(self.components).items():
                for key, value in component.get_params().items():
                    params[f"{name}__{key}"] = value
        return params

    def set_params(self, **params: Any) -> "FusedDetector":
        """Set ``components``, ``contamination`` or a component's ``<name>__<param>``."""
        for key, value in params.items():
            if key in ("components", "contamination"):
                setattr(self, key, value)
                continue
            name, sep, sub = key.partition("__")
            if not sep or name not in dict(self.components):
                raise ValueError(
                    f"Unknown parameter {key!r} for FusedDetector; valid ones: components, "
                    f"contamination, <component>__<param> for components "
                    f"{', '.join(map(repr, self.components))}."
                )
            self.components[name].set_params(**{sub: value})
        return self

    def __repr__(self) -> str:
        default = inspect.signature(FusedDetector.__init__).parameters["contamination"].default
        extra = "" if self.contamination == default else f", contamination={self.contamination!r}"
        return f"FusedDetector({dict(self.components)!r}{extra})"

    # ------------------------------------------------------------------ checks
    def _checked_components(self) -> dict[str, SupportsDetect]:
        components = dict(self.components)
        if not components:
            raise ValueError("FusedDetector needs at least one component.")
        for name in components:
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(
                    f"component names must be non-empty strings without '/', got {name!r}."
                )
        if len({id(c) for c in components.values()}) != len(components):
            raise ValueError(
                "the same detector object is given under two names; fitting one would refit the "
                "other: give each name its own detector."
            )
        for name, component in components.items():
            threshold = getattr(component, "threshold", None)
            if threshold != "cross_fit":
                raise ValueError(
                    f"component {name!r} ({type(component).__name__}) has "
                    f"threshold={threshold!r}; fusion needs threshold='cross_fit': each "
                    "component is standardised by its out-of-fold scores on the training "
                    "normals, and in-sample scores are optimistically low."
                )
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination!r}.")
        return components

    def _checked_features(self, X: Any, names: list[str]) -> dict[str, Any]:
        if not isinstance(X, Mapping):
            raise TypeError(
                "FusedDetector takes a mapping {component name: features}, got "
                f"{type(X).__name__}."
            )
        missing = [n for n in names if n not in X]
        extra = [n for n in X if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing features for {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"features for unknown components {', '.join(map(repr, extra))}")
            raise ValueError(
                f"X must have one entry per component ({', '.join(map(repr, names))}): "
                f"{'; '.join(parts)}."
            )
        rows = {name: _rows(X[name]) for name in names}
        if len(set(rows.values())) > 1:
            counts = ", ".join(f"{name}: {n}" for name, n in rows.items())
            raise ValueError(f"every component's features need the same number of rows: {counts}.")
        return {name: X[name] for name in names}

    def _check_fitted(self) -> None:
        if not hasattr(self, "stats_"):
            raise NotFittedError(
                "This FusedDetector is not fitted yet; call fit(X_normal) first (or load one)."
            )

    # ------------------------------------------------------------------ public API
    def fit(self, X: Mapping[str, ArrayLike], y: Any = None) -> "FusedDetector":
        """Fit every component on its features of the normals, then the fusion and threshold.

        Args:
            X: ``{component name: features of the normal samples}``, same rows in every entry.
            y: ignored (scikit-learn API compatibility).

        Returns:
            ``self``, with ``stats_`` (:class:`FusionStats`), ``decision_scores_`` (the fused
            out-of-fold scores), ``threshold_`` and ``labels_`` set.
        """
        del y
        components = self._checked_components()
        X = self._checked_features(X, list(components))
        for name, component in components.items():
            component.fit(X[name])
        oof = {name: np.asarray(c.decision_scores_) for name, c in components.items()}
        self.stats_ = fusion_stats(oof)
        self.decision_scores_ = np.asarray(fuse_scores(oof, self.stats_))
        self.threshold_ = float(np.quantile(self.decision_scores_, 1 - self.contamination))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        return self

    def _raw_scores(self, X: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        self._check_fitted()
        components = dict(self.components)
        X = self._checked_features(X, list(components))
        return {name: c.score_samples(X[name]) for name, c in components.items()}

    def component_scores(self, X: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        """``{name: (m,) z-score}`` of each component (:func:`z_scores`), for inspection."""
        return {k: np.asarray(v) for k, v in z_scores(self._raw_scores(X), self.stats_).items()}

    def score_samples(self, X: Mapping[str, ArrayLike]) -> np.ndarray:
        """Fused anomaly score of each sample, the mean of the components' z-scores.

        **Higher = more anomalous** (PyOD's convention), as the components'.

        Args:
            X: ``{component name: (m, …) features}``, the same m samples in every entry.

        Returns:
            (m,) float scores.
        """
        return np.asarray(fuse_scores(self._raw_scores(X), self.stats_))

    def decision_function(self, X: Mapping[str, ArrayLike]) -> np.ndarray:
        """Same as :meth:`score_samples` (higher = more anomalous), as in PyOD."""
        return self.score_samples(X)

    def predict(self, X: Mapping[str, ArrayLike]) -> np.ndarray:
        """1 for samples whose fused score is above ``threshold_`` (anomalous), else 0."""
        return (self.score_samples(X) > self.threshold_).astype(int)

    def fit_predict(self, X: Mapping[str, ArrayLike], y: Any = None) -> np.ndarray:
        """Fit on ``X`` and return ``labels_``: the 0/1 labels of the fused out-of-fold scores."""
        return self.fit(X, y).labels_

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted detector as JSON-able metadata and flat named arrays.

        Each component's arrays (its own ``to_arrays``) are prefixed ``<name>/``; the metadata
        records each component's class, its metadata and the fusion format version.
        """
        self._check_fitted()
        records, arrays = [], {}
        for name, component in dict(self.components).items():
            meta, sub = component.to_arrays()
            cls = type(component)
            records.append(
                {"name": name, "module": cls.__module__, "class": cls.__qualname__, "meta": meta}
            )
            arrays.update({f"{name}/{key}": np.asarray(value) for key, value in sub.items()})
        names = list(self.stats_.mean)
        arrays["fusion.mean"] = np.array([self.stats_.mean[n] for n in names], np.float64)
        arrays["fusion.std"] = np.array([self.stats_.std[n] for n in names], np.float64)
        arrays["decision_scores_"] = np.asarray(self.decision_scores_)
        meta = {
            "detector": type(self).__qualname__,
            "module": type(self).__module__,
            "fusion_format_version": FUSION_FORMAT_VERSION,
            "params": {"contamination": self.contamination},
            "components": records,
            "threshold_": self.threshold_,
            "metadata": getattr(self, "metadata_", {}),
        }
        return meta, arrays

    @classmethod
    def from_arrays(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> "FusedDetector":
        """Rebuild a detector from :meth:`to_arrays`; each component with its class's own."""
        version = meta.get("fusion_format_version")
        if version != FUSION_FORMAT_VERSION:
            raise ValueError(
                f"saved FusedDetector has fusion format version {version}; this msde_jax reads "
                f"version {FUSION_FORMAT_VERSION}. Refit the detector with this version."
            )
        components = {}
        for record in meta["components"]:
            name = record["name"]
            prefix = f"{name}/"
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            components[name] = _component_class(record).from_arrays(record["meta"], sub)
        det = cls(components, **meta["params"])
        names = list(components)
        det.stats_ = FusionStats(
            dict(zip(names, np.asarray(arrays["fusion.mean"]).tolist(), strict=True)),
            dict(zip(names, np.asarray(arrays["fusion.std"]).tolist(), strict=True)),
        )
        det.decision_scores_ = np.asarray(arrays["decision_scores_"])
        det.threshold_ = float(meta["threshold_"])
        det.labels_ = (det.decision_scores_ > det.threshold_).astype(int)
        det.metadata_ = dict(meta.get("metadata", {}))
        return det

    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> None:
        """Save the fusion and every component to one ``.npz`` file at ``path``.

        Plain arrays and a JSON string (no pickle), written atomically.

        Args:
            path: the file to write (written as given, no suffix added).
            metadata: JSON-serialisable extras (e.g. the embedders behind each component);
                :meth:`load` returns them as ``metadata_``.
        """
        meta, arrays = self.to_arrays()
        meta["metadata"] = metadata or {}
        atomic_write(
            path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays), suffix=".npz"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FusedDetector":
        """Load a detector written by :meth:`save`; it gives identical scores.

        ``load_detector`` loads it too (the metadata names this class and module).

        Raises:
            ValueError: not a saved FusedDetector, or one of another fusion format version.
        """
        meta, arrays = read_npz(path, what=cls.__qualname__)
        if stored_class(meta) != cls.__qualname__:
            raise ValueError(
                f"{path} holds a {stored_class(meta)}, not a {cls.__qualname__}; load it with "
                "msde_jax.load_detector."
            )
        return cls.from_arrays(meta, arrays)
