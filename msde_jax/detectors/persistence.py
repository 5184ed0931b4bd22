"""The saved-detector file: JSON metadata plus flat named arrays, in an .npz.

No pickle, so loading executes no code. The metadata names the detector class
(``"detector"``) and the file format version. Version 2 names the density-weight option
``density`` (version 1 called it ``weights``) and stores the training rows' content keys in the
state; version-2 files written before the class name was stored hold an ``MSDEDetector``.

A fitted state (a ``NamedTuple`` whose fields are arrays, ``None`` or (optional) ``NamedTuple``
parts, and a static ``config``) is stored as one array per leaf, named by its path:
``state.center``, ``state.pca.mean``, … (:func:`state_arrays`, :func:`state_from_arrays`).

A ``FusedDetector`` file is one such file: its metadata lists each component's own metadata
(with its format version, :func:`with_version`, checked when the component is rebuilt) and its
arrays are the components' prefixed ``<name>/`` plus ``fusion.mean`` / ``fusion.std``
(``calibration="zscore"``) or ``fusion.sorted`` (``"rank"``).

Every detector class registers itself here by its class name (:func:`register`), which a file
stores as ``"detector"``; :func:`load_detector` rebuilds a file as that class. A class is only
ever looked up by that name (:func:`detector_class`), never imported from a module a file names.
:func:`check_meta` and :func:`check_arrays` refuse edited or damaged metadata and arrays before
any state is built.
"""

import json
import math
import os
import typing
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import numpy as np

from msde_jax._arrays_file import ArrayFileError, load_npz
from msde_jax._files import arrays_checksum, atomic_write, read_json

__all__ = [
    "FORMAT_VERSION",
    "check_arrays",
    "check_meta",
    "check_saved_floats",
    "check_version",
    "detector_class",
    "detector_from_arrays",
    "load_detector",
    "read_npz",
    "register",
    "state_arrays",
    "state_from_arrays",
    "stored_class",
    "with_version",
    "write_detector_file",
]

FORMAT_VERSION = 2

# Files of version 2 written before the class name was stored.
_LEGACY_CLASS = "MSDEDetector"


def _is_namedtuple(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def state_arrays(state: NamedTuple, prefix: str = "state") -> dict[str, np.ndarray]:
    """``state``'s arrays by dotted path; the config (saved as params) and ``None`` left out."""
    arrays = {}
    for name, value in state._asdict().items():
        if name == "config" or value is None:
            continue
        if _is_namedtuple(type(value)):
            arrays.update(state_arrays(value, f"{prefix}.{name}"))
        else:
            arrays[f"{prefix}.{name}"] = np.asarray(value)
    return arrays


def state_from_arrays(
    cls: type, arrays: dict[str, Any], *, config: Any = None, prefix: str = "state", what: str
) -> Any:
    """Rebuild a ``cls`` state from :func:`state_arrays`, with ``config`` as its config field.

    Raises:
        ValueError: an array the state needs is missing (``what`` names the detector class).
    """
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for name in cls._fields:
        key, hint = f"{prefix}.{name}", hints.get(name)
        # An optional NamedTuple part (``Foreground | None``) is rebuilt when the file has
        # any of its arrays, else left None.
        part = [a for a in typing.get_args(hint) if _is_namedtuple(a)]
        if part and any(k.startswith(f"{key}.") for k in arrays):
            hint = part[0]
        if name == "config":
            fields[name] = config
        elif _is_namedtuple(hint):
            fields[name] = state_from_arrays(hint, arrays, prefix=key, what=what)
        elif key in arrays:
            fields[name] = jax.device_put(arrays[key])  # a copy; jnp.asarray compiles per shape
        elif type(None) in typing.get_args(hint):
            fields[name] = None
        else:
            raise ValueError(f"not a saved {what}: the array {key!r} is missing.")
    return cls(**fields)


def with_version(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` plus this format version, as a saved detector (or a fused component) holds it."""
    return {**meta, "format_version": FORMAT_VERSION}


def write_detector_file(
    path: str | os.PathLike, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Write ``meta`` (+ the format version) as JSON and ``arrays`` by name, atomically."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    meta = {**with_version(meta), "checksum": arrays_checksum(arrays)}
    text = json.dumps(meta, default=_json_number)
    atomic_write(path, lambda f: np.savez(f, meta=np.array(text), **arrays), suffix=".npz")


def _json_number(value: Any) -> Any:
    """NumPy scalars as Python numbers (a parameter from ``np.arange``, a grid search)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be saved as JSON.")


def read_npz(
    path: str | os.PathLike, *, what: str = "detector"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a saved detector, without checking its version or class.

    The arrays are read by :func:`msde_jax._arrays_file.load_npz`: every size the file claims
    is checked against what it stores, and the arrays together against the memory bound
    (half the available memory, or ``MSDE_JAX_MAX_ARRAY_BYTES``), before anything is allocated.

    Raises:
        ValueError: for anything that is not an .npz with a JSON ``meta`` entry, or one that
            claims more than it holds or than memory allows (``what`` names the expected
            class in the message; the array, where one is at fault).
        FileNotFoundError: no such file.
        PermissionError: the file may not be read.
    """
    try:
        files = load_npz(path)
    except ArrayFileError as err:
        # A truncated file, a flipped byte (the zip's CRC), another file renamed, a header
        # that claims more than is stored, arrays beyond the memory bound.
        where = f"member {err.member!r} " if err.member else ""
        raise ValueError(
            f"{path} is not a saved {what} or is damaged (.npz): {where}{err.reason}"
        ) from err
    except (FileNotFoundError, PermissionError):  # no such file, or not this user's to read
        raise
    except OSError as err:  # a folder, an unreadable file
        raise ValueError(f"{path} is not a saved {what} or is damaged (.npz): {err}") from err
    if "meta" not in files:
        raise ValueError(f"{path} is not a saved {what}: no 'meta' entry.")
    try:
        meta = read_json(str(files.pop("meta")))
    except ValueError as err:
        raise ValueError(f"{path} is not a saved {what}: its 'meta' is not JSON.") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a saved {what}: its 'meta' is not a JSON object.")
    stored = meta.pop("checksum", None)
    if stored is not None and stored != arrays_checksum(files):
        raise ValueError(
            f"{path} is damaged: its arrays do not match the checksum saved with them; "
            "restore it from a copy or refit."
        )
    return meta, files


def stored_class(meta: dict[str, Any]) -> str:
    """The class name a saved detector's metadata gives (``"detector"``, else ``"class"``)."""
    return meta.get("detector") or meta.get("class") or _LEGACY_CLASS


def check_version(meta: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a file (``path``, or words naming the part) of another format version."""
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}; this msde_jax reads version "
            f"{FORMAT_VERSION}. Refit the detector with this version."
        )


# ---------------------------------------------------------------------- checks on load
def check_saved_floats(name: str, a: np.ndarray, *, where: str) -> None:
    """Refuse a saved float array that ``save`` never writes: another float width than
    float32 / float64 (scoring would run in it), or NaN / infinite values (they would become
    NaN or infinite scores). ``where`` starts the message."""
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


def check_meta(
    what: str, meta: dict[str, Any], param_names: Iterable[str], positive: Iterable[str] = ()
) -> dict[str, Any]:
    """The saved constructor parameters of a ``what`` (a class name), after checking the
    metadata's structure: ``params`` an object of known names, ``threshold_`` finite (null
    for ``threshold="none"``),
    ``metadata`` an object and each of the ``positive`` entries a positive integer."""
    params = meta.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"not a valid saved {what}: 'params' is not a JSON object.")
    unknown = sorted(set(params) - set(param_names))
    if unknown:
        raise ValueError(
            f"not a valid saved {what}: unknown parameters {unknown} (written by "
            "another version, or edited)."
        )
    threshold = meta.get("threshold_")
    if params.get("threshold") == "none":
        if threshold is not None:
            raise ValueError(
                f"not a valid saved {what}: 'threshold_' must be null with threshold='none', "
                f"got {threshold!r}."
            )
    elif (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
    ):
        raise ValueError(
            f"not a valid saved {what}: 'threshold_' must be a finite number, got {threshold!r}."
        )
    if not isinstance(meta.get("metadata", {}), dict):
        raise ValueError(f"not a valid saved {what}: 'metadata' is not an object.")
    for name in positive:
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"not a valid saved {what}: {name!r} must be a positive integer, got {value!r}."
            )
    return params


def check_arrays(
    what: str,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    schema: dict[str, tuple[str, str]],
    meta_dims: dict[str, str],
) -> None:
    """Refuse arrays of an unexpected name, dtype kind, rank or size before a state is built.

    ``schema`` gives each array's dtype kinds (or one dtype, such as ``"u4"``) and shape in
    named dimensions (``""`` for a scalar); a dimension named in ``meta_dims`` takes its value
    from that metadata entry, a number is that size, the others must merely agree across
    arrays. ``decision_scores_`` is always expected.
    """
    schema = {**schema, "decision_scores_": ("f", "images")}
    unknown = sorted(set(arrays) - set(schema))
    if unknown:
        raise ValueError(f"not a valid saved {what}: unexpected arrays {unknown}.")
    dims = {dim: meta[name] for dim, name in meta_dims.items()}
    for name, (kinds, shape) in schema.items():
        if name not in arrays:
            continue  # a missing one is reported when the state is built
        a = np.asarray(arrays[name])
        named = shape.split()
        exact = kinds[1:].isdigit()  # one dtype: "u4"
        right_type = a.dtype == np.dtype(kinds) if exact else a.dtype.kind in kinds
        if not right_type or a.ndim != len(named):
            raise ValueError(
                f"not a valid saved {what}: {name!r} is {a.dtype} of shape "
                f"{a.shape}, expected {len(named)} axes of kind {kinds!r}."
            )
        check_saved_floats(name, a, where=f"not a valid saved {what}")
        for dim, size in zip(named, a.shape, strict=True):
            if dims.setdefault(dim, int(dim) if dim.isdigit() else size) != size:
                raise ValueError(
                    f"not a valid saved {what}: {name!r} has shape {a.shape}, "
                    f"which disagrees with the other arrays ({dim} = {dims[dim]})."
                )


# ---------------------------------------------------------------------- the registry
# Detector classes by name, filled by register (every Detector subclass registers itself).
_DETECTORS: dict[str, Any] = {}


def register(cls: type) -> None:
    """Make ``cls`` loadable by its class name."""
    _DETECTORS[cls.__name__] = cls


def detector_class(name: Any, where: str | os.PathLike) -> Any:
    """The registered detector class called ``name``, looked up by name only.

    Nothing is imported from what a file says: a saved name can only pick one of the classes
    already registered (every detector class, ``FusedDetector`` included).

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
) -> Any:
    """The detector of the class ``meta`` names (its ``from_arrays``), after checking its
    format version.

    Raises:
        ValueError: an unknown class, or another format version (``where`` names the file or
            the part, e.g. a fused detector's component).
    """
    cls = detector_class(stored_class(meta), where)
    check_version(meta, where)
    return cls.from_arrays(meta, arrays)


def load_detector(path: str | os.PathLike) -> Any:
    """Load any saved detector, as the class its file names (``MSDEDetector``, …); it gives
    the scores it gave when saved.

    Raises:
        ValueError: not a saved detector, an unknown class, or another format version.
        FileNotFoundError: no such file.
        PermissionError: the file may not be read.
    """
    meta, arrays = read_npz(path)
    try:
        return detector_from_arrays(meta, arrays, where=path)
    except ValueError as err:
        message = str(err)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from err
