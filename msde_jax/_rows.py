"""Row-block evaluation shared by every n×m computation in the package."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def map_rows(fn: Callable[..., Any], xs: Any, batch_size: int | None) -> Any:
    """Apply a per-row function to every row of ``xs`` (a pytree of arrays).

    ``batch_size=None`` vectorises over all rows at once; an int evaluates ``batch_size`` rows at
    a time with ``jax.lax.map`` (the remainder, when ``batch_size`` does not divide the number of
    rows, is one extra smaller block), so peak memory is O(batch_size · m) instead of O(n · m).
    """
    if batch_size is None:
        return jax.vmap(fn)(xs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size}.")
    return lax.map(fn, xs, batch_size=batch_size)


def rank_distances(q: jax.Array, reference: jax.Array, reference_sqnorm: jax.Array) -> jax.Array:
    """Squared Euclidean distances from ``q`` (d,) to every reference row (m, d), less ‖q‖².

    ‖r‖² − 2qᵀr orders the reference rows exactly as ‖q − r‖² does (‖q‖² is the same for all
    of them) and costs one matrix product once vmapped. The highest matmul precision keeps TPUs
    and GPUs from bfloat16/TF32 passes.
    """
    return reference_sqnorm - 2 * jnp.dot(q, reference.T, precision=lax.Precision.HIGHEST)


def sq_norms(x: jax.Array) -> jax.Array:
    """Row-wise squared norms, (n, d) -> (n,)."""
    return jnp.sum(x * x, axis=-1)
