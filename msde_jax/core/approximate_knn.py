"""Approximate nearest neighbours: a balanced tree of principal-direction splits, searched leaf
against nearby leaves by dense matrix products.

The rows are split in two at the median of their projection on the segment's principal
direction, recursively, until every leaf holds at most ``leaf_size`` rows (all leaves hold the
same number of slots, at most one of them padding). Each leaf is then compared with ``probes``
nearby leaves (itself first, then those its rows' nearest leaf centroids are most often in):
one (leaf × probes·leaf) matrix product and one top-k per leaf, so a search costs
O(n · probes · leaf_size · d) instead of the O(n² d) of :func:`~msde_jax.core.knn`, and every step
has a fixed shape (no data-dependent sizes, no host round trips), which is what accelerators
and ``jax.jit`` want. With one leaf (n ≤ ``leaf_size``) the search is exact.
"""

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from msde_jax.core.blocks import centred, map_rows, sq_norms
from msde_jax.core.neighbors import Neighbors

__all__ = [
    "DEFAULT_LEAF_SIZE",
    "DEFAULT_PROBES",
    "Partition",
    "approximate_knn",
    "check_tree",
    "effective_probes",
    "leaves_per_step",
    "partition",
    "tree_slots",
]

DEFAULT_LEAF_SIZE = 128
DEFAULT_PROBES = 8
_POWER_STEPS = 3
_VOTES = 2  # nearest leaf centroids each row votes for
# Each leaf's rows vote among this many leaves per probe (at least _MIN_POOL) nearest its own.
_POOL_PER_PROBE = 4
_MIN_POOL = 32
# Leaves are processed at least this many rows at a time: fewer, larger products per step.
_MIN_STEP_ROWS = 1024
_PROBE_BLOCK = 16  # leaves per step when counting votes


class Partition(NamedTuple):
    """Rows grouped into leaves of equal size, and the leaves each leaf is searched against.

    Attributes:
        slots: (n_leaves, leaf) int32 row index held by each leaf slot; the value n (one past
            the last row) marks a padding slot.
        probes: (n_leaves, p) int32 leaves each leaf is compared with, the leaf itself first
            (:func:`probe_leaves`).
    """

    slots: jax.Array
    probes: jax.Array


def tree_shape(n: int, leaf_size: int) -> tuple[int, int]:
    """(n_leaves, slots per leaf): n_leaves = 2^L, the fewest leaves of at most ``leaf_size``."""
    depth = max(0, math.ceil(math.log2(n / leaf_size))) if n > leaf_size else 0
    n_leaves = 2**depth
    return n_leaves, -(-n // n_leaves)


def _split_level(level: jax.Array, slots: jax.Array, x_pad: jax.Array, n: int, n_leaves: int):
    """One level of the tree on all segments at once: reorder each of the 2^level segments of
    ``slots`` (equal runs of row indices) by the projection of its rows on their principal
    direction, so that each segment's two halves are its children.

    The direction comes from a few power iterations started at the segment's row farthest from
    its centre (deterministic; a segment of identical rows gets 0 and keeps its order). Padding
    slots go alternately to the front and the back, so each child gets half of them and no
    leaf ends up with more than one. Fixed shapes throughout, so the levels run in one loop.
    """
    size = slots.shape[0]
    leaf = size // n_leaves
    seg_len = size // (1 << level)
    seg = jnp.arange(size) // seg_len
    valid = slots < n
    # Segments are runs of whole leaves: sums over a segment are sums of per-leaf sums (a
    # static reshape), so only n_leaves rows are ever scattered, never n.
    pts = x_pad[slots].reshape(n_leaves, leaf, -1)
    ok = valid.reshape(n_leaves, leaf)
    leaf_seg = jnp.arange(n_leaves) // (n_leaves // (1 << level))

    def seg_sum(per_leaf):
        return jax.ops.segment_sum(
            per_leaf, leaf_seg, num_segments=n_leaves, indices_are_sorted=True
        )[leaf_seg]

    count = jnp.maximum(seg_sum(jnp.sum(ok, axis=1).astype(pts.dtype)), 1.0)
    centre = seg_sum(jnp.sum(jnp.where(ok[..., None], pts, 0.0), axis=1)) / count[:, None]
    c = jnp.where(ok[..., None], pts - centre[:, None, :], 0.0)
    norms = sq_norms(c)
    top = jax.ops.segment_max(jnp.max(norms, axis=1), leaf_seg, num_segments=n_leaves)
    v = seg_sum(jnp.sum(jnp.where((norms == top[leaf_seg][:, None])[..., None], c, 0.0), axis=1))
    for _ in range(_POWER_STEPS):
        v = v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), 1e-30)
        u = jnp.sum(c * v[:, None, :], axis=2, keepdims=True)
        v = seg_sum(jnp.sum(c * u, axis=1))
    proj = jnp.sum(c * v[:, None, :], axis=2).reshape(-1)
    pads = jnp.cumsum(~valid) - ~valid
    pad_rank = pads - pads[seg * seg_len]
    pad_key = jnp.where(pad_rank % 2 == 0, -jnp.inf, jnp.inf)
    return slots[jnp.lexsort((jnp.where(valid, proj, pad_key), seg))]


def leaf_centroids(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of the valid rows of each leaf, (n_leaves, leaf, d) -> (n_leaves, d); +inf for a
    leaf with no valid rows, so that it is never anyone's nearest leaf."""
    count = jnp.sum(valid, axis=1)
    total = jnp.sum(jnp.where(valid[..., None], values, 0.0), axis=1)
    centre = total / jnp.maximum(count, 1)[:, None]
    return jnp.where((count > 0)[:, None], centre, jnp.inf)


def probe_leaves(values: jax.Array, valid: jax.Array, probes: int) -> jax.Array:
    """(n_leaves, probes) the leaves each leaf is searched against, the leaf itself first.

    Each leaf first takes a pool of the ``max(_POOL_PER_PROBE · probes, _MIN_POOL)`` leaves
    whose centroids are nearest its own; each of its rows then votes for its ``_VOTES``
    nearest centroids in that pool, and the leaf probes the pool's leaves its rows voted for
    most (ties, and leaves no row voted for, by centroid distance). Votes serve a leaf that
    straddles two groups of points better than the distance between centroids alone; the pool
    keeps their cost at O(n · pool · d) instead of O(n · n_leaves · d), which grows as n².
    """
    n_leaves, leaf, d = values.shape
    centroids = leaf_centroids(values, valid)
    finite = jnp.all(jnp.isfinite(centroids), axis=1)
    safe = jnp.where(finite[:, None], centroids, 0.0)
    c_sq = jnp.where(finite, sq_norms(safe), jnp.inf)
    size = min(max(_POOL_PER_PROBE * probes, _MIN_POOL), n_leaves)
    votes = min(_VOTES, size)

    def pool_of(args):
        centre, me = args
        gap = c_sq - 2 * safe @ centre + sq_norms(centre)
        gap = jnp.where(finite, jnp.maximum(gap, 0.0), jnp.inf).at[me].set(-jnp.inf)
        pool = lax.top_k(-gap, size)[1]
        return pool, jnp.maximum(gap[pool], 0.0)

    pools, gaps = map_rows(pool_of, (safe, jnp.arange(n_leaves)), _PROBE_BLOCK)

    def one_leaf(args):
        rows, ok, pool, gap = args
        near = lax.top_k(-(c_sq[pool][None, :] - 2 * rows @ safe[pool].T), votes)[1]
        count = (
            jnp.zeros(size, values.dtype)
            .at[near.reshape(-1)]
            .add(jnp.repeat(ok, votes).astype(values.dtype))
        )
        # Counts are whole numbers: a term in (0, 1) orders ties by centroid distance; the
        # leaf itself is the pool's first entry and always comes first.
        score = jnp.where(finite[pool], count + 1 / (2 + gap), -jnp.inf).at[0].set(jnp.inf)
        return pool[lax.top_k(score, probes)[1]]

    return map_rows(one_leaf, (values, valid, pools, gaps), _PROBE_BLOCK).astype(jnp.int32)


def leaves_per_step(batch_size: int | None, leaf: int) -> int | None:
    """Leaves per step for ``batch_size`` rows per block (at least 1,024 rows and one leaf;
    ``None``: all leaves at once)."""
    return None if batch_size is None else max(1, max(batch_size, _MIN_STEP_ROWS) // leaf)


def check_tree(leaf_size: int, probes: int) -> None:
    """Refuse tree settings that cannot work, saying which."""
    if not isinstance(leaf_size, int) or leaf_size < 2:
        raise ValueError(f"leaf_size must be an int of at least 2, got {leaf_size!r}.")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive int, got {probes!r}.")


def effective_probes(n: int, k: int, leaf_size: int, probes: int) -> int:
    """The probes actually used: enough leaves to hold k real rows (a leaf holds at most one
    padding slot), and at most the number of leaves."""
    n_leaves, leaf = tree_shape(n, leaf_size)
    return min(max(probes, -(-k // max(leaf - 1, 1))), n_leaves)


def tree_slots(x: jax.Array, leaf_size: int) -> jax.Array:
    """(n_leaves, leaf) the leaf slots of the rows of ``x`` (n, d): the row index in each slot,
    n for padding (:attr:`Partition.slots`), from the principal-direction tree."""
    n, d = x.shape
    n_leaves, leaf = tree_shape(n, leaf_size)
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)])
    slots = jnp.minimum(jnp.arange(n_leaves * leaf, dtype=jnp.int32), n)
    return lax.fori_loop(
        0,
        int(math.log2(n_leaves)),
        lambda level, s: _split_level(level, s, x_pad, n, n_leaves),
        slots,
    ).reshape(n_leaves, leaf)


@partial(jax.jit, static_argnames=("leaf_size", "probes"))
def partition(x: ArrayLike, *, leaf_size: int = DEFAULT_LEAF_SIZE, probes: int = DEFAULT_PROBES):
    """Split the rows of ``x`` (n, d) into equal leaves by a principal-direction tree.

    Args:
        x: (n, d) points.
        leaf_size: most rows per leaf (static).
        probes: leaves each leaf is searched against, itself included (static; at most the
            number of leaves).

    Returns:
        :class:`Partition`.
    """
    x = jnp.asarray(x)
    slots = tree_slots(x, leaf_size)
    values = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])[slots]
    return Partition(slots, probe_leaves(values, slots < x.shape[0], min(probes, len(slots))))


def candidates(values: jax.Array, probes: jax.Array) -> jax.Array:
    """The rows of the probed leaves as one block: (n_leaves, leaf, ...) -> (p·leaf, ...)."""
    block = values[probes]
    return block.reshape((-1,) + block.shape[2:])


@partial(jax.jit, static_argnames=("k", "leaf_size", "probes", "batch_size"))
def approximate_knn(
    x: ArrayLike,
    *,
    k: int,
    leaf_size: int = DEFAULT_LEAF_SIZE,
    probes: int = DEFAULT_PROBES,
    batch_size: int | None = None,
) -> Neighbors:
    """Approximate k nearest neighbours of every row of ``x`` among the rows of ``x``.

    Like ``knn(x, k=k)`` (each point its own first neighbour at distance 0, distances computed
    directly as ‖q − r‖), but each point's neighbours are sought only among the rows of its
    leaf's ``probes`` nearest leaves (:func:`partition`). Exact when n ≤ ``leaf_size``;
    otherwise the recall (the share of the true k nearest found) depends on the data and grows
    with ``probes`` and ``leaf_size``: measure it with ``benchmarks/bench_neighbors.py``.

    Args:
        x: (n, d) points.
        k: neighbours per point, 1 ≤ k ≤ n (static).
        leaf_size: most rows per leaf (static), at least 2.
        probes: leaves searched per leaf, itself included (static); raised where fewer leaves
            could not hold k rows (:func:`effective_probes`).
        batch_size: rows per block (static): leaves are processed max(batch_size, 1024) // leaf
            at a time (at least one), so memory is O(max(batch_size, 1024) · probes · leaf);
            ``None`` does all leaves at once.

    Returns:
        ``Neighbors(distances (n, k), indices (n, k))``, nearest first.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}.")
    check_tree(leaf_size, probes)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    # Ranked as ‖r‖² − 2qᵀr on centred rows, as knn: far from the origin the float32
    # cancellation reordered neighbours (recall 0.14 at an offset of 3,000, even n ≤ leaf).
    x = centred(x)[0]
    part = partition(x, leaf_size=leaf_size, probes=effective_probes(n, k, leaf_size, probes))
    x_pad = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])
    values = x_pad[part.slots]
    valid = part.slots < n
    sqn = jnp.where(valid, sq_norms(values), jnp.inf)
    leaf = part.slots.shape[1]

    def one_leaf(args):
        queries, probe = args
        ref, ref_sq, ref_rows = (candidates(a, probe) for a in (values, sqn, part.slots))
        score = ref_sq[None, :] - 2 * jnp.dot(queries, ref.T, precision=lax.Precision.HIGHEST)
        # Probe 0 is the leaf itself: slot j of the leaf is column j, the point itself.
        score = score.at[jnp.arange(leaf), jnp.arange(leaf)].set(-jnp.inf)
        pos = lax.top_k(-score, k)[1]
        diff = ref[pos] - queries[:, None, :]
        dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1)).at[:, 0].set(0.0)
        return dist, ref_rows[pos].astype(jnp.int32)

    dist, idx = map_rows(one_leaf, (values, part.probes), leaves_per_step(batch_size, leaf))
    flat = part.slots.reshape(-1)
    out_d = jnp.zeros((n + 1, k), x.dtype).at[flat].set(dist.reshape(-1, k))[:n]
    out_i = jnp.zeros((n + 1, k), jnp.int32).at[flat].set(idx.reshape(-1, k))[:n]
    return Neighbors(out_d, out_i)
