"""A backbone's Flax variables from any weights an :class:`~msde_jax.Embedder` accepts.

The ImageNet weights, a torch or safetensors state dict (a file or ``{name: array}``), adapted
variables written by :func:`msde_jax.ssl.train_backbone` (checked against the network's
structure), or a seeded random initialisation; each with a fingerprint of the exact weights.
"""

import functools
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msde_jax.backbones._convert import WeightMappingError, _host_array
from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.weight_files import (
    VARIABLES_FORMAT,
    flatten_variables,
    load_state_dict,
    load_variables,
    read_safetensors_metadata,
)

__all__ = [
    "abstract_variables",
    "describe_weights",
    "load_backbone_variables",
    "random_variables",
    "variables_dtype",
]


def load_backbone_variables(
    backbone: str,
    weights: str | os.PathLike | Mapping[str, Any] | None,
    *,
    image_size: int = 224,
    cache_dir: str | None = None,
    seed: int = 0,
) -> tuple[dict, str]:
    """Flax variables (``{"params"[, "batch_stats"]}``, float32 arrays: NumPy, or JAX arrays on
    the default device from the ResNet and ViT converters) of ``backbone`` built with
    ``num_classes=0``, from any ``weights`` that :class:`~msde_jax.Embedder` accepts.

    Returns:
        ``(variables, fingerprint)``: the fingerprint is a sha256 prefix of the exact weights
        (``"random-seed-<seed>"`` for ``weights="random"``).

    Raises:
        FileNotFoundError: no such weights file.
        ValueError: any fault of the weights, naming the file: unreadable, code in a pickle
            (:class:`~msde_jax.backbones.torch_pickle.UnsafeCheckpointError`), no state dict,
            or tensors that do not fit the network (missing, unexpected, of the wrong shape,
            not real, NaN or infinite: :class:`~msde_jax.backbones._convert.WeightMappingError`).
    """
    spec = backbone_spec(backbone)
    module = spec.build(0)
    if isinstance(weights, str) and weights == "imagenet":  # as config() and repr() write None
        weights = None
    if isinstance(weights, str) and weights == "random":
        return random_variables(module, image_size, seed), f"random-seed-{seed}"
    if _is_variables(weights) or _is_variables_file(weights):
        variables = _adapted_variables(weights, backbone, module, image_size)
        return variables, _fingerprint(flatten_variables(variables))
    if weights is None:
        weights = spec.default_weights(cache_dir)
    if isinstance(weights, Mapping):
        return spec.convert(weights, 0), _fingerprint(weights)
    path = os.fspath(weights)
    state_dict = load_state_dict(path)
    try:
        variables = spec.convert(state_dict, 0)
    except WeightMappingError as err:  # name the file, as every other fault of it
        raise WeightMappingError(f"{path}: {err}") from err
    return variables, _fingerprint(state_dict)


def abstract_variables(module: Any, image_size: int) -> Any:
    """Shapes and dtypes of ``module``'s variables for image_size² RGB inputs (no compute).

    Tracing a network's initialisation takes a CPU about half a second (EfficientNet-Lite0)
    and every random or adapted :class:`~msde_jax.Embedder` needs it, so the shapes are kept
    per process for equal modules (Flax modules compare by their fields) and image sizes;
    each call gets its own containers."""
    return jax.tree.map(lambda leaf: leaf, _abstract_variables(module, image_size))


@functools.lru_cache(maxsize=32)
def _abstract_variables(module: Any, image_size: int) -> Any:
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), dummy)


def random_variables(module: Any, image_size: int, seed: int = 0) -> Any:
    """Seeded random variables for ``module`` drawn with NumPy (He-normal kernels, unit scales,
    layer scales and variances, zero biases and means): instant, where compiling Flax's
    initialisers takes tens of seconds on a CPU. For tests and shape checks; not a trained
    network."""
    shapes = abstract_variables(module, image_size)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if leaf.ndim >= 2 and name in ("kernel", "weight"):
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name in ("scale", "var") or name.startswith("layer_scale"):  # (a ViT's 0 would
            return np.ones(leaf.shape, np.float32)  # make every block the identity)
        if leaf.ndim >= 2:  # token and position embeddings
            return rng.normal(0, 0.02, leaf.shape).astype(np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def variables_dtype(variables: Any) -> Any:
    """The dtype the variables are stored in (that of their first leaf)."""
    return jax.tree.leaves(variables)[0].dtype


def describe_weights(weights: Any) -> str:
    """What ``weights`` was, as :meth:`Embedder.config` records it: ``"imagenet"`` for
    ``None``, ``"variables"`` or ``"state_dict"`` for mappings, else the path or
    ``"random"``."""
    if weights is None:
        return "imagenet"
    if isinstance(weights, Mapping):
        return "variables" if _is_variables(weights) else "state_dict"
    return os.fspath(weights)


def _is_variables(weights: Any) -> bool:
    return isinstance(weights, Mapping) and isinstance(weights.get("params"), Mapping)


def _is_variables_file(weights: Any) -> bool:
    if not isinstance(weights, str | os.PathLike):
        return False
    meta = read_safetensors_metadata(weights)
    return meta.get("format") == VARIABLES_FORMAT


def _adapted_variables(weights: Any, backbone: str, module: Any, image_size: int) -> dict:
    """Flax variables of an adapted backbone, checked against ``module``'s structure."""
    source = "the given variables"
    if not isinstance(weights, Mapping):
        path = os.fspath(weights)
        source = f"the variables in {path}"
        weights, meta = load_variables(path)
        if meta.get("kind") == "checkpoint":
            raise ValueError(
                f"{path} is a training checkpoint, not an adapted backbone: use the run's "
                "backbone.safetensors (written when it finishes), or continue the run with "
                "resume=True (command line: --resume)."
            )
        if meta.get("backbone") not in (None, backbone):
            raise ValueError(
                f"{path} holds {meta['backbone']} weights, not {backbone}: use "
                f"Embedder({meta['backbone']!r}, weights=...) "
                f"(command line: --backbone {meta['backbone']})."
            )
    expected = flatten_variables(abstract_variables(module, image_size))
    got = flatten_variables({k: v for k, v in weights.items() if k in ("params", "batch_stats")})
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        n for n in set(expected) & set(got) if tuple(expected[n].shape) != tuple(got[n].shape)
    )
    not_finite = sorted(
        n
        for n in set(expected) & set(got)
        if n not in wrong and not np.isfinite(np.asarray(got[n], np.float32)).all()
    )
    if missing or unexpected or wrong or not_finite:
        raise ValueError(
            f"{source} do not fit {backbone}: "
            + "; ".join(
                f"{what}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                for what, names in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", wrong),
                    ("NaN or infinite values", not_finite),
                )
                if names
            )
        )
    return {
        col: jax.tree.map(lambda a: np.asarray(a, np.float32), weights[col])
        for col in ("params", "batch_stats")
        if col in weights
    }


def _fingerprint(state_dict: Mapping[str, Any]) -> str:
    """sha256 of a state dict's names, shapes, dtypes and values (which weights, exactly)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        arr = np.ascontiguousarray(_host_array(state_dict[name]))  # torch bf16 / grad too
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]
