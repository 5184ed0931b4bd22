"""Weighted kNN mean shift: MSDE's blurring shift and its inductive (fixed-reference) variant."""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from msde_jax.core.approximate_knn import (
    DEFAULT_LEAF_SIZE,
    DEFAULT_PROBES,
    candidates,
    check_tree,
    effective_probes,
    leaves_per_step,
    probe_leaves,
    tree_slots,
)
from msde_jax.core.blocks import centred, map_rows, masked_loop, sq_norms
from msde_jax.core.neighbors import nearest_indices, prune_beyond

__all__ = [
    "NEIGHBOR_SEARCHES",
    "MeanShiftResult",
    "choose_neighbors",
    "mean_shift",
    "move_points",
]

# Below this a point does not move, and a window's total weight is floored (published values).
_MIN_MOVE = 1e-6
_MIN_WEIGHT = 1e-6


class MeanShiftResult(NamedTuple):
    """Outcome of :func:`mean_shift`.

    Attributes:
        points: (n, d) shifted points.
        displacement: (n,) total displacement Dᵢ = Σₜ ‖mᵢ − yᵢ‖ (the tabular MSDE score).
        n_iter: iterations run: a scalar for the blurring shift, (n,) per point for the
            inductive one.
        converged: whether the stopping rule fired before ``max_iter``, shaped like ``n_iter``.
    """

    points: jax.Array
    displacement: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def shift_one(y, reference, reference_sqnorm, reference_weights, k, previous=None, origin=None):
    """The per-point rule: the weighted mean m of y's k nearest reference rows, ‖m − y‖, and
    those rows' indices (k,).

    m = Σ_{j∈N(y)} wⱼ rⱼ / max(Σ_{j∈N(y)} wⱼ, 1e-6), a flat kernel over the kNN window with no
    bandwidth (as published; a window whose weights are all 0 therefore pulls toward the origin).
    ``previous`` (k,), any k distinct reference rows (the point's neighbours in the last
    iteration), only speeds the search up (:func:`~msde_jax.core.neighbors.prune_beyond`).
    ``origin`` (d,): where the origin of that rule lies when y and the rows are given centred
    (:func:`~msde_jax.core.blocks.centred`: −c); ``None``: at 0.
    """
    idx = nearest_indices(y, reference, reference_sqnorm, k, within=previous)
    w = reference_weights[idx]
    weighted = jnp.dot(w, reference[idx], precision=lax.Precision.HIGHEST)
    m = _floored_mean(weighted, jnp.sum(w), origin)
    return m, jnp.linalg.norm(m - y), idx


def _floored_mean(weighted, total, origin):
    """Σ wⱼ rⱼ / max(Σ wⱼ, 1e-6) from the weighted sums (..., d) and weights (...): the weight
    the floor adds sits at ``origin`` (``None``: 0), so centred coordinates give the rule's
    mean on the data as given."""
    floored = jnp.maximum(total, _MIN_WEIGHT)
    if origin is not None:
        gap = (floored - total)[..., None]
        weighted = weighted + gap * origin.reshape((1,) * (weighted.ndim - 1) + (-1,))
    return weighted / floored[..., None]


def move_points(y, m, delta, step_size):
    """One MSDE update: ``y + η(m − y)`` where the window mean moved more than 1e-6."""
    return jnp.where((delta > _MIN_MOVE)[..., None], y + step_size * (m - y), y)


def _window_means(queries, ref, ref_sq, ref_w, k, previous=None, origin=None):
    """The rule of :func:`shift_one` for a block of queries (b, d) against the rows ``ref``
    (c, d): each query's k nearest rows by ``ref_sq − 2 qᵀr``, their weighted mean m, ‖m − q‖,
    and their positions (b, k) (``previous`` and ``origin`` as in :func:`shift_one`).

    The windows' weights form a dense (b × c) matrix, so one matrix product gives every mean;
    on a CPU that is far faster than gathering k rows per query while c is small.
    """
    score = ref_sq[None, :] - 2 * jnp.dot(queries, ref.T, precision=lax.Precision.HIGHEST)
    if previous is not None and ref.shape[-1] > 1:  # not for d = 1: see prune_beyond
        score = prune_beyond(score, previous)
    pos = lax.top_k(-score, k)[1]
    rows = jnp.arange(pos.shape[0])[:, None]
    window = jnp.zeros_like(score).at[rows, pos].set(ref_w[pos])
    weighted = jnp.dot(window, ref, precision=lax.Precision.HIGHEST)
    m = _floored_mean(weighted, jnp.sum(window, axis=-1), origin)
    return m, jnp.linalg.norm(m - queries, axis=-1), pos


def first_windows(shape, k):
    """Windows (shape + (k,)) to bound the first search with: any k distinct columns are an
    exact bound (:func:`~msde_jax.core.neighbors.prune_beyond`), the first k a loose one. Each
    iteration's windows then bound the next one's search, tightly: points move little."""
    return jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), tuple(shape) + (k,))


def _masked_sq_norms(y, valid):
    """Row norms², +inf on padding rows (``valid`` False), which are then never neighbours."""
    sqn = sq_norms(y)
    return sqn if valid is None else jnp.where(valid, sqn, jnp.inf)


def _blurring(x, weights, k, step_size, max_iter, tol, batch_size, valid=None, origin=None):
    count = x.shape[0] if valid is None else jnp.sum(valid).astype(x.dtype)

    def mean_real(delta):
        return jnp.mean(delta) if valid is None else jnp.sum(jnp.where(valid, delta, 0)) / count

    def cond(state):
        _, _, it, converged, _ = state
        return (it < max_iter) & ~converged

    def body(state):
        y, disp, it, _, previous = state
        sqn = _masked_sq_norms(y, valid)
        if batch_size is None:  # all rows at once (small n): one dense block
            m, delta, idx = _window_means(y, y, sqn, weights, k, previous, origin)
        else:

            def one(row):
                return shift_one(row[0], y, sqn, weights, k, row[1], origin)

            m, delta, idx = map_rows(one, (y, previous), batch_size)
        y = move_points(y, m, delta, step_size)
        return y, disp + delta, it + 1, mean_real(delta) < tol, idx

    n = x.shape[0]
    init = (x, jnp.zeros(n, x.dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    init += (first_windows((n,), k),)
    return MeanShiftResult(*masked_loop(cond, body, init, max_iter)[:4])


def _blurring_partitioned(
    x, weights, k, step_size, max_iter, tol, leaf_size, probes, batch_size, origin=None
):
    """The blurring shift with each point's window sought among its leaf's probed leaves.

    The tree (:func:`~msde_jax.core.approximate_knn.tree_slots`) is built once, on the unshifted
    points:
    the shift moves points toward their local means, so a leaf stays a group of nearby points.
    Which leaves each leaf searches (:func:`~msde_jax.core.approximate_knn.probe_leaves`) is
    recomputed
    from the current points every iteration.
    """
    n, d = x.shape
    p = effective_probes(n, k, leaf_size, probes)
    slots = tree_slots(x, leaf_size)
    valid = slots < n
    flat = slots.reshape(-1)
    w_leaf = jnp.concatenate([weights, jnp.zeros(1, weights.dtype)])[slots]
    leaf = slots.shape[1]
    per_step = leaves_per_step(batch_size, leaf)

    def shift_leaf(values, sqn, queries, probe, previous):
        ref, ref_sq, ref_w = (candidates(a, probe) for a in (values, sqn, w_leaf))
        return _window_means(queries, ref, ref_sq, ref_w, k, previous, origin)

    def cond(state):
        _, _, it, converged, _ = state
        return (it < max_iter) & ~converged

    def body(state):
        y, disp, it, _, previous = state
        values = jnp.concatenate([y, jnp.zeros((1, d), y.dtype)])[slots]
        sqn = jnp.where(valid, sq_norms(values), jnp.inf)
        probe = probe_leaves(values, valid, p)
        # The last windows' candidate positions bound the search: tightly where a leaf probes
        # the same leaves as last time (most leaves after the first iterations), loosely but
        # still exactly where its probes changed (any k distinct positions do).
        m, delta, pos = map_rows(
            lambda a: shift_leaf(values, sqn, *a), (values, probe, previous), per_step
        )
        m = jnp.zeros((n + 1, d), y.dtype).at[flat].set(m.reshape(-1, d))[:n]
        delta = jnp.zeros(n + 1, y.dtype).at[flat].set(delta.reshape(-1))[:n]
        y = move_points(y, m, delta, step_size)
        return y, disp + delta, it + 1, jnp.mean(delta) < tol, pos

    init = (x, jnp.zeros(n, x.dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    init += (first_windows(slots.shape, k),)
    return MeanShiftResult(*masked_loop(cond, body, init, max_iter)[:4])


def _inductive(
    x, reference, reference_weights, k, step_size, max_iter, tol, batch_size, valid, origin=None
):
    ref_sqnorm = _masked_sq_norms(reference, valid)

    def one(q):
        def cond(state):
            _, _, it, converged, _ = state
            return (it < max_iter) & ~converged

        def body(state):
            y, disp, it, _, previous = state
            m, delta, idx = shift_one(
                y, reference, ref_sqnorm, reference_weights, k, previous, origin
            )
            return move_points(y, m, delta, step_size), disp + delta, it + 1, delta < tol, idx

        init = (q, jnp.zeros((), q.dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        return masked_loop(cond, body, init + (first_windows((), k),), max_iter)[:4]

    return MeanShiftResult(*map_rows(one, x, batch_size))


@partial(
    jax.jit,
    static_argnames=("k", "max_iter", "batch_size", "neighbors", "leaf_size", "probes"),
)
def mean_shift(
    x: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    reference: ArrayLike | None = None,
    reference_weights: ArrayLike | None = None,
    k: int = 50,
    step_size: float | ArrayLike = 0.33,
    max_iter: int = 8,
    tol: float | ArrayLike = 0.01,
    batch_size: int | None = None,
    neighbors: str = "auto",
    leaf_size: int = DEFAULT_LEAF_SIZE,
    probes: int = DEFAULT_PROBES,
    valid: ArrayLike | None = None,
) -> MeanShiftResult:
    """Density-weighted kNN mean shift (MSDE, Kar et al., arXiv 2602.03293).

    Each iteration moves every point a fraction ``step_size`` (η) toward the weighted mean of
    its k nearest neighbours,

        mᵢ = Σ_{j∈Nᵢ} wⱼ yⱼ / max(Σ_{j∈Nᵢ} wⱼ, 1e-6),   yᵢ ← yᵢ + η (mᵢ − yᵢ),

    (no move where ‖mᵢ − yᵢ‖ ≤ 1e-6) and accumulates the displacement Dᵢ += ‖mᵢ − yᵢ‖.
    The neighbours are ranked and the means taken on the points centred on their mean (the
    reference's, in inductive mode), and each point's result is where it started plus its
    movement: float32 keeps the ranking on data far from the origin, and a point that never
    moves comes back bit for bit (the rule and its floor are unchanged: a window whose
    weights are all 0 still pulls toward the origin of the data as given).

    * ``reference=None`` — the paper's **blurring** shift: the neighbours Nᵢ are the k nearest
      current points (yᵢ itself included), rebuilt every iteration, and all points stop
      together once mean(‖m − y‖) < ``tol``.
    * ``reference`` given — the **inductive** (non-blurring) variant: each point moves toward
      the fixed ``reference`` rows with their ``reference_weights`` and stops on its own once
      ‖m − y‖ < ``tol``. Points never influence each other, so a point's result does not depend
      on the batch it is in.

    Args:
        x: (n, d) points to shift.
        weights: (n,) density weights of ``x`` for the blurring shift (default: ones). Must be
            ``None`` in inductive mode, where only the reference's weights matter.
        reference: (m, d) fixed reference points, or ``None`` for the blurring shift.
        reference_weights: (m,) weights of ``reference`` (default: ones).
        k: neighbours in the kNN window (static); capped at the number of reference points.
        step_size: η, the fraction of the mean-shift vector applied per iteration.
        max_iter: T, the most iterations (static).
        tol: θ, the stopping threshold on the shift length.
        batch_size: points per block in each kNN search (static); memory O(batch_size · m).
        neighbors: the blurring shift's neighbour search (static): ``"exact"`` (every point
            against every point, as published), ``"approximate"`` (each point against the
            rows of its leaf's ``probes`` nearby leaves in a principal-direction tree built on
            the unshifted points, :mod:`msde_jax.core.approximate_knn`; exact when n ≤
            ``leaf_size``), or
            ``"auto"``: exact up to 4,096 points, approximate beyond. The inductive shift is
            always exact (``"approximate"`` is refused there).
        leaf_size: most points per leaf of the approximate search (static, at least 2).
        probes: leaves each leaf is searched against, itself included (static); raised where
            fewer could not hold k points.
        valid: (n,) bool, which rows are real (``None``: all); the others are padding, so that
            sizes in one bucket share a program. In the blurring shift (exact search only)
            padding rows are never neighbours and the stopping rule averages over real rows;
            in the inductive shift it marks the real ``reference`` rows. Their results are
            meaningless. At least k rows must be real.

    Returns:
        :class:`MeanShiftResult` ``(points, displacement, n_iter, converged)``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):  # step_size and tol would truncate to 0
        x = x.astype(jnp.result_type(float))
    step_size = jnp.asarray(step_size, x.dtype)
    tol = jnp.asarray(tol, x.dtype)
    search = choose_neighbors(neighbors, x.shape[0])  # checks ``neighbors`` for both shifts
    if reference is None:
        if reference_weights is not None:
            raise ValueError("reference_weights was given without a reference.")
        w = jnp.ones(x.shape[0], x.dtype) if weights is None else jnp.asarray(weights, x.dtype)
        k = min(k, x.shape[0])
        check_tree(leaf_size, probes)
        if search == "exact":
            xc, c = centred(x, valid)
            moved = _blurring(xc, w, k, step_size, max_iter, tol, batch_size, valid, -c)
            return from_centred(x, xc, moved)
        if valid is not None:
            raise ValueError(
                "valid (padding rows) is supported by the exact search only: pass "
                "neighbors='exact' or drop the padding."
            )
        xc, c = centred(x)
        moved = _blurring_partitioned(
            xc, w, k, step_size, max_iter, tol, leaf_size, probes, batch_size, -c
        )
        return from_centred(x, xc, moved)
    if neighbors == "approximate":
        raise ValueError(
            "the approximate search is for the blurring shift (every point searched among all "
            "the moving points); the inductive shift searches its fixed reference exactly: "
            "pass neighbors='auto' or 'exact'."
        )
    if weights is not None:
        raise ValueError(
            "weights are not used by the inductive shift (points do not pull each other); "
            "pass reference_weights for the reference points instead."
        )
    reference = jnp.asarray(reference, x.dtype)
    rw = (
        jnp.ones(reference.shape[0], x.dtype)
        if reference_weights is None
        else jnp.asarray(reference_weights, x.dtype)
    )
    k = min(k, reference.shape[0])
    reference, c = centred(reference, valid)
    xc = x - c[None]
    moved = _inductive(xc, reference, rw, k, step_size, max_iter, tol, batch_size, valid, -c)
    return from_centred(x, xc, moved)


def from_centred(x: jax.Array, xc: jax.Array, result: MeanShiftResult) -> MeanShiftResult:
    """``result`` of a shift run on the centred points ``xc`` (:func:`centred`), its points
    put back where ``x`` is: x plus their movement, so a point that never moved is ``x``
    itself, bit for bit."""
    return result._replace(points=x + (result.points - xc))


NEIGHBOR_SEARCHES = ("auto", "exact", "approximate")


def choose_neighbors(neighbors: str, n: int) -> str:
    """``"exact"`` or ``"approximate"``: the search the blurring shift uses for ``n`` points
    (``neighbors`` checked)."""
    if neighbors not in NEIGHBOR_SEARCHES:
        raise ValueError(f"neighbors must be one of {NEIGHBOR_SEARCHES}, got {neighbors!r}.")
    if neighbors != "auto":
        return neighbors
    return "exact" if n <= _AUTO_EXACT_ROWS else "approximate"


# Exact while it costs at most about twice the approximate search on a 2-core CPU, where the
# ratio does not move with d (`benchmarks/bench_scale.py crossover`, 8 iterations, k = 50:
# exact / approximate 1.4–1.8× at 2,048 rows, 1.9–2.2× at 4,096, 2.6–2.9× at 8,192 for
# d = 64, 512 and 2,048); this keeps the paper preset's joint shifts (1,076 and 1,838 rows)
# exact. Not set per backend yet: on accelerators the exact products are cheap and the
# crossover is higher, but unmeasured (benchmarks/gpu.sh measures it where a GPU is lent).
_AUTO_EXACT_ROWS = 4096
