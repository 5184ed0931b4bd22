"""Density weights for MSDE: the paper's block-wise fuzzy-graph counts, and simpler options."""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from msde_jax.core.blocks import centred, map_rows, masked_loop, sq_norms
from msde_jax.core.fuzzy import fuzzy_degree, fuzzy_graph, fuzzy_simplicial_set, fuzzy_union
from msde_jax.core.neighbors import knn, nearest_one

__all__ = [
    "METHODS",
    "default_block_size",
    "density_weights",
]

METHODS = ("msde", "fuzzy_degree", "uniform")

_BISECT_TOL = 1e-4
_BISECT_STEPS = 50


def default_block_size(n_neighbors: int) -> int:
    """The published block size b = min(1000, max(3q, 100)) for q neighbours."""
    return min(1000, max(3 * n_neighbors, 100))


def _row_distances(s: jax.Array) -> jax.Array:
    """Euclidean distances between the rows of a (b, b) matrix."""
    sq = sq_norms(s)
    gram = jnp.dot(s, s.T, precision=lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0))


def _block_weights(x, n_valid, *, n_neighbors, tau, fraction, n_radii, index_sum_quirk):
    """The paper's weights for one block of b rows, of which the first ``n_valid`` are real."""
    b = x.shape[0]
    dtype = x.dtype
    rows = jnp.arange(b)
    row_valid = rows < n_valid
    ref_sqnorm = jnp.where(row_valid, sq_norms(x), jnp.inf)
    k = min(n_neighbors, b)
    dist, idx = jax.vmap(lambda q, i: nearest_one(q, x, ref_sqnorm, k, self_index=i))(x, rows)
    valid = row_valid[:, None] & row_valid[idx]
    k_eff = jnp.minimum(n_neighbors, n_valid).astype(dtype)
    graph = fuzzy_graph(dist, idx, valid, k_eff)
    s = fuzzy_union(graph)

    pair = row_valid[:, None] & row_valid[None, :] & (rows[:, None] != rows[None, :])
    d = _row_distances(s)
    lo = jnp.min(jnp.where(pair, d, jnp.inf))
    hi = jnp.max(jnp.where(pair, d, -jnp.inf))

    def counts(radius):
        return jnp.sum(pair & (d <= radius), axis=1)

    def qualifies(radius, t, required):
        above = row_valid & (counts(radius) > t)
        # The authors' code sums the positions of the qualifying rows instead of counting them.
        stat = jnp.sum(jnp.where(above, rows, 0)) if index_sum_quirk else jnp.sum(above)
        return stat >= required

    tau_eff = jnp.minimum(tau, n_valid - 1).astype(dtype)
    required = jnp.floor(fraction * n_valid).astype(dtype)
    strict = qualifies(hi, tau_eff, required)
    relaxed = qualifies(hi, tau_eff / 2, required / 2)
    t = jnp.where(strict, tau_eff, tau_eff / 2)
    req = jnp.where(strict, required, required / 2)

    def bisect_cond(state):
        a, bb, step = state
        return (bb - a > _BISECT_TOL) & (step < _BISECT_STEPS)

    def bisect_body(state):
        a, bb, step = state
        mid = (a + bb) / 2
        ok = qualifies(mid, t, req)
        return jnp.where(ok, a, mid), jnp.where(ok, mid, bb), step + 1

    # Starting from an empty bracket skips the search when neither count is ever met.
    start = jnp.where(strict | relaxed, lo, hi)
    eps = masked_loop(bisect_cond, bisect_body, (start, hi, 0), _BISECT_STEPS)[1]

    delta = (eps - 1e-6) / n_radii
    radii = eps - delta * jnp.arange(n_radii, dtype=dtype)
    w = jnp.mean(jax.vmap(counts)(radii).astype(dtype), axis=0)
    # A block of one row has no pairs (hi = -inf): its weight is 0.
    return jnp.where(row_valid & (n_valid > 1), w, 0.0)


@partial(
    jax.jit,
    static_argnames=(
        "method",
        "n_neighbors",
        "block_size",
        "n_radii",
        "index_sum_quirk",
        "batch_size",
    ),
)
def density_weights(
    x: ArrayLike,
    *,
    method: str = "msde",
    n_neighbors: int = 15,
    block_size: int | None = None,
    tau: float | ArrayLike = 70.0,
    fraction: float | ArrayLike = 0.3,
    n_radii: int = 4,
    index_sum_quirk: bool = False,
    batch_size: int | None = None,
    n_valid: int | ArrayLike | None = None,
) -> jax.Array:
    """Per-point density weights w (n,) for the weighted mean shift.

    ``method="msde"`` is the published scheme (Kar et al., arXiv 2602.03293), computed on
    consecutive blocks of b rows (b = min(1000, max(3q, 100)); one block when n ≤ 3q; the last
    block may be shorter and is treated as a block of its own size r). In each block:

    1. the UMAP fuzzy union S of its q-nearest-neighbour graph (:func:`fuzzy_simplicial_set`),
       dense b × b;
    2. each row sᵢ of S is a point; cᵢ(r) = #{j ≠ i : ‖sᵢ − sⱼ‖ ≤ r};
    3. ε is the smallest radius (bisection over [min, max] of the off-diagonal row distances,
       tolerance 1e-4, at most 50 steps) at which #{i : cᵢ(ε) > τ} ≥ ⌊fraction·r⌋, with
       τ capped at r − 1; if that never holds, τ/2 and half the count are tried, and failing
       that ε is the maximum distance;
    4. wᵢ = mean over m = 0..n_radii−1 of cᵢ(ε − m·Δ), Δ = (ε − 1e-6)/n_radii.

    Blocks are independent and equally sized (the last is padded and masked), so they are
    vmapped. The weights depend on the order of the rows, as in the published code.

    ``method="fuzzy_degree"`` gives the row sums of one global fuzzy graph over all points
    (order-free, O(n·k²) memory past the kNN search); ``method="uniform"`` gives ones.

    Args:
        x: (n, d) points.
        method: ``"msde"``, ``"fuzzy_degree"`` or ``"uniform"`` (static).
        n_neighbors: q, the fuzzy graph's neighbour count (static).
        block_size: rows per block (static); ``None`` uses the published size.
        tau: the count threshold τ (70 in the paper).
        fraction: the share of rows that must exceed τ (0.3 in the paper).
        n_radii: how many radii are averaged (static; 4 in the paper).
        index_sum_quirk: reproduce the published code's bug that sums the positions of the
            qualifying rows instead of counting them, which makes ε smaller. For parity checks
            against that code only (static).
        batch_size: rows processed at a time (static): whole blocks for ``"msde"``, kNN query
            rows for ``"fuzzy_degree"``. ``None`` does everything at once.
        n_valid: how many leading rows are real (traced; ``None``: all). The rows after them
            are padding, so that sizes in one bucket share a program: they get weight 0 and
            the blocks are those of the ``n_valid`` real rows. The default ``block_size``,
            read on the padded count, gives the real count's blocks while 3q ≤ 1,000;
            beyond, pass the real count's. ``"msde"`` and ``"uniform"`` only.

    Returns:
        (n,) non-negative weights, in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    real = n if n_valid is None else jnp.asarray(n_valid, jnp.int32)
    if method == "uniform":
        return (jnp.arange(n) < real).astype(x.dtype)
    if method == "fuzzy_degree":
        if n_valid is not None:
            raise ValueError("n_valid (padding) is supported by method='msde' and 'uniform' only.")
        return fuzzy_degree(
            fuzzy_simplicial_set(knn(x, k=min(n_neighbors, n), batch_size=batch_size))
        )

    # Every block ranks its neighbours by ‖r‖² − 2qᵀr: on rows centred on the real rows'
    # mean, so float32 keeps the ranking on data far from the origin (no distance moves).
    x = centred(x, jnp.arange(n) < real)[0]
    if block_size is None:
        block_size = n if n <= 3 * n_neighbors else default_block_size(n_neighbors)
    b = min(block_size, n)
    n_blocks = -(-n // b)
    padded = jnp.pad(x, ((0, n_blocks * b - n), (0, 0))).reshape(n_blocks, b, x.shape[1])
    n_valid = jnp.clip(real - b * jnp.arange(n_blocks), 0, b)
    block = partial(
        _block_weights,
        n_neighbors=n_neighbors,
        tau=jnp.asarray(tau, x.dtype),
        fraction=jnp.asarray(fraction, x.dtype),
        n_radii=n_radii,
        index_sum_quirk=index_sum_quirk,
    )
    blocks_per_step = None if batch_size is None else max(1, batch_size // b)
    w = map_rows(lambda args: block(*args), (padded, n_valid), blocks_per_step)
    return w.reshape(-1)[:n]
