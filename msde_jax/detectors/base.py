"""The facade every detector shares: parameters, fit, predictions and persistence.

:class:`Detector` is the scikit-learn / PyOD-style estimator over a detector's pure functions.
A leaf detector declares what differs, and the base does the rest:

* ``config_class``: its configuration dataclass. The constructor (keyword-only, one argument
  per field, stored under the field's name as scikit-learn expects), :meth:`Detector.get_params`
  and the ``Args`` of the class docstring are made from its fields;
* ``fit_function(x, config, *, groups=None) -> DetectorFit`` and
  ``score_function(state, x) -> scores``: its pure fit and score;
* ``state_class`` (the fitted state's NamedTuple), ``features`` (``"samples"`` or
  ``"patches"``: which :func:`~msde_jax.detectors.config.check_features` applies),
  ``fitted_scalars`` (the fitted attributes saved beside the state) and ``array_schema`` /
  ``meta_dims`` (what a saved file's arrays must look like).

Every subclass (``FusedDetector`` too) registers itself by its class name
(:func:`~msde_jax.detectors.persistence.register`), so
:func:`~msde_jax.detectors.persistence.load_detector` returns the right class for any file.
"""

import contextlib
import inspect
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol, Self

import jax
import numpy as np
from jax.typing import ArrayLike

from msde_jax._memory import Lower, check_memory, out_of_memory
from msde_jax.detectors.config import check_features, ordered_fields, parameter_docs
from msde_jax.detectors.fitting import chunked_scores
from msde_jax.detectors.persistence import (
    check_arrays,
    check_meta,
    check_version,
    read_npz,
    register,
    state_arrays,
    state_from_arrays,
    stored_class,
    write_detector_file,
)

__all__ = ["Detector", "NotFittedError", "SupportsDetect", "no_maps_message"]


class SupportsDetect(Protocol):
    """What :func:`msde_jax.pipeline.evaluation.evaluate` needs from a detector facade. A
    :class:`~msde_jax.FusedDetector`'s components are msde_jax detectors (:class:`Detector`
    subclasses): fusion also reads their fitted ``state_``, passes ``groups`` to their ``fit``,
    saves them and checks their score-time parameters."""

    decision_scores_: np.ndarray
    threshold_: float

    def fit(self, X: Any, y: Any = None) -> Any: ...

    def score_samples(self, X: Any) -> np.ndarray: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


def no_maps_message(detector: Any) -> str:
    """Why ``detector`` has no heatmaps, and what to use instead."""
    return (
        f"{type(detector).__name__} scores one pooled vector per image: its score has no "
        "spatial resolution, so there are no heatmaps. Use PatchBankDetector on "
        "Embedder(features='patches') features (the default of `msde-jax fit`) for maps."
    )


def _shape(x: Any) -> tuple[int, ...]:
    """The shape of array-like features, or the package's error for a ragged list."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return tuple(shape)
    try:
        return np.shape(x)
    except ValueError as err:  # NumPy's "setting an array element with a sequence"
        raise ValueError(
            f"X must be an array of numbers with one shape per sample (rows of equal length): {err}"
        ) from None


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector is used before ``fit`` (as scikit-learn's ``NotFittedError``)."""


def _init_from(config_class: type) -> Callable[..., None]:
    """A keyword-only ``__init__`` with one argument per field of ``config_class``."""
    fields = ordered_fields(config_class)
    names = [f.name for f in fields]

    def __init__(self, **params: Any) -> None:
        unknown = [name for name in params if name not in names]
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}; "
                f"valid ones: {', '.join(names)}."
            )
        for field in fields:
            setattr(self, field.name, params.get(field.name, field.default))

    kind = inspect.Parameter.KEYWORD_ONLY
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(f.name, kind, default=f.default, annotation=f.type) for f in fields]
    )
    __init__.__doc__ = f"Set the parameters (one per field of {config_class.__name__})."
    return __init__


class Detector:
    """Base of the detector facades (PyOD conventions: higher score = more anomalous)."""

    config_class: ClassVar[type | None] = None
    state_class: ClassVar[type | None] = None
    features: ClassVar[str] = "samples"  # "samples" (n, d), "patches" or "mapping" (fused)
    fitted_scalars: ClassVar[tuple[str, ...]] = ()
    # Score-time parameters: read when scoring, so they may change after fit (the config's
    # score_params). Every other parameter takes effect at the next fit; until then scoring
    # uses its value at fit time, kept in the state's config.
    score_params: ClassVar[tuple[str, ...]] = ()
    # Parameters that change how a score is computed (block sizes), never its value.
    neutral_params: ClassVar[tuple[str, ...]] = ("batch_size",)
    # Whether score_maps gives heatmaps (a detector that scores patches sets it).
    has_maps: ClassVar[bool] = False
    # The saved arrays, one a line: its name, dtype kinds and shape in named dimensions (none
    # for a scalar); meta_dims names the dimensions whose size a metadata entry gives
    # (persistence.check_arrays). Parsed into array_schema.
    saved_arrays: ClassVar[str] = ""
    meta_dims: ClassVar[dict[str, str]] = {}
    array_schema: ClassVar[dict[str, tuple[str, str]]] = {}
    # Parameters added after files were saved without them, with the value those files were
    # fitted with where it is not today's default (a load fills them in).
    absent_params: ClassVar[dict[str, Any]] = {}

    fit_function: ClassVar[Callable[..., Any]]
    score_function: ClassVar[Callable[..., Any]]

    # scikit-learn: an outlier detector (its estimator type before 1.6, its tags after).
    _estimator_type: ClassVar[str] = "outlier_detector"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(cls)
        if "config_class" in cls.__dict__:
            cls.__init__ = _init_from(cls.config_class)  # type: ignore[method-assign]
            cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + parameter_docs(cls.config_class)
            cls.score_params = cls.config_class.score_params
        if "saved_arrays" in cls.__dict__:
            cls.array_schema = {
                name: (kinds, " ".join(dims))
                for name, kinds, *dims in map(str.split, cls.saved_arrays.strip().splitlines())
            }

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's description of this estimator (scikit-learn >= 1.6 calls it, so it
        imports scikit-learn only then: msde_jax does not depend on it). An outlier detector
        that needs no labels, is fitted, and is deterministic; pooled detectors take 2-D input,
        the patch bank 3-D or 4-D patch features, a fused detector a mapping."""
        from sklearn.utils import InputTags, Tags, TargetTags

        inputs = {
            "samples": InputTags(),
            "patches": InputTags(two_d_array=False, three_d_array=True),
        }
        return Tags(
            estimator_type="outlier_detector",
            target_tags=TargetTags(required=False),
            input_tags=inputs.get(self.features, InputTags(two_d_array=False, dict=True)),
            requires_fit=True,
            non_deterministic=False,
        )

    # ------------------------------------------------------------------ params
    @classmethod
    def param_names(cls) -> list[str]:
        """The keyword-only constructor parameters, in order."""
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, as scikit-learn's ``get_params``."""
        del deep  # no nested estimators
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters (as scikit-learn's ``set_params``); returns ``self``."""
        valid = self.param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Unknown parameter {name!r} for {type(self).__name__}; "
                    f"valid ones: {', '.join(valid)}."
                )
            setattr(self, name, value)
        return self

    def config(self) -> Any:
        """The configuration of the current parameters (validated: a bad value raises
        ``ValueError`` here, before any data is touched)."""
        return self.config_class(**self.get_params())

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
    def _fit_params(self) -> dict[str, Any]:
        """The parameters the fitted state was fitted with: its ``config``'s fields."""
        config = self.state_.config
        return {name: getattr(config, name) for name in self.param_names()}

    def _scoring_params(self) -> dict[str, Any]:
        """The fit-time parameters with the current values of the score-time ones."""
        return {**self._fit_params(), **{name: getattr(self, name) for name in self.score_params}}

    def _changed_since_fit(self, names: Any) -> list[tuple[str, Any, Any]]:
        """``(name, now, at fit)`` of each of ``names`` whose value differs from fit time."""
        fitted = self._fit_params()
        return [(n, getattr(self, n), fitted[n]) for n in names if getattr(self, n) != fitted[n]]

    def score_changes(self) -> list[tuple[str, Any, Any]]:
        """``(name, now, at fit)`` of each score-time parameter changed since ``fit`` (those
        that change the score's value: ``threshold_`` is on the fitted score's scale), less
        those the score now computed does not read (``score_neighbors`` of a Mahalanobis
        score, ``q`` of a ``reduce="max"`` bank)."""
        unread = set(self.config_class(**self._scoring_params()).unread_by_score())
        names = [n for n in self.score_params if n not in (*self.neutral_params, *unread)]
        return self._changed_since_fit(names)

    def _check_threshold(self) -> None:
        """Refuse to compare fresh scores with ``threshold_`` when a score-time parameter no
        longer has its fit-time value: the threshold is on the fitted score's scale."""
        self._check_fitted()
        if math.isnan(self.threshold_):
            raise ValueError(
                f"This {type(self).__name__} was fitted with threshold='none': it ranks samples "
                "(score_samples) but has no threshold_ to predict with; refit with "
                "threshold='cross_fit'."
            )
        changed = self.score_changes()
        if changed:
            fitted = ", ".join(f"{n}={at_fit!r}" for n, _, at_fit in changed)
            now = ", ".join(f"{n}={value!r}" for n, value, _ in changed)
            which = ", ".join(n for n, _, _ in changed)
            raise ValueError(
                f"threshold_ was computed for {fitted}, but the detector now scores with {now}; "
                f"refit, or set {which} back (set_params({fitted})) to predict."
            )

    def _set_scores(self, decision_scores: np.ndarray, threshold: float) -> None:
        self.decision_scores_ = np.array(decision_scores)  # its own: labels_ follow from it
        self.threshold_ = float(threshold)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)

    # ------------------------------------------------------------------ fit and score
    def _describe(self, state: Any, shape: tuple[int, ...]) -> dict[str, int]:
        """The ``fitted_scalars`` besides ``n_iter_`` of a fitted ``state`` (a subclass hook)."""
        raise NotImplementedError

    def fit(self, X: ArrayLike, y: Any = None, *, groups: ArrayLike | None = None) -> Self:
        """Fit on normal samples only, with the detector's pure ``fit_function``.

        Args:
            X: features of normal images (see the class docstring); no NaN or inf.
            y: ignored (scikit-learn's convention for outlier detectors: every row of ``X`` is
                fitted as a normal; for cross-validation on labelled data, pass
                :func:`~msde_jax.detectors.fitting.one_class_splits` as ``cv``).
            groups: one group id per sample (e.g. the volume each slice comes from): the
                cross-fit folds keep a group together, so no training sample is scored by a
                model fitted on its own group (:func:`~msde_jax.detectors.fitting.folds`).

        Returns:
            ``self``, with ``state_``, the ``fitted_scalars`` (``n_features_in_``,
            ``n_iter_``, …), ``decision_scores_``, ``threshold_`` and ``labels_`` set.
        """
        del y
        config = self.config()
        with self._memory_checked("fitting", _shape(X)):
            result = type(self).fit_function(X, config, groups=groups)
        self.__dict__.pop("metadata_", None)  # a loaded detector's; this fit is new
        self.state_ = result.state
        for name, value in self._describe(result.state, np.shape(X)).items():
            setattr(self, name, value)
        self.n_iter_ = result.n_iter
        self._set_scores(result.decision_scores, result.threshold)
        return self

    def _checked(self, X: ArrayLike) -> tuple[Any, np.ndarray]:
        """The fitted state with the current score-time parameters, and the checked ``X``."""
        self._check_fitted()
        config = self.config_class(**self._scoring_params())
        x = check_features(
            X,
            kind=self.features,
            dtype=config.dtype,
            n_features=self.n_features_in_,
            n_patches=getattr(self, "n_patches_", None),
            on_device=True,
        )
        self._check_scoring(config)
        return self.state_._replace(config=config), x

    def _check_scoring(self, config: Any) -> None:
        """Refuse score-time parameters (changed since fit) that the fitted state cannot
        serve; nothing to refuse by default."""
        del config

    def _memory_needed(
        self, shape: tuple[int, ...], state: Any = None
    ) -> tuple[dict[str, int], list[Lower]]:
        """The bytes fitting (``state`` ``None``) or scoring (under ``state``) features of
        ``shape`` allocates at once, by part, and the options that size them (a subclass
        hook; none here). Called before the features are checked: an unexpected shape gives
        ``{}``, and the check of the features reports it."""
        del shape, state
        return {}, []

    @contextlib.contextmanager
    def _memory_checked(
        self, step: str, shape: tuple[int, ...], state: Any = None
    ) -> Iterator[None]:
        """Refuse a step whose :meth:`_memory_needed` exceeds the memory free (of the default
        device: an accelerator's, else the host's) before it runs, and turn running out of
        memory inside the block into one error naming the step and the options to lower
        (``msde_jax._memory``)."""
        needs, lower = self._memory_needed(tuple(shape), state)
        what = f"{step} {type(self).__name__} on {'×'.join(map(str, shape))} features"
        check_memory(what, needs, lower=lower, device=jax.devices()[0])
        options = [option.name for option in lower] or ["the number of images"]
        with out_of_memory(what, options):
            yield

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Anomaly score of each sample (the pure ``score_function``); **higher = more
        anomalous** (PyOD's convention; scikit-learn's outlier detectors use the opposite).

        Args:
            X: features as at fit time.

        Returns:
            (m,) float scores.
        """
        state, x = self._checked(X)
        with self._memory_checked("scoring with", x.shape, state):
            if self._batch_independent(state):
                return chunked_scores(type(self).score_function, state, x)
            return self._score_batch(state, x)

    def _score_batch(self, state: Any, x: Any) -> np.ndarray:
        """Scores of ``x`` as one batch, for a state whose scores depend on the batch (a
        subclass hook: a detector may pad the batch to share programs)."""
        return np.asarray(jax.device_get(type(self).score_function(state, x)))

    def _batch_independent(self, state: Any) -> bool:
        """Whether each sample's score under ``state`` depends on that sample only (then
        batches of any size are scored in fixed-size chunks: :func:`chunked_scores`)."""
        del state
        return True

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
                fit, so ``threshold_`` is on another score's scale; or the detector was
                fitted with ``threshold="none"`` and has no threshold.
        """
        self._check_threshold()
        return (self.score_samples(X) > self.threshold_).astype(int)

    def fit_predict(
        self, X: ArrayLike, y: Any = None, *, groups: ArrayLike | None = None
    ) -> np.ndarray:
        """Fit on ``X`` (every row a normal; ``y`` is ignored; ``groups`` as in :meth:`fit`)
        and return ``labels_``: its out-of-fold (or in-sample) 0/1 labels.

        Raises:
            ValueError: fitted with ``threshold="none"``, which gives no labels (as
                :meth:`predict`).
        """
        del y
        self.fit(X, groups=groups)
        if math.isnan(self.threshold_):
            self._check_threshold()  # says why there are no labels
        return self.labels_

    # ------------------------------------------------------------------ persistence
    def _saved_params(self) -> dict[str, Any]:
        """The parameters a file stores (a fused detector saves its components whole)."""
        return self.get_params()

    def _fitted_meta(self) -> dict[str, Any]:
        """JSON-able fitted scalars beyond ``threshold_``."""
        return {name: getattr(self, name) for name in self.fitted_scalars}

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays beyond ``decision_scores_``: the state's."""
        return state_arrays(self.state_)

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Set ``state_`` and the fitted scalars from saved ones."""
        what = type(self).__name__
        self.state_ = state_from_arrays(self.state_class, arrays, config=self.config(), what=what)
        for name in self.fitted_scalars:
            setattr(self, name, meta[name])

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
        names = [n for n in self.param_names() if n not in self.neutral_params]
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
            "params": self._saved_params(),
            **self._fitted_meta(),
            "threshold_": self.threshold_ if math.isfinite(self.threshold_) else None,
            "metadata": dict(getattr(self, "metadata_", {})),
        }
        scores = np.array(self.decision_scores_)  # a copy: editing it leaves labels_ true
        arrays = {**self._fitted_arrays(), "decision_scores_": scores}
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
    def _check_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Refuse arrays of an unexpected name, dtype kind, rank or size (``array_schema``)."""
        if cls.array_schema:
            check_arrays(cls.__name__, meta, arrays, cls.array_schema, cls.meta_dims)

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """Rebuild a fitted detector from :meth:`to_arrays`' ``(meta, arrays)``.

        Raises:
            ValueError: ``meta`` names another detector class, or an array is missing.
        """
        cls._check_class(meta)
        if "decision_scores_" not in arrays:
            raise ValueError(f"not a saved {cls.__name__}: 'decision_scores_' is missing.")
        params = check_meta(cls.__name__, meta, cls.param_names(), cls.meta_dims.values())
        params = {**cls.absent_params, **params}
        if params.get("dtype") == "float64" and not jax.config.jax_enable_x64:
            # its arrays would reach the device as float32, and stay so once x64 is turned on
            raise ValueError(
                "saved with dtype='float64', which needs JAX's 64-bit mode, off here: call "
                'jax.config.update("jax_enable_x64", True) (or set JAX_ENABLE_X64=1) before '
                "loading it."
            )
        cls._check_arrays(meta, arrays)
        try:
            det = cls(**params)
            det._restore(meta, arrays)
        except (KeyError, TypeError) as err:  # a scalar the state needs is missing or odd
            raise ValueError(f"not a valid saved {cls.__name__}: {err!r}.") from err
        threshold = meta.get("threshold_")  # null: fitted with threshold="none"
        det._set_scores(arrays["decision_scores_"], math.nan if threshold is None else threshold)
        det.metadata_ = dict(meta.get("metadata", {}))
        return det

    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> None:
        """Save the configuration and every fitted array to ``path`` (an ``.npz`` file).

        Plain arrays and a JSON string: loading executes no code (no pickle). Written
        atomically: a reader sees the old file or the whole new one.

        Args:
            path: the file to write (written as given, no suffix added).
            metadata: JSON-serialisable extras stored alongside (e.g. the embedder that produced
                the features); :meth:`load` returns them as ``metadata_``. ``None`` keeps
                those of a loaded detector (``metadata_``; none after a refit).
        """
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(key, str) for key in metadata)
        ):  # load refuses anything else: the file would not load
            raise TypeError(
                "metadata must be a dict with string keys (a JSON object), got "
                f"{type(metadata).__name__}; e.g. metadata={{'embedder': embedder.config()}}."
            )
        meta, arrays = self.to_arrays()
        if metadata is not None:
            meta["metadata"] = metadata
        write_detector_file(path, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        """Load a detector written by :meth:`save`; it gives identical scores.

        Raises:
            ValueError: not a saved detector, one of another class (use
                :func:`~msde_jax.load_detector` for any class) or of another format version.
            FileNotFoundError: no such file.
            PermissionError: the file may not be read.
        """
        meta, arrays = read_npz(path, what=cls.__name__)
        cls._check_class(meta, where=str(path))
        check_version(meta, path)
        try:
            return cls.from_arrays(meta, arrays)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
