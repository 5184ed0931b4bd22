"""Greedy k-center coreset selection (farthest-point sampling), as PatchCore subsamples its
memory bank."""

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from msde_jax._platform import cpu_paths
from msde_jax.core.blocks import map_rows, sq_norms

__all__ = [
    "kcenter_greedy",
    "kcenter_greedy_batched",
    "kcenter_greedy_subsets",
    "projection_matrix",
    "random_projection",
]


@partial(jax.jit, static_argnames=("d", "dim", "dtype"))
def projection_matrix(key: ArrayLike, d: int, dim: int, dtype: Any = jnp.float32) -> jax.Array:
    """The (d, dim) matrix R of :func:`random_projection` drawn from ``key``: i.i.d.
    N(0, 1/dim), in ``dtype`` (``d``, ``dim``, ``dtype`` static).

    :func:`random_projection` and the coreset searches take it in place of their ``key``: a
    program given R draws nothing, and a random-number generator is a large program to
    compile (about 0.2 s for this one on a CPU, in every program that draws it), so the patch
    bank draws R once for all its searches.
    """
    return jax.random.normal(key, (d, dim), dtype) / jnp.sqrt(jnp.asarray(dim, dtype))


def _matrix(key: ArrayLike | None, d: int, dim: int, dtype: Any) -> jax.Array:
    """R for a projection of d features to ``dim``: drawn from ``key`` (``None``:
    ``jax.random.key(0)``), or ``key`` itself where it is a (d, dim) matrix."""
    if key is None:
        return projection_matrix(jax.random.key(0), d, dim, dtype)
    if jnp.ndim(key) == 2 and not jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        if jnp.shape(key) != (d, dim):
            raise ValueError(
                f"a projection matrix given as key must be (features, dim) = ({d}, {dim}), "
                f"got shape {jnp.shape(key)}."
            )
        return jnp.asarray(key, dtype)
    return projection_matrix(key, d, dim, dtype)


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
            Or R itself, (d, dim), as :func:`projection_matrix` draws it from a key: the
            same projection, without a random-number generator in the program.
        batch_size: rows projected at a time (static); any value gives the same result.

    Returns:
        (n, dim) projected points, in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    r = _matrix(key, x.shape[1], dim, x.dtype)
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
    projected copy when asked for one, kept feature-major, (projection_dim, n); with a
    ``batch_size`` it is projected row-major first, two copies for a moment). Squared
    distances are computed as ‖xᵢ − μ‖² + ‖xₛ − μ‖² − 2(xᵢ − μ)ᵀ(xₛ − μ), clamped at 0, one
    matrix-vector product per step; centring on the mean μ (without copying x) keeps the
    cancellation error of that formula small when the data sit far from the origin.

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
        key: PRNG key of the projection (``None``: ``jax.random.key(0)``), or its matrix
            (:func:`projection_matrix`).
        batch_size: rows per block in the projection (static); any value gives the same
            result, including ones that do not divide n. A distance pass is one product,
            whose output is no larger than the running distances.
        n_valid: only the first ``n_valid`` rows are candidates (traced; ``None``: all n).
            The rows after them are padding: never chosen and left out of the centring mean,
            so data padded to a few bucket sizes reuses one compiled program. The caller keeps
            ``n_select ≤ n_valid`` and ``start < n_valid`` (traced values are not checked).

    Returns:
        (n_select,) int32 row indices in the order they were chosen, ``start`` first.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    _check_select(n_select, n)
    valid = jnp.ones((1, n), bool) if n_valid is None else (jnp.arange(n) < n_valid)[None]
    starts = jnp.asarray(start, jnp.int32)[None]
    return _greedy(x, n_select, valid, starts, projection_dim, key, batch_size)[0]


@partial(jax.jit, static_argnames=("n_select", "projection_dim", "batch_size"))
def kcenter_greedy_subsets(
    x: ArrayLike,
    n_select: int,
    valid: ArrayLike,
    *,
    projection_dim: int | None = None,
    key: ArrayLike | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """:func:`kcenter_greedy` over several subsets of the rows of ``x`` at once.

    Search s runs over the rows where ``valid[s]`` holds, starting from the first of them, and
    gives the rows :func:`kcenter_greedy` gives on ``x[valid[s]]`` from its row 0 (as indices
    into ``x``; equal up to float rounding, which may reorder near-ties). All searches run in
    one compiled program and share each step: on an accelerator one product of x (n, d) with
    the S newest rows (d, S); on a CPU S matrix-vector products, since XLA's CPU product with
    so few columns is slower than they are (:mod:`msde_jax._platform`). A memory bank's
    cross-fit folds and final fit (S = folds + 1) run this way on an accelerator; on a CPU
    each subset's search on its own rows is faster still, since every step reads the rows it
    searches (``benchmarks/bench_bank.py``).

    Rows are centred on the mean of the rows valid in any subset (for the cancellation error,
    as in :func:`kcenter_greedy`); memory beyond ``x`` is O(S · n).

    Args:
        x: (n, d) points.
        n_select: rows chosen per subset, 1 ≤ n_select ≤ every subset's size (static; traced
            sizes are not checked).
        valid: (S, n) boolean: the rows of each subset.
        projection_dim: as in :func:`kcenter_greedy` (static).
        key: PRNG key of the projection (``None``: ``jax.random.key(0)``), or its matrix
            (:func:`projection_matrix`).
        batch_size: rows per block in the projection (static).

    Returns:
        (S, n_select) int32 row indices of ``x``, each subset's in the order they were chosen.
    """
    x = jnp.asarray(x)
    valid = jnp.asarray(valid, bool)
    if valid.ndim != 2 or valid.shape[1] != x.shape[0]:
        raise ValueError(
            f"valid must be (subsets, n) = (S, {x.shape[0]}) booleans, got shape {valid.shape}."
        )
    _check_select(n_select, x.shape[0])
    starts = jnp.argmax(valid, axis=1).astype(jnp.int32)
    return _greedy(x, n_select, valid, starts, projection_dim, key, batch_size)


@partial(jax.jit, static_argnames=("n_select", "projection_dim", "together"))
def kcenter_greedy_batched(
    x: ArrayLike,
    n_select: int,
    n_valid: ArrayLike,
    *,
    projection_dim: int | None = None,
    key: ArrayLike | None = None,
    together: bool | None = None,
) -> jax.Array:
    """:func:`kcenter_greedy` on each of B separate row sets, as one compiled program.

    Search b runs over the first ``n_valid[b]`` rows of ``x[b]`` from its row 0 and gives the
    indices :func:`kcenter_greedy` gives on them (every set projected by the same ``key``).
    The chunks of a two-stage memory-bank coreset run this way. With ``together`` the B
    searches advance in step (``vmap``): ``n_select`` steps in all rather than B ×
    ``n_select``, each one pass over all the rows, which keeps an accelerator busy. Without
    it they run one after another (``lax.map``): the same passes, but over one set's rows
    at a time, which stay in a CPU's cache from one step to the next (five brain MRI
    chunks of 18,816 × 128 float32 rows on 2 cores: 2.5 s against 5.0 s in step). The
    indices are the same either way up to float rounding, which may reorder near-ties.

    Args:
        x: (B, n, d) row sets, each padded to n rows.
        n_select: rows chosen per set, at most every ``n_valid[b]`` (static; not checked).
        n_valid: (B,) how many leading rows of each set are candidates (traced).
        projection_dim: as in :func:`kcenter_greedy` (static).
        key: PRNG key of the projection (``None``: ``jax.random.key(0)``), or its matrix
            (:func:`projection_matrix`).
        together: run the searches in step (static); ``None``: on an accelerator, not on a
            CPU (:func:`msde_jax._platform.cpu_paths`).

    Returns:
        (B, n_select) int32 row indices into each set, in the order they were chosen.
    """
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be (sets, rows, features), got shape {x.shape}.")

    def one(rows: jax.Array, count: jax.Array) -> jax.Array:
        return kcenter_greedy(rows, n_select, projection_dim=projection_dim, key=key, n_valid=count)

    n_valid = jnp.asarray(n_valid, jnp.int32)
    if together is None:
        together = not cpu_paths()
    if together:
        return jax.vmap(one)(x, n_valid)
    return lax.map(lambda args: one(*args), (x, n_valid))


def _check_select(n_select: int, n: int) -> None:
    if not 1 <= n_select <= n:
        raise ValueError(
            f"n_select must be between 1 and the number of rows ({n}), got {n_select}."
        )


def _greedy(
    x: jax.Array,
    n_select: int,
    valid: jax.Array,
    starts: jax.Array,
    projection_dim: int | None,
    key: ArrayLike | None,
    batch_size: int | None,
) -> jax.Array:
    """The greedy searches of S subsets (``valid`` (S, n)) from ``starts`` (S,): (S, n_select).

    A projection is made feature-major, (projection_dim, n), so that each step's product
    ``v @ columns`` gives the (S, n) distances in the layout the running minimum keeps;
    without one, ``x.T`` is a view XLA folds into the product."""
    if projection_dim is None:
        columns = x.T
    else:
        columns = random_projection(x, projection_dim, key=key, batch_size=batch_size).T
    used = jnp.any(valid, axis=0)
    count = jnp.maximum(jnp.sum(used), 1).astype(x.dtype)
    mean = jnp.sum(jnp.where(used[None], columns, 0), axis=1) / count
    centred_sqnorm = jnp.sum(jnp.square(columns - mean[:, None]), axis=0)
    n = x.shape[0]
    rows = lax.broadcasted_iota(jnp.int32, valid.shape, 1)
    # On a CPU, S matrix-vector products rather than one (S, d) × (d, n) product: XLA's CPU
    # product of so few rows is slower than its S matrix-vector passes (the products alone,
    # S = 6 over 128 × 26,624 columns on 2 cores: 1.1 ms a step against 1.9 ms).
    per_subset = valid.shape[0] > 1 and cpu_paths()

    def pass_from(centres):
        v = columns[:, centres].T - mean[None]  # (S, d)
        # (xᵢ − μ)ᵀv = xᵢᵀv − μᵀv: the product runs on the columns themselves, never copied.
        if per_subset:
            dots = jnp.stack([jnp.dot(u, columns, precision=lax.Precision.HIGHEST) for u in v])
        else:
            dots = jnp.dot(v, columns, precision=lax.Precision.HIGHEST)  # (S, n)
        dots = dots - jnp.dot(v, mean, precision=lax.Precision.HIGHEST)[:, None]
        return jnp.maximum(centred_sqnorm[None] + sq_norms(v)[:, None] - 2 * dots, 0.0)

    def body(t, state):
        dist, chosen = state
        last = chosen[:, t - 1]
        dist = jnp.where(rows == last[:, None], -jnp.inf, jnp.minimum(dist, pass_from(last)))
        # argmax as the lowest row holding the maximum: the same index (the rows are finite),
        # but two plain reductions, which XLA vectorises on a CPU (its argmax it does not).
        top = jnp.max(dist, axis=1, keepdims=True)
        return dist, chosen.at[:, t].set(jnp.min(jnp.where(dist == top, rows, n), axis=1))

    chosen = jnp.zeros((valid.shape[0], n_select), jnp.int32).at[:, 0].set(starts)
    # Rows outside a subset start (and stay) at −∞ there: its argmax never picks them.
    dist = jnp.where(valid, jnp.asarray(jnp.inf, x.dtype), -jnp.inf)
    return lax.fori_loop(1, n_select, body, (dist, chosen))[1]
