"""Weight files other than torch pickles: safetensors, and Flax variables stored as safetensors.

:func:`load_state_dict` reads any supported weights file, telling safetensors from a torch
checkpoint by suffix or content, and an ONNX model by its ``.onnx`` suffix.
:func:`save_variables` / :func:`load_variables` store nested Flax variables (adapted backbones,
training checkpoints) as a ``.safetensors`` file whose names join the tree's keys with ``/``
and whose header says ``format: msde_jax.variables``.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msde_jax._files import arrays_checksum, atomic_write
from msde_jax.backbones.onnx_file import load_onnx_state_dict
from msde_jax.backbones.torch_pickle import _WIDEN_TO_FLOAT32, load_torch_state_dict

__all__ = [
    "VARIABLES_FORMAT",
    "flatten_variables",
    "load_safetensors",
    "load_state_dict",
    "load_variables",
    "read_safetensors_metadata",
    "save_variables",
]


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file with the ``safetensors`` library (numpy backend).

    Args:
        path: The file.

    Returns:
        ``{name: array}``; ``bfloat16`` tensors are widened to ``float32``. (float8 tensors
        cannot be read: the ``safetensors`` library's numpy backend does not know them.)

    Raises:
        ImportError: ``safetensors`` is not installed.
        ValueError: The file is not a valid safetensors file, or holds float8 tensors.
    """
    return _widened(_read_safetensors(path))


def _widened(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bfloat16 (and float8) arrays as float32, the others as they are."""
    return {
        k: v.astype(np.float32) if v.dtype.name in _WIDEN_TO_FLOAT32 else np.array(v)
        for k, v in arrays.items()
    }


def _read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file's tensors as stored (see :func:`load_safetensors`)."""
    try:
        from safetensors.numpy import load_file
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .safetensors weights needs the `safetensors` package: pip install safetensors"
        ) from err
    try:
        arrays = load_file(os.fspath(path))
    except OSError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError
        hint = ""
        if "float8" in str(err):
            hint = (
                "; float8 tensors cannot be read: save the weights in float32, float16 or "
                "bfloat16 (e.g. {k: v.float() for k, v in state_dict.items()} in PyTorch)"
            )
        raise ValueError(f"{path}: could not read safetensors file ({err}){hint}") from err
    return arrays


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a weights file of any supported kind into ``{name: numpy array}``.

    ``.safetensors`` files (by suffix or content) go to :func:`load_safetensors`; ``.onnx``
    files to :func:`~msde_jax.backbones.onnx_file.load_onnx_state_dict` (a model exported from
    PyTorch, its ``Linear`` weights renamed and transposed back); anything else is read as a
    torch checkpoint by :func:`load_torch_state_dict`.

    Args:
        path: A ``.safetensors`` file, an ``.onnx`` model or a ``torch.save`` checkpoint.

    Returns:
        ``{name: array}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: A torch pickle names a global outside the allowlist.
        ValueError: The file is neither a safetensors file nor a torch checkpoint, or an
            ``.onnx`` file that cannot be read (:class:`~msde_jax.backbones.onnx_file.
            OnnxFileError`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix.lower() == ".onnx":
        return load_onnx_state_dict(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return load_safetensors(path)
    return load_torch_state_dict(path)


# --------------------------------------------------------------------------------------------
# Flax variables (adapted backbones, training checkpoints) as safetensors.

VARIABLES_FORMAT = "msde_jax.variables"


def flatten_variables(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"params": {"conv": {"kernel": a}}}`` → ``{"params/conv/kernel": a}`` (leaves as given).

    Raises:
        ValueError: a name contains ``/``.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"variable name {key!r} contains '/'.")
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_variables(value, name))
        else:
            flat[name] = value
    return flat


def save_variables(
    path: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, str]
) -> Path:
    """Write a nested ``{name: {...: array}}`` tree (e.g. Flax ``{"params", "batch_stats"}``)
    to a ``.safetensors`` file, keys joined with ``/``, atomically (a crash never leaves a
    half-written file under ``path``).

    Args:
        path: Target file.
        variables: Nested mappings with array leaves; names must not contain ``/``.
        metadata: String key/values stored in the file header (``format`` is added).

    Returns:
        The path written.
    """
    from safetensors.numpy import save

    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_variables(variables).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        **{str(k): str(v) for k, v in metadata.items()},
        "format": VARIABLES_FORMAT,
        "sha256": arrays_checksum(flat),  # verified by load_variables
    }
    return atomic_write(path, save(flat, metadata=header))


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata in a ``.safetensors`` header (``{}`` if none, or not safetensors)."""
    path = Path(path)
    if not path.is_file() or not _looks_like_safetensors(path):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), "np") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path}: could not read safetensors file ({err})") from err


def load_variables(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a file written by :func:`save_variables`.

    Returns:
        ``(variables, metadata)``: the nested tree of numpy arrays (bfloat16 ones widened to
        float32) and the header metadata.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a msde_jax variables file, or its tensors do not match the
            SHA-256 saved in its header (a damaged file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != VARIABLES_FORMAT:
        raise ValueError(
            f"{path}: not a msde_jax variables file (written by save_variables / "
            "`msde-jax train-backbone`)."
        )
    flat = _read_safetensors(path)  # the tensors as saved (and summed), widened after the check
    stored = metadata.get("sha256")
    if stored is not None and stored != arrays_checksum(flat):
        raise ValueError(
            f"{path} is damaged: its tensors do not match the checksum saved with them; "
            "restore it from a copy or train again."
        )
    flat = _widened(flat)
    tree: dict[str, Any] = {}
    for name, array in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    return tree, metadata
