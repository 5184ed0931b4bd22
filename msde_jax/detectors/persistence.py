"""The saved-detector file: JSON metadata plus flat named arrays, in an .npz.

No pickle, so loading executes no code. The metadata names the detector class
(``"detector"``) and the file format version. Version 2 names the density-weight option
``density`` (version 1 called it ``weights``) and stores the training rows' content keys in the
state; version-2 files written before the class name was stored hold an ``MSDEDetector``.

A fitted state (a ``NamedTuple`` whose fields are arrays, ``None`` or ``NamedTuple`` parts, and
a static ``config``) is stored as one array per leaf, named by its path: ``state.center``,
``state.pca.mean``, … (:func:`state_arrays`, :func:`state_from_arrays`).

A ``FusedDetector`` file is one such file: its metadata lists each component's own metadata
(with its format version, :func:`with_version`, checked when the component is rebuilt) and its
arrays are the components' prefixed ``<name>/`` plus ``fusion.mean`` / ``fusion.std``.
"""

import json
import os
import typing
import zipfile
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from msde_jax._files import arrays_checksum, atomic_write

__all__ = [
    "FORMAT_VERSION",
    "check_version",
    "read_npz",
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
        if name == "config":
            fields[name] = config
        elif _is_namedtuple(hint):
            fields[name] = state_from_arrays(hint, arrays, prefix=key, what=what)
        elif key in arrays:
            fields[name] = jnp.asarray(arrays[key])
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
    atomic_write(
        path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays), suffix=".npz"
    )


def read_npz(
    path: str | os.PathLike, *, what: str = "detector"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a saved detector, without checking its version or class.

    Raises:
        ValueError: for anything that is not an .npz with a JSON ``meta`` entry (``what``
            names the expected class in the message).
    """
    try:
        # The file opened here, so that it is closed even when NumPy fails to read it.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            files = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        # A truncated file, a flipped byte (the zip's CRC), another file renamed.
        raise ValueError(f"{path} is not a saved {what} or is damaged (.npz): {err}") from err
    if "meta" not in files:
        raise ValueError(f"{path} is not a saved {what}: no 'meta' entry.")
    try:
        meta = json.loads(str(files.pop("meta")))
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
