"""The saved-detector file: a fitted state as flat named arrays plus a JSON string, in an .npz.

No pickle, so loading executes no code. Version 2 names the density-weight option ``density``
(version 1 called it ``weights``) and stores the training rows' content keys in the state.
"""

import json
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from msde_jax._files import atomic_write
from msde_jax.gaussian import GaussianState
from msde_jax.pca import PCAState

FORMAT_VERSION = 2

# The state's NamedTuple parts, and its fields that may be None (not stored then).
_PARTS = {"pca": PCAState, "gaussian": GaussianState}
_OPTIONAL = ("train_keys",)


def _flatten(state: NamedTuple) -> Iterator[tuple[str, Any]]:
    for name, value in state._asdict().items():
        if name == "config" or value is None:  # the config goes to the JSON as params
            continue
        if name in _PARTS:
            for sub, arr in value._asdict().items():
                yield f"{name}.{sub}", arr
        else:
            yield name, value


def write_detector(
    path: str | os.PathLike, state: NamedTuple, meta: dict[str, Any], *, decision_scores: np.ndarray
) -> None:
    """Write ``state``'s arrays, ``decision_scores`` and ``meta`` (+ the format version)."""
    meta = {**meta, "format_version": FORMAT_VERSION}
    arrays = {f"state.{name}": np.asarray(value) for name, value in _flatten(state)}
    arrays["decision_scores_"] = np.asarray(decision_scores)
    atomic_write(
        path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays), suffix=".npz"
    )


def read_detector(
    path: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """Read a file of :func:`write_detector`: ``(meta, state fields but config, decision scores)``.

    Raises:
        ValueError: for anything that is not such a file, or one of another format version.
    """
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
    stored = {k.removeprefix("state."): v for k, v in files.items() if k.startswith("state.")}
    fields: dict[str, Any] = dict.fromkeys(_OPTIONAL)
    for name, cls in _PARTS.items():
        fields[name] = cls(**{f: jnp.asarray(stored.pop(f"{name}.{f}")) for f in cls._fields})
    fields.update({name: jnp.asarray(value) for name, value in stored.items()})
    return meta, fields, files["decision_scores_"]
