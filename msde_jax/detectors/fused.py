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

``calibration="rank"`` maps each component's score instead to a tail score
c_j(s) = −log p_j(s), with p_j a continuous conformal p-value against component j's
out-of-fold scores (:mod:`msde_jax.detectors.calibration`), and averages those. A z-score
assumes a component's normal scores are roughly symmetric and light-tailed; a tail score puts
every component on the same scale whatever its distribution (under the null each c_j is about
a standard exponential), so one heavy-tailed component cannot dominate the mean. The fused
out-of-fold scores are then calibrated leave-one-out (each training normal against the other
normals' scores), so the threshold keeps its false-positive promise.
"""

import inspect
from collections.abc import Mapping
from typing import Any, Self

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.detectors.base import Detector, SupportsDetect
from msde_jax.detectors.calibration import (
    CALIBRATIONS,
    STD_FLOOR,
    FusionStats,
    RankCalibration,
    calibrated_scores,
    fuse_scores,
    fusion_stats,
    loo_tail_scores,
    rank_calibration,
    z_scores,
)
from msde_jax.detectors.config import check_real
from msde_jax.detectors.fitting import quantile_threshold
from msde_jax.detectors.persistence import check_saved_floats, detector_from_arrays, with_version

__all__ = [
    "CALIBRATIONS",
    "STD_FLOOR",
    "FusedDetector",
    "FusionStats",
    "RankCalibration",
    "SupportsDetect",
    "calibrated_scores",
    "fuse_scores",
    "fusion_stats",
    "z_scores",
]


def _check_contamination(value: Any) -> None:
    check_real("contamination", value, "in (0, 0.5]", lambda v: 0 < v <= 0.5)


def _check_calibration(value: Any) -> None:
    if not isinstance(value, str) or value not in CALIBRATIONS:
        raise ValueError(
            f"calibration={value!r} is not valid; choose one of "
            f"{', '.join(map(repr, CALIBRATIONS))}."
        )


def _rows(name: str, x: Any) -> int:
    """The samples of component ``name``'s features ``x``: its first axis, of 2 or more."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"component {name!r}: features must be an array: {err}") from err
    if len(shape) < 2:
        one = " (one sample: reshape it to (1, d))" if len(shape) == 1 else ""
        raise ValueError(
            f"component {name!r}: features must have one row per sample, got shape "
            f"{tuple(shape)}{one}."
        )
    return int(shape[0])


def _component_names(meta: dict[str, Any]) -> list[str]:
    """The component names a saved fused detector lists, after checking the list."""
    records = meta.get("components")
    if (
        not isinstance(records, list)
        or not records
        or not all(
            isinstance(r, dict)
            and isinstance(r.get("name"), str)
            and isinstance(r.get("meta"), dict)
            for r in records
        )
    ):
        raise ValueError("not a saved FusedDetector: no list of {name, meta} components.")
    names = [r["name"] for r in records]
    bad = [n for n in names if not n or "/" in n]
    if bad:
        raise ValueError(
            f"not a valid saved FusedDetector: component name {bad[0]!r} (names are non-empty, "
            "without '/')."
        )
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"not a valid saved FusedDetector: components {twice} listed twice.")
    return names


def _check_saved_contamination(value: Any, calibration: Any) -> None:
    try:
        _check_contamination(value)
        _check_calibration(calibration)
    except ValueError as err:
        raise ValueError(f"not a valid saved FusedDetector: {err}") from err


class FusedDetector(Detector):
    """Several detectors, each on its own features, fused into one score and one threshold.

    ``fit`` fits every component on its features of the training normals, each with
    ``threshold="cross_fit"`` so that its ``decision_scores_`` are out of fold, and calibrates
    component j on those out-of-fold scores: with ``calibration="zscore"`` by their mean μ_j and
    standard deviation σ_j (:func:`fusion_stats`), with ``"rank"`` by their empirical
    distribution (:func:`~msde_jax.detectors.calibration.rank_calibration`: a score becomes
    −log of its continuous conformal p-value, with an exponential tail beyond the largest).
    ``score_samples`` is the mean of the components' calibrated scores (:func:`fuse_scores`);
    ``decision_scores_`` is the same of the out-of-fold scores (each calibrated leave-one-out
    under ``"rank"``), and ``threshold_`` their ``1 − contamination`` quantile, as each
    detector's own threshold. The components' own ``contamination`` does not enter.

    ``X`` is a mapping ``{component name: features}`` with the components' names, one row per
    sample in every entry (e.g. pooled vectors (n, d) for a Gaussian and patch features
    (n, g, g, c) for a patch bank, from different embedders). Components are fitted in place.
    Scores are batch-independent when every component's are (e.g. not a transductive one).

    The fitted state (``state_``, also ``stats_``) is the :class:`FusionStats` or the
    :class:`~msde_jax.detectors.calibration.RankCalibration`; the components keep their own.
    Parameters, predictions, ``labels_`` and persistence are the detectors'
    (:class:`~msde_jax.detectors.base.Detector`); ``get_params`` adds each component's
    parameters as ``<name>__<param>``, and a saved file holds every component (with its format
    version).

    Args:
        components: ``{name: detector}``, distinct fitted-or-not detector facades
            (:class:`~msde_jax.MSDEDetector`, ``PatchBankDetector``, …); names are non-empty
            strings without ``"/"``.
        contamination: expected share of anomalies among normals-like data, in (0, 0.5]; the
            threshold is the ``1 − contamination`` quantile of the fused out-of-fold scores.
        calibration: ``"zscore"`` (the default, and that of files saved before the option) or
            ``"rank"``: how each component's score is put on a common scale before the mean.
    """

    features = "mapping"  # {component name: features}

    def __init__(
        self,
        components: Mapping[str, SupportsDetect],
        *,
        contamination: float = 0.05,
        calibration: str = "zscore",
    ):
        self.components = components
        self.contamination = contamination
        self.calibration = calibration

    @property
    def stats_(self) -> FusionStats | RankCalibration:
        """The fitted :class:`FusionStats` (or ``RankCalibration``): the ``state_``."""
        self._check_fitted()
        return self.state_

    # ------------------------------------------------------------------ params
    @classmethod
    def param_names(cls) -> list[str]:
        """``components`` (positional), the keyword-only ``contamination`` and
        ``calibration``."""
        return ["components", *super().param_names()]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """``components``, ``contamination`` and ``calibration``; with ``deep``, also
        ``<name>__<param>``."""
        params = super().get_params()
        if deep and isinstance(self.components, Mapping):  # else fit says what is wrong
            for name, component in self.components.items():
                for key, value in component.get_params().items():
                    params[f"{name}__{key}"] = value
        return params

    def set_params(self, **params: Any) -> Self:
        """Set ``components``, ``contamination``, ``calibration`` or a component's
        ``<name>__<param>``."""
        nested = {key: value for key, value in params.items() if "__" in key}
        components = params.get("components", self.components)  # new ones first, as Pipeline
        for key in nested:
            if key.partition("__")[0] not in dict(components):
                raise ValueError(
                    f"Unknown parameter {key!r} for FusedDetector; valid ones: "
                    f"{', '.join(self.param_names())}, <component>__<param> for components "
                    f"{', '.join(map(repr, components))}."
                )
        super().set_params(**{key: value for key, value in params.items() if key not in nested})
        for key, value in nested.items():
            name, _, sub = key.partition("__")
            self.components[name].set_params(**{sub: value})
        return self

    def config(self) -> dict[str, Any]:
        """The checked parameters: ``contamination``, ``calibration`` and each component's
        ``config()`` by name. A bad value raises ``ValueError`` (a components argument that is
        not a mapping of detectors, ``TypeError``) here, before any data is touched."""
        components = self._checked_components()
        return {
            "contamination": self.contamination,
            "calibration": self.calibration,
            "components": {
                name: c.config() if callable(getattr(c, "config", None)) else None
                for name, c in components.items()
            },
        }

    # ------------------------------------------------------------------ fit-time vs now
    def _fit_params(self) -> dict[str, Any]:
        # The stats carry no config: the components and contamination of the fit are kept.
        return dict(self._fitted_with)

    def score_changes(self) -> list[tuple[str, Any, Any]]:
        """Each component's score-time parameters changed since ``fit``, as
        ``<name>__<param>``: the fused threshold and statistics are on the scale of each
        component's fitted score."""
        if hasattr(self, "state_"):  # predict asks: a component replaced has none to compare
            self._check_components_unchanged()
        return [
            (f"{name}__{param}", now, at_fit)
            for name, component in dict(self.components).items()
            for param, now, at_fit in component.score_changes()
        ]

    def __repr__(self) -> str:
        # The components are positional; the base's repr shows keyword parameters only.
        defaults = inspect.signature(FusedDetector.__init__).parameters
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name in ("contamination", "calibration")
            if getattr(self, name) != defaults[name].default
        )
        shown = dict(self.components) if isinstance(self.components, Mapping) else self.components
        return f"FusedDetector({shown!r}{extra})"

    # ------------------------------------------------------------------ checks
    def _checked_components(self) -> dict[str, SupportsDetect]:
        if not isinstance(self.components, Mapping):
            raise TypeError(
                "components must be a mapping {name: detector}, got "
                f"{type(self.components).__name__}."
            )
        components = dict(self.components)
        if not components:
            raise ValueError("FusedDetector needs at least one component.")
        for name in components:
            if not isinstance(name, str) or not name or "/" in name or "__" in name:
                raise ValueError(
                    "component names must be non-empty strings without '/' or '__' (which "
                    f"set_params reads as <component>__<param>), got {name!r}."
                )
        if len({id(c) for c in components.values()}) != len(components):
            raise ValueError(
                "the same detector object is given under two names; fitting one would refit the "
                "other: give each name its own detector."
            )
        for name, component in components.items():
            if not isinstance(component, Detector):  # its state_, save, score_changes
                raise TypeError(
                    f"component {name!r} ({type(component).__name__}) is not a detector: "
                    "give MSDEDetector, PatchBankDetector, …"
                )
            threshold = getattr(component, "threshold", None)
            if threshold != "cross_fit":
                raise ValueError(
                    f"component {name!r} ({type(component).__name__}) has "
                    f"threshold={threshold!r}; fusion needs threshold='cross_fit': each "
                    "component is standardised by its out-of-fold scores on the training "
                    "normals, and in-sample scores are optimistically low."
                )
        _check_contamination(self.contamination)
        _check_calibration(self.calibration)
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
        rows = {name: _rows(name, X[name]) for name in names}
        if len(set(rows.values())) > 1:
            counts = ", ".join(f"{name}: {n}" for name, n in rows.items())
            raise ValueError(f"every component's features need the same number of rows: {counts}.")
        return {name: X[name] for name in names}

    # ------------------------------------------------------------------ public API
    def fit(
        self, X: Mapping[str, ArrayLike], y: Any = None, *, groups: ArrayLike | None = None
    ) -> Self:
        """Fit every component on its features of the normals, then the fusion and threshold.

        Args:
            X: ``{component name: features of the normal samples}``, same rows in every entry.
            y: ignored (scikit-learn API compatibility).
            groups: one group id per sample, passed to every component's ``fit`` (a group's
                samples share a cross-fit fold).

        A component that fails to fit leaves the detector unfitted (the components before it
        are refitted already).

        Returns:
            ``self``, with ``state_`` / ``stats_`` (:class:`FusionStats` or
            ``RankCalibration``), ``decision_scores_`` (the fused out-of-fold scores),
            ``threshold_`` and ``labels_`` set.
        """
        del y
        components = self._checked_components()
        X = self._checked_features(X, list(components))
        if self.calibration == "rank" and len(next(iter(X.values()))) < 3:
            raise ValueError("calibration='rank' needs at least 3 training samples.")
        # No state of the last fit may outlive a failure below, beside components refitted
        # already (it would score, save and then fail to load): dropped first.
        for fitted in ("state_", "decision_scores_", "threshold_", "labels_", "metadata_"):
            self.__dict__.pop(fitted, None)
        for name, component in components.items():
            try:
                component.fit(X[name], groups=groups)
            except ValueError as err:
                raise ValueError(f"component {name!r}: {err}") from err
        oof = {name: np.asarray(c.decision_scores_) for name, c in components.items()}
        self._fitted_with = {
            "components": components,
            "contamination": self.contamination,
            "calibration": self.calibration,
        }
        self._component_states = {name: c.state_ for name, c in components.items()}
        if self.calibration == "rank":
            self.state_ = rank_calibration(oof)
            loo = loo_tail_scores(oof)
            scores = np.asarray(jnp.mean(jnp.stack(list(loo.values())), axis=0))
        else:
            self.state_ = fusion_stats(oof)
            scores = np.asarray(fuse_scores(oof, self.state_))
        self._set_scores(scores, quantile_threshold(scores, self.contamination))
        return self

    def _check_components_unchanged(self) -> None:
        """Refuse to score or save with a component refitted, or another detector put in its
        place, since this detector's fit: its calibration and ``threshold_`` are on the scores
        of the components it fitted."""
        self._check_fitted()
        fitted = self._fitted_with["components"]
        states = getattr(self, "_component_states", {})
        changed = [
            name
            for name, component in dict(self.components).items()
            if fitted.get(name) is not component
            or getattr(component, "state_", None) is not states.get(name)
        ]
        if changed:
            which = ", ".join(map(repr, changed))
            raise ValueError(
                f"component {which} was refitted or replaced after this FusedDetector's fit, "
                "whose calibration and threshold_ are on the scores of the components it "
                "fitted: fit the FusedDetector again (it fits every component)."
            )

    def _raw_scores(self, X: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        self._check_components_unchanged()
        changed = self.score_changes()
        if changed:  # the calibration is on each component's fitted score's scale
            fitted = ", ".join(f"{n}={at_fit!r}" for n, _, at_fit in changed)
            now = ", ".join(f"{n}={value!r}" for n, value, _ in changed)
            raise ValueError(
                f"the calibration was computed for {fitted}, but the components now score with "
                f"{now}; refit, or set them back (set_params({fitted}))."
            )
        components = dict(self.components)
        X = self._checked_features(X, list(components))
        scores = {}
        for name, component in components.items():
            try:
                scores[name] = component.score_samples(X[name])
            except ValueError as err:
                raise ValueError(f"component {name!r}: {err}") from err
        return scores

    def component_scores(self, X: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        """``{name: (m,) calibrated score}`` of each component (:func:`calibrated_scores`: its
        z-score, or its tail score with ``calibration="rank"``), for inspection."""
        scores = calibrated_scores(self._raw_scores(X), self.state_)
        return {k: np.asarray(v) for k, v in scores.items()}

    def score_samples(self, X: Mapping[str, ArrayLike]) -> np.ndarray:
        """Fused anomaly score of each sample, the mean of the components' calibrated scores.

        **Higher = more anomalous** (PyOD's convention), as the components'.

        Args:
            X: ``{component name: (m, …) features}``, the same m samples in every entry.

        Returns:
            (m,) float scores.
        """
        return np.asarray(fuse_scores(self._raw_scores(X), self.state_))

    @property
    def maps_component(self) -> str | None:
        """The one component that scores patches (has heatmaps), or ``None`` when none or
        several do."""
        names = [n for n, c in dict(self.components).items() if getattr(c, "has_maps", False)]
        return names[0] if len(names) == 1 else None

    @property
    def has_maps(self) -> bool:  # type: ignore[override]
        """Whether :meth:`score_maps` works: exactly one component scores patches."""
        return self.maps_component is not None

    def score_maps(self, X: Any, *, size: int = 224, sigma: float | None = None) -> np.ndarray:
        """The heatmaps of the component that scores patches (a ``PatchBankDetector``).

        The fused score itself is a mean of calibrated image scores and has no place in the
        image; the patch component's maps show where its part of the score comes from, in
        its own units (a patch's distance to its bank).

        Args:
            X: ``{component name: features}`` (only the patch component's entry is read), or
                that component's patch features alone.
            size, sigma: as
                :meth:`~msde_jax.detectors.patch_bank.PatchBankDetector.score_maps`.

        Raises:
            ValueError: no component, or more than one, scores patches.
        """
        name = self.maps_component
        if name is None:
            with_maps = [
                n for n, c in dict(self.components).items() if getattr(c, "has_maps", False)
            ]
            raise ValueError(
                "FusedDetector.score_maps needs exactly one component that scores patches "
                f"(a PatchBankDetector); here {len(with_maps)} do"
                + (f": use components[{with_maps[0]!r}].score_maps." if with_maps else ".")
            )
        features = X[name] if isinstance(X, Mapping) else X
        return self.components[name].score_maps(features, size=size, sigma=sigma)

    # ------------------------------------------------------------------ persistence
    # The base's to_arrays / from_arrays / save / load over these hooks: one file, each
    # component's own (meta, arrays) inside it, its arrays prefixed "<name>/".
    def _component_arrays(self) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
        self._check_components_unchanged()
        parts = {}
        for name, component in dict(self.components).items():
            try:
                parts[name] = component.to_arrays()
            except ValueError as err:
                raise ValueError(f"component {name!r}: {err}") from err
        return parts

    def _fitted_meta(self) -> dict[str, Any]:
        # Each as the component's own file would hold it, so loading checks its version.
        records = [
            {"name": name, "meta": with_version(meta)}
            for name, (meta, _) in self._component_arrays().items()
        ]
        return {"components": records}

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name, (_, sub) in self._component_arrays().items():
            arrays.update({f"{name}/{key}": np.asarray(value) for key, value in sub.items()})
        names = list(dict(self.components))  # the order of the components' records
        if isinstance(self.state_, RankCalibration):
            arrays["fusion.sorted"] = np.stack([self.state_.sorted[n] for n in names])
            return arrays
        arrays["fusion.mean"] = np.array([self.state_.mean[n] for n in names], np.float64)
        arrays["fusion.std"] = np.array([self.state_.std[n] for n in names], np.float64)
        return arrays

    def _saved_params(self) -> dict[str, Any]:
        # The components are saved whole (with their own parameters), not as a parameter;
        # files of z-scored fusion keep the parameters they had before calibration existed.
        params = {"contamination": self.contamination}
        if self.calibration != "zscore":
            params["calibration"] = self.calibration
        return params

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """Rebuild a fitted detector from :meth:`to_arrays`' ``(meta, arrays)``.

        Each component is rebuilt by the registered class its metadata names, after checking
        its format version.

        Raises:
            ValueError: ``meta`` names another class, a component names an unknown class or
                has another format version, or an array is missing.
        """
        cls._check_class(meta)
        names = _component_names(meta)
        components = {}
        for name, record in zip(names, meta["components"], strict=True):
            prefix = f"{name}/"
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            where = f"component {name!r} of the saved FusedDetector"
            try:
                components[name] = detector_from_arrays(record["meta"], sub, where=where)
            except ValueError as err:
                message = str(err)
                raise ValueError(message if where in message else f"{where}: {message}") from err
        params = meta.get("params")
        if isinstance(params, dict):
            _check_saved_contamination(
                params.get("contamination"), params.get("calibration", "zscore")
            )
            params = {**params, "components": components}
        return super().from_arrays({**meta, "params": params}, arrays)

    @classmethod
    def _check_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """The fusion's own arrays: finite float vectors, one entry per component (σ > 0), or
        under rank calibration one sorted row of out-of-fold scores per component, and nothing
        but them and the components' (which each component checks itself)."""
        names = [record["name"] for record in meta["components"]]
        if _saved_calibration(meta) == "rank":
            _check_sorted(arrays, names)
            own = ("fusion.sorted", "decision_scores_")
        else:
            own = ("fusion.mean", "fusion.std", "decision_scores_")
        unknown = sorted(
            k for k in arrays if k not in own and ("/" not in k or k.split("/", 1)[0] not in names)
        )
        orphans = sorted({k.split("/", 1)[0] for k in unknown if "/" in k})
        if orphans:
            raise ValueError(
                f"not a valid saved FusedDetector: it holds arrays of components {orphans}, "
                "which its metadata does not list."
            )
        if unknown:
            raise ValueError(f"not a valid saved FusedDetector: unexpected arrays {unknown}.")
        for key in own:
            if key not in arrays or key == "fusion.sorted":
                continue  # a missing one is reported by _restore / from_arrays
            a = np.asarray(arrays[key])
            size = len(names) if key != "decision_scores_" else a.size
            if a.dtype.kind != "f" or a.shape != (size,):
                raise ValueError(
                    f"not a valid saved FusedDetector: {key!r} is {a.dtype} of shape {a.shape}, "
                    f"expected float of shape ({size},)"
                    + (f", one value per component ({len(names)})." if key != own[-1] else ".")
                )
            check_saved_floats(key, a, where="not a valid saved FusedDetector")
        n_train = {np.shape(arrays[f"{n}/decision_scores_"]) for n in names}
        n_train.add(np.shape(arrays.get("decision_scores_")))
        if len(n_train) > 1:
            raise ValueError(
                "not a valid saved FusedDetector: its 'decision_scores_' and its components' "
                f"have different shapes {sorted(n_train)}; all score the same training rows."
            )
        if "fusion.std" in arrays and not (np.asarray(arrays["fusion.std"]) > 0).all():
            raise ValueError(
                "not a valid saved FusedDetector: 'fusion.std' must be positive (a standard "
                "deviation floored above 0)."
            )

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        del meta
        rank = self.calibration == "rank"
        keys = ("fusion.sorted",) if rank else ("fusion.mean", "fusion.std")
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise ValueError(f"not a saved FusedDetector: the array {missing[0]!r} is missing.")
        names = list(self.components)
        self._fitted_with = {
            "components": dict(self.components),
            "contamination": self.contamination,
            "calibration": self.calibration,
        }
        self._component_states = {name: c.state_ for name, c in self.components.items()}
        if rank:
            rows = np.asarray(arrays["fusion.sorted"], np.float64)
            self.state_ = rank_calibration(dict(zip(names, rows, strict=True)))
            return
        self.state_ = FusionStats(
            dict(zip(names, np.asarray(arrays["fusion.mean"]).tolist(), strict=True)),
            dict(zip(names, np.asarray(arrays["fusion.std"]).tolist(), strict=True)),
        )


def _saved_calibration(meta: dict[str, Any]) -> Any:
    params = meta.get("params")
    return params.get("calibration", "zscore") if isinstance(params, dict) else "zscore"


def _check_sorted(arrays: dict[str, np.ndarray], names: list[str]) -> None:
    """A rank-calibrated file's ``fusion.sorted``: (components, n) finite floats, each row
    sorted ascending and as long as the training scores."""
    if "fusion.sorted" not in arrays:
        return  # reported by _restore
    a = np.asarray(arrays["fusion.sorted"])
    n = np.shape(arrays.get("decision_scores_"))
    if a.dtype.kind != "f" or a.ndim != 2 or a.shape != (len(names), *n) or a.shape[1] < 3:
        raise ValueError(
            f"not a valid saved FusedDetector: 'fusion.sorted' is {a.dtype} of shape {a.shape}, "
            f"expected float of shape ({len(names)}, n_train >= 3), one row per component."
        )
    check_saved_floats("fusion.sorted", a, where="not a valid saved FusedDetector")
    if (np.diff(a, axis=1) < 0).any():
        raise ValueError("not a valid saved FusedDetector: 'fusion.sorted' rows must be sorted.")
