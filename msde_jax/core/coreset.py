"""Greedy k-center coreset selection (farthest-point sampling), as PatchCore subsamples its
memory bank."""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from msde_jax.core.blocks import map_rows, sq_norms

__all__ = [
    "kcenter_greedy",
    "random_projection",
]


@partial(jax.jit, static_argnames=("dim", "batch_size"))
def random_projection(
    x: ArrayLike,
    dim: int,
    *,
    key: ArrayLike | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """A Johnson-Lindenstrauss random projection of the rows of ``x`` to ``dim`` dimensions.

    z = x R with R (d, dim) i.i.d. N(0, 1/dim), so E‖zᵢ − zⱼ‖² = ‖xᵢ − xⱼ‖² and, for
    dim ≳ 8 log(n) / ε², all pairwise distances are kept within a factor 1 ± ε with high
    probability. PatchCore (Roth et al., CVPR 2022) projects the patch features this way
    (a dense Gaussian map) before its greedy coreset search; anomalib uses a sparse one.

    Args:
        x: (n, d) points.
        dim: target dimension (static).
        key: PRNG key for R; ``None`` uses ``jax.random.key(0)``, so results are reproducible.
        batch_size: rows projected at a time (static); any value gives the same result.

    Returns:
        (n, dim) projected points, in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    key = jax.random.key(0) if key is None else key
    r = jax.random.normal(key, (x.shape[1], dim), x.dtype) / jnp.sqrt(jnp.asarray(dim, x.dtype))
    return map_rows(lambda row: jnp.dot(row, r, precision=lax.Precision.HIGHEST), x, batch_size)


@partial(jax.jit, static_argnames=("n_select", "projection_dim", "batch_size"))
def kcenter_greedy(
    x: ArrayLike,
    n_select: int,
    *,
    start: int | ArrayLike = 0,
    projection_dim: int | None = None,
    key: ArrayLike | None = None,
    batch_size: int | None = None,
    n_valid: int | ArrayLike | None = None,
) -> jax.Array:
    """Greedy k-center selection: each new row is the one farthest from those already chosen.

    With S₁ = {start} and Dᵢ = min_{s∈S} ‖xᵢ − xₛ‖, every step adds argmaxᵢ Dᵢ to S and lowers
    D by one distance pass from the new row (Gonzalez 1985; the coreset of PatchCore, Roth et al.,
    CVPR 2022, and of Sener & Savarese, ICLR 2018). The covering radius max_i Dᵢ of the result is
    at most twice that of the best possible choice of ``n_select`` rows.

    Memory beyond ``x`` is O(n): the running D, the row norms and the indices (plus the
    (n, projection_dim) projected copy when asked for one). Squared distances are computed as
    ‖xᵢ − μ‖² + ‖xₛ − μ‖² − 2(xᵢ − μ)ᵀ(xₛ − μ), clamped at 0, one matrix-vector product per
    step; centring on the mean μ (without copying x) keeps the cancellation error of that
    formula small when the data sit far from the origin.

    Ties: ``argmax`` takes the lowest index among equal distances, so the result is
    deterministic (the same input gives the same indices, for any ``batch_size``) and of two
    identical rows the lower index is taken first. The distance to an already chosen twin is 0
    only up to rounding, so the remaining twins come last, in an order set by that rounding.
    Chosen rows are masked, so the indices are always distinct and ``n_select = n`` returns a
    permutation of ``range(n)``.

    Args:
        x: (n, d) points.
        n_select: how many rows to choose, 1 ≤ n_select ≤ n (static).
        start: index of the first row (traced: changing it does not recompile). PatchCore
            starts from a random row; pass ``jax.random.randint(...)`` for that.
        projection_dim: if given, run the search on a :func:`random_projection` of ``x`` to
            this many dimensions (static), which makes each pass cheaper by d / projection_dim
            at the price of approximate distances, as PatchCore does (it uses 128).
        key: PRNG key of the projection (``None``: ``jax.random.key(0)``).
        batch_size: rows per block in the projection and in each distance pass (static);
            any value gives the same result, including ones that do not divide n.
        n_valid: only the first ``n_valid`` rows are candidates (traced; ``None``: all n).
            The rows after them are padding: never chosen and left out of the centring mean,
            so data padded to a few bucket sizes reuses one compiled program. The caller keeps
            ``n_select ≤ n_valid`` and ``start < n_valid`` (traced values are not checked).

    Returns:
        (n_select,) int32 row indices in the order they were chosen, ``start`` first.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    if not 1 <= n_select <= n:
        raise ValueError(
            f"n_select must be between 1 and the number of rows ({n}), got {n_select}."
        )
    if projection_dim is not None:
        x = random_projection(x, projection_dim, key=key, batch_size=batch_size)
    if n_valid is None:
        valid, mean = None, jnp.mean(x, axis=0)
    else:
        valid = jnp.arange(n) < n_valid
        mean = jnp.sum(jnp.where(valid[:, None], x, 0), axis=0) / jnp.asarray(n_valid, x.dtype)
    centred_sqnorm = map_rows(lambda row: sq_norms(row - mean), x, batch_size)

    def pass_from(i):
        v = x[i] - mean
        # (xᵢ − μ)ᵀv = xᵢᵀv − μᵀv: the product runs on x itself, so x is never copied.
        dots = map_rows(lambda row: jnp.dot(row, v, precision=lax.Precision.HIGHEST), x, batch_size)
        dots = dots - jnp.dot(mean, v, precision=lax.Precision.HIGHEST)
        return jnp.maximum(centred_sqnorm + sq_norms(v) - 2 * dots, 0.0)

    def body(t, state):
        dist, chosen = state
        last = chosen[t - 1]
        dist = jnp.minimum(dist, pass_from(last)).at[last].set(-jnp.inf)
        return dist, chosen.at[t].set(jnp.argmax(dist).astype(jnp.int32))

    chosen = jnp.zeros(n_select, jnp.int32).at[0].set(jnp.asarray(start, jnp.int32))
    dist = jnp.full(n, jnp.inf, x.dtype)
    if valid is not None:  # padding rows start (and stay) at −∞: argmax never picks them
        dist = jnp.where(valid, dist, -jnp.inf)
    return lax.fori_loop(1, n_select, body, (dist, chosen))[1]
