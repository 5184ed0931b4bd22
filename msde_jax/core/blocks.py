"""Row helpers: row-block evaluation shared by every n×m computation in the package, and
content keys that identify rows by their values (for order-free blocks and folds)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = [
    "bucket_fit_rows",
    "bucket_rows",
    "centred",
    "chunked_rows",
    "content_order",
    "map_rows",
    "masked_loop",
    "rank_distances",
    "row_keys",
    "sample_keys",
    "sq_norms",
]


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


def masked_loop(
    cond: Callable[[Any], Any], body: Callable[[Any], Any], init: Any, max_steps: int
) -> Any:
    """``lax.while_loop(cond, body, init)`` as a fixed count of ``max_steps`` steps.

    Each step applies ``body`` only where ``cond`` holds (``jnp.where`` over the state), so the
    result equals the while loop's whenever that loop stops within ``max_steps`` steps (every
    caller's ``cond`` bounds its own step count by at most ``max_steps``), under ``vmap`` too,
    where each element stops on its own. The trip count is known to XLA: on a GPU a
    data-dependent loop copies its condition to the host every iteration, this one never does.
    """

    def step(_: Any, state: Any) -> Any:
        go = cond(state)
        new = body(state)
        return jax.tree.map(lambda n, o: jnp.where(go, n, o), new, state)

    return lax.fori_loop(0, max_steps, step, init)


# Row counts are rounded up to a power of two (at least 8) up to this many, and to a multiple
# of it beyond, so that ragged batches reuse a few compiled shapes (≤ 2× padding, ≤ 1/8 past it).
_BUCKET_STEP = 4096


def bucket_fit_rows(m: int) -> int:
    """The padded count for ``m`` training samples: the next multiple of 2^max(0, b − 4),
    b = bit length of m − 1, so at most 1/8 is padding (476 → 480, 381 → 384, 305 → 320).
    Finer than :func:`bucket_rows`, whose up to 2× padding would double a fit's work: fits of
    nearby sizes (the cross-fit folds, refits on a few more images) share one program."""
    step = 1 << max(0, (m - 1).bit_length() - 4)
    return -(-m // step) * step


def bucket_rows(m: int, least: int = 8) -> int:
    """The padded row count for ``m`` rows: the next power of two ≥ max(m, ``least``) up to
    4096, then the next multiple of 4096."""
    if m <= _BUCKET_STEP:
        return max(least, 1 << (m - 1).bit_length())
    return -(-m // _BUCKET_STEP) * _BUCKET_STEP


def chunked_rows(fn: Callable[[Any], Any], x: Any, chunk: int, *, least: int = 8) -> Any:
    """``fn(x)`` for a row-wise ``fn``, evaluated on chunks of ``chunk`` rows.

    ``x`` is padded (copies of its last row) to :func:`bucket_rows` rows (at least ``least``)
    when that is at most ``chunk``, else to a multiple of ``chunk`` and passed ``chunk`` rows
    at a time: every
    call, whatever its row count, runs the program compiled for ``chunk`` rows or one of the
    few power-of-two sizes below it, and the chunks are dispatched without waiting for each
    other. The outputs (a pytree of arrays with rows first) are fetched once, concatenated
    and cut back to the ``m`` rows given, as NumPy arrays. A ``jax.Array`` is padded and
    split on its device.
    """
    m = x.shape[0]
    if chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk}.")
    size = bucket_rows(m, least)
    if size <= chunk:
        parts = [fn(_pad_rows(x, size))]
    else:
        x = _pad_rows(x, -(-m // chunk) * chunk)
        parts = [fn(x[start : start + chunk]) for start in range(0, x.shape[0], chunk)]
    parts = jax.device_get(parts)  # one fetch for all chunks
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(p) for p in a])[:m], *parts)


def _pad_rows(x: Any, rows: int) -> Any:
    """``x`` with copies of its last row appended up to ``rows`` rows (on its device for a
    ``jax.Array``)."""
    extra = rows - x.shape[0]
    if extra <= 0:
        return x
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.concatenate([x, xp.repeat(x[-1:], extra, axis=0)])


def rank_distances(q: jax.Array, reference: jax.Array, reference_sqnorm: jax.Array) -> jax.Array:
    """Squared Euclidean distances from ``q`` (d,) to every reference row (m, d), less ‖q‖².

    ‖r‖² − 2qᵀr orders the reference rows exactly as ‖q − r‖² does (‖q‖² is the same for all
    of them) and costs one matrix product once vmapped. The highest matmul precision keeps TPUs
    and GPUs from bfloat16/TF32 passes.
    """
    return reference_sqnorm - 2 * jnp.dot(q, reference.T, precision=lax.Precision.HIGHEST)


def centred(x: jax.Array, valid: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    """``(x − c, c)``: the rows of ``x`` (n, d) less c (d,), the mean of the real rows
    (``valid``, (n,) bool; ``None``: all).

    Euclidean distances do not move with c, but their float32 ranking ‖r‖² − 2qᵀr does: on
    data far from the origin (raw intensities, non-negative features with a large common
    offset) the cancellation reorders neighbours. Ranking centred rows keeps the terms at the
    data's spread. c is a constant to gradients (the distances do not depend on it).
    """
    if valid is None:
        mean = jnp.mean(x, axis=0)
    else:
        real = jnp.asarray(valid, bool)[:, None]
        total = jnp.sum(jnp.where(real, x, 0), axis=0)
        mean = total / jnp.maximum(jnp.sum(real), 1).astype(x.dtype)
    mean = lax.stop_gradient(mean)
    return x - mean[None], mean


def sq_norms(x: jax.Array) -> jax.Array:
    """Row-wise squared norms, (n, d) -> (n,)."""
    return jnp.sum(x * x, axis=-1)


def row_keys(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes, (n,) uint64: a key that ignores where the row is
    (floating-point −0.0 hashed as 0.0, :func:`sample_keys`).

    Sorting rows by it scatters them pseudo-randomly (unlike sorting by a coordinate, which
    would put similar rows in the same weight block) and depends only on their values. Rows
    are hashed in blocks of about 1 MiB, so the temporary memory stays bounded.
    """
    return sample_keys(np.asarray(x).reshape(len(x), -1))


def content_order(x: np.ndarray) -> np.ndarray:
    """A permutation of the rows of ``x`` that depends only on their values, not their order.

    Identical rows tie, and their order does not matter.
    """
    return np.argsort(row_keys(x), kind="stable")


# Input bytes hashed per block: each becomes 8 (uint64) in the block's temporary.
_HASH_BLOCK_BYTES = 1 << 20
_FNV_PRIME = 0x100000001B3


def sample_keys(x: np.ndarray) -> np.ndarray:
    """:func:`row_keys` of each sample (row) of ``x`` (n, ...) flattened; (n,) uint64.

    The rolling hash Σⱼ bⱼ pʲ⁺¹ mod 2⁶⁴ of each sample's bytes b (p the 64-bit FNV prime),
    then an avalanche mix. Samples are hashed a block of about 1 MiB at a time (each block
    copied contiguous, widened to uint64 and multiplied by the powers as one integer matrix
    product, which wraps mod 2⁶⁴ as the sum of products would, with no product array).
    Floating-point values are hashed as ``v + 0.0``: −0.0 as 0.0, which it equals (every
    other value keeps its bytes), so a copy of a sample whose zeros carry a sign is a copy."""
    n = x.shape[0]
    width = x[0].nbytes if n else 0
    multipliers = np.cumprod(np.full(width, _FNV_PRIME, dtype=np.uint64), dtype=np.uint64)
    keys = np.empty(n, np.uint64)
    step = max(1, _HASH_BLOCK_BYTES // max(width, 1))
    for i in range(0, n, step):
        rows = min(step, n - i)
        block = np.ascontiguousarray(x[i : i + step])
        if jax.dtypes.issubdtype(block.dtype, np.inexact):  # bfloat16 included
            block = block + block.dtype.type(0)  # −0.0 + 0.0 = 0.0; a new contiguous block
        block = block.view(np.uint8).reshape(rows, width)
        keys[i : i + step] = block.astype(np.uint64) @ multipliers
    with np.errstate(over="ignore"):
        keys ^= keys >> np.uint64(33)
        keys *= np.uint64(0xFF51AFD7ED558CCD)
        keys ^= keys >> np.uint64(33)
    return keys
