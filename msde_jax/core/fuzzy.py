"""UMAP's fuzzy simplicial set (smooth kNN distances and fuzzy union), in JAX (dense only in
:func:`fuzzy_union`, for blocks).

Mirrors ``umap.umap_.smooth_knn_dist``, ``compute_membership_strengths`` and the fuzzy union of
``umap.umap_.fuzzy_simplicial_set`` (McInnes, Healy & Melville, arXiv 1802.03426), given the
same kNN graph. MSDE uses the graph to estimate density weights (:mod:`msde_jax.core.density`).
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from msde_jax.core.blocks import masked_loop
from msde_jax.core.neighbors import Neighbors

__all__ = [
    "FuzzyGraph",
    "fuzzy_degree",
    "fuzzy_simplicial_set",
    "fuzzy_union",
]

# Constants of umap-learn's smooth_knn_dist.
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3


class FuzzyGraph(NamedTuple):
    """A directed fuzzy kNN graph in neighbour layout (row i lists its k neighbours).

    Attributes:
        indices: (n, k) neighbour indices, as in the input :class:`~msde_jax.core.Neighbors`.
        memberships: (n, k) directed memberships aᵢⱼ = exp(−max(0, dᵢⱼ − ρᵢ)/σᵢ), 0 for the
            point itself and for absent (masked) neighbours.
        sigmas: (n,) smooth-kNN bandwidths σᵢ.
        rhos: (n,) distance ρᵢ to the nearest non-identical neighbour.
    """

    indices: jax.Array
    memberships: jax.Array
    sigmas: jax.Array
    rhos: jax.Array


def _smooth_one(dist, valid, target, mean_all, local_connectivity, n_iter):
    """σ and ρ for one row of sorted kNN distances (self first); umap's bisection, per point."""
    nonzero = valid & (dist > 0)
    n_nonzero = jnp.sum(nonzero)
    nz_sorted = jnp.sort(jnp.where(nonzero, dist, jnp.inf))
    index = int(local_connectivity)
    interpolation = local_connectivity - index
    take = partial(jnp.take, nz_sorted, mode="clip")
    if index > 0:
        rho = take(index - 1)
        if interpolation > _SMOOTH_K_TOLERANCE:
            rho = rho + interpolation * (take(index) - take(index - 1))
    else:
        rho = interpolation * take(0)
    max_nonzero = jnp.max(jnp.where(nonzero, dist, 0.0))
    rho = jnp.where(
        n_nonzero >= local_connectivity, rho, jnp.where(n_nonzero > 0, max_nonzero, 0.0)
    )

    # umap skips the first column (the point itself) in the membership sum.
    in_sum = valid.at[0].set(False)

    def psum(mid):
        d = dist - rho
        terms = jnp.where(d > 0, jnp.exp(-d / mid), 1.0)
        return jnp.sum(jnp.where(in_sum, terms, 0.0))

    def cond(state):
        _, _, _, it, done = state
        return (it < n_iter) & ~done

    def body(state):
        lo, hi, mid, it, _ = state
        p = psum(mid)
        done = jnp.abs(p - target) < _SMOOTH_K_TOLERANCE
        above = p > target
        new_hi = jnp.where(above, mid, hi)
        new_lo = jnp.where(above, lo, mid)
        new_mid = jnp.where(above | jnp.isfinite(hi), (new_lo + new_hi) / 2, mid * 2)
        keep = lambda old, new: jnp.where(done, old, new)  # noqa: E731
        return keep(lo, new_lo), keep(hi, new_hi), keep(mid, new_mid), it + 1, done

    one = jnp.ones((), dist.dtype)
    init = (0 * one, jnp.inf * one, one, 0, False)
    sigma = masked_loop(cond, body, init, n_iter)[2]

    row_mean = jnp.sum(jnp.where(valid, dist, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    floor = _MIN_K_DIST_SCALE * jnp.where(rho > 0, row_mean, mean_all)
    return jnp.maximum(sigma, floor), rho


def fuzzy_graph(
    distances: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    k_target: jax.Array,
    *,
    local_connectivity: float = 1.0,
    bandwidth: float | jax.Array = 1.0,
    n_iter: int = 64,
) -> FuzzyGraph:
    """:func:`fuzzy_simplicial_set` on a kNN graph some of whose entries are absent.

    ``valid`` (n, k) marks the neighbours that exist (padding rows of a block do not), and
    ``k_target`` is the neighbour count whose log₂ the membership sums are matched to. Absent
    entries get membership 0 and take no part in ρ, σ or the distance means.
    """
    target = jnp.log2(k_target) * bandwidth
    mean_all = jnp.sum(jnp.where(valid, distances, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    smooth = partial(_smooth_one, local_connectivity=local_connectivity, n_iter=n_iter)
    sigmas, rhos = jax.vmap(smooth, in_axes=(0, 0, None, None))(distances, valid, target, mean_all)
    d = distances - rhos[:, None]
    strength = jnp.where((d <= 0) | (sigmas[:, None] == 0), 1.0, jnp.exp(-d / sigmas[:, None]))
    is_self = indices == jnp.arange(indices.shape[0])[:, None]
    memberships = jnp.where(valid & ~is_self, strength, 0.0).astype(distances.dtype)
    return FuzzyGraph(indices, memberships, sigmas, rhos)


@partial(jax.jit, static_argnames=("local_connectivity", "n_iter"))
def fuzzy_simplicial_set(
    neighbors: Neighbors,
    *,
    local_connectivity: float = 1.0,
    bandwidth: float | ArrayLike = 1.0,
    n_iter: int = 64,
) -> FuzzyGraph:
    """UMAP's directed fuzzy kNN graph: smooth kNN distances and membership strengths.

    For each point i with sorted kNN distances dᵢ₀ = 0 ≤ dᵢ₁ ≤ … (itself first):
    ρᵢ is the distance to the nearest non-identical neighbour, σᵢ is found by bisection so that
    Σ_{j≥1} exp(−max(0, dᵢⱼ − ρᵢ)/σᵢ) = log₂(k)·bandwidth, and the membership is
    aᵢⱼ = exp(−max(0, dᵢⱼ − ρᵢ)/σᵢ) (0 for i itself). The symmetric graph UMAP and MSDE use
    is the fuzzy union S = A + Aᵀ − A∘Aᵀ: :func:`fuzzy_union` builds it densely,
    :func:`fuzzy_degree` gives its row sums without forming it.

    Matches ``umap.umap_.fuzzy_simplicial_set(X, k, None, "euclidean", knn_indices=...,
    knn_dists=...)`` (its ``sigmas``, ``rhos`` and graph) on the same kNN graph.

    Args:
        neighbors: kNN graph of n points onto themselves, each point its own first neighbour
            (``knn(x, k=k)``).
        local_connectivity: number of nearest neighbours assumed fully connected (static).
        bandwidth: scale of the target membership sum.
        n_iter: bisection steps for σ (static).

    Returns:
        :class:`FuzzyGraph` with (n, k) memberships.
    """
    distances = jnp.asarray(neighbors.distances)
    indices = jnp.asarray(neighbors.indices)
    valid = jnp.ones(indices.shape, dtype=bool)
    return fuzzy_graph(
        distances,
        indices,
        valid,
        jnp.asarray(indices.shape[1], distances.dtype),
        local_connectivity=local_connectivity,
        bandwidth=bandwidth,
        n_iter=n_iter,
    )


@jax.jit
def fuzzy_union(graph: FuzzyGraph) -> jax.Array:
    """The dense symmetric fuzzy union S = A + Aᵀ − A∘Aᵀ, (n, n). Memory O(n²): for blocks."""
    n = graph.indices.shape[0]
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], graph.indices.shape)
    a = jnp.zeros((n, n), graph.memberships.dtype).at[rows, graph.indices].add(graph.memberships)
    return a + a.T - a * a.T


@jax.jit
def fuzzy_degree(graph: FuzzyGraph) -> jax.Array:
    """Row sums of the fuzzy union S = A + Aᵀ − A∘Aᵀ, (n,), in O(n·k²) without forming S.

    Σⱼ Sᵢⱼ = Σⱼ aᵢⱼ + Σⱼ aⱼᵢ − Σⱼ aᵢⱼ aⱼᵢ, where aⱼᵢ for each listed edge i → j is looked
    up in j's own neighbour list.
    """
    idx, a = graph.indices, graph.memberships
    n = idx.shape[0]
    out_sum = jnp.sum(a, axis=1)
    in_sum = jnp.zeros(n, a.dtype).at[idx].add(a)
    # back[i, m] = a_{j i} with j = idx[i, m] (0 when i is not among j's neighbours).
    points_back = idx[idx] == jnp.arange(n)[:, None, None]
    back = jnp.sum(jnp.where(points_back, a[idx], 0.0), axis=-1)
    return out_sum + in_sum - jnp.sum(a * back, axis=1)
