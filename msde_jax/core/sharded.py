"""Data parallelism over a device mesh: neighbour search, mean shift and row-wise scoring with
the rows sharded across devices and the reference replicated (or gathered), by ``jax.shard_map``.

Every function here gives what its one-device counterpart gives (same neighbours, same shifted
points up to float rounding of differently blocked matrix products), on any number of devices,
including a number that does not divide the rows: the rows are padded to a multiple of the mesh
size and the padding is masked (it is never anyone's neighbour) and dropped. On several hosts
the same code runs on a mesh of all processes' devices after ``jax.distributed.initialize()``
(README, "Many devices and hosts"); a result may then span the hosts: read it with
``jax.experimental.multihost_utils.process_allgather``. An input placed on devices other than
the mesh's is copied to the mesh, as the one-device functions take any placement.
"""

from collections.abc import Callable, Sequence
from functools import partial, wraps
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from msde_jax.core.blocks import centred, map_rows, masked_loop, sq_norms
from msde_jax.core.mean_shift import (
    MeanShiftResult,
    first_windows,
    from_centred,
    move_points,
    shift_one,
)
from msde_jax.core.neighbors import Neighbors, nearest_one

__all__ = [
    "row_mesh",
    "row_sharded",
    "sharded_knn",
    "sharded_mean_shift",
]

_AXIS = "rows"


def row_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (axis ``"rows"``) over ``devices`` (default: every device of every
    process, ``jax.devices()``)."""
    return Mesh(np.array(list(devices) if devices is not None else jax.devices()), (_AXIS,))


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"expected a one-axis mesh (rows), got axes {mesh.axis_names}; use row_mesh()."
        )
    return mesh.axis_names[0]


def _pad(x: jax.Array, multiple: int) -> jax.Array:
    extra = -x.shape[0] % multiple
    return jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1)) if extra else x


def _on(mesh: Mesh, x: Any) -> Any:
    """``x`` where ``mesh``'s programs can read it: a ``jax.Array`` on devices other than the
    mesh's (one device, say, as a one-device function accepts it) is copied to the mesh,
    replicated; anything else (NumPy, ``None``, an array on the mesh) is left as it is."""
    if isinstance(x, jax.Array) and x.sharding.device_set != set(mesh.devices.flat):
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
    return x


def _mesh_inputs(jitted: Callable[..., Any]) -> Callable[..., Any]:
    """``jitted(*args, mesh=mesh, **kwargs)`` with every argument first put where the mesh's
    program can read it (:func:`_on`): jit refuses an array committed to other devices."""

    @wraps(jitted)
    def run(*args: Any, mesh: Mesh, **kwargs: Any) -> Any:
        args = tuple(_on(mesh, a) for a in args)
        return jitted(*args, mesh=mesh, **{k: _on(mesh, v) for k, v in kwargs.items()})

    return run


def row_sharded(fn: Callable[[jax.Array], Any], mesh: Mesh) -> Callable[[ArrayLike], Any]:
    """Wrap a row-wise function ``fn(x) -> pytree of (m, ...) arrays`` so that its rows are
    split across ``mesh``'s devices.

    ``fn`` must treat rows independently (a row's output does not depend on the other rows), as
    the inductive scorers do; whatever it closes over (a fitted state, a reference set) is
    replicated. Rows are padded with copies of the last row to a multiple of the mesh size and
    the padding is dropped from the outputs.
    """
    axis = _axis(mesh)
    mapped = jax.jit(
        jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=PartitionSpec(axis),
            out_specs=PartitionSpec(axis),
            # Loops inside fn (the per-point shift) carry device-local values.
            check_vma=False,
        )
    )

    def run(x: ArrayLike) -> Any:
        x = jnp.asarray(_on(mesh, x))
        m = x.shape[0]
        extra = -m % mesh.size
        if extra:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])
        return jax.tree.map(lambda a: a[:m], mapped(x))

    return run


@_mesh_inputs
@partial(jax.jit, static_argnames=("k", "mesh", "batch_size"))
def sharded_knn(
    queries: ArrayLike,
    reference: ArrayLike | None = None,
    *,
    k: int,
    mesh: Mesh,
    batch_size: int | None = None,
) -> Neighbors:
    """:func:`~msde_jax.core.knn` with the queries sharded over ``mesh`` and the reference
    replicated: each device searches its block of queries against every reference row.

    Args:
        queries: (m, d) points whose neighbours are wanted.
        reference: (n, d) candidates; ``None`` means the queries themselves (each point its
            own first neighbour, as in :func:`~msde_jax.core.knn`).
        k: neighbours, 1 ≤ k ≤ n (static).
        mesh: a one-axis device mesh (:func:`row_mesh`; static).
        batch_size: queries per block on each device (static).

    Returns:
        ``Neighbors(distances (m, k), indices (m, k))``, as :func:`~msde_jax.core.knn`.
    """
    axis = _axis(mesh)
    queries = jnp.asarray(queries)
    m = queries.shape[0]
    self_neighbours = reference is None
    # one dtype for both, as knn ranks them (a float reference was truncated to int queries)
    dtype = jnp.result_type(queries, *(() if self_neighbours else (reference,)), float)
    queries = queries.astype(dtype)
    reference = queries if self_neighbours else jnp.asarray(reference, dtype)
    n = reference.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of reference points ({n}), got {k}.")
    rows = _pad(jnp.arange(m, dtype=jnp.int32), mesh.size)
    padded = _pad(queries, mesh.size)

    ranked = centred(reference)  # ranked centred, as knn ranks

    def local(q, row, ref, ranked):
        ref_sq = sq_norms(ranked[0])

        def one(args):
            qi, i = args
            self_index = i if self_neighbours else None
            return nearest_one(qi, ref, ref_sq, k, self_index=self_index, ranked=ranked)

        return map_rows(one, (q, row), batch_size)

    spec, whole = PartitionSpec(axis), PartitionSpec()
    dist, idx = jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, whole, whole), out_specs=(spec, spec)
    )(padded, rows, reference, ranked)
    return Neighbors(dist[:m], idx[:m])


@_mesh_inputs
@partial(jax.jit, static_argnames=("mesh", "k", "max_iter", "batch_size"))
def sharded_mean_shift(
    x: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    mesh: Mesh,
    k: int = 50,
    step_size: float | ArrayLike = 0.33,
    max_iter: int = 8,
    tol: float | ArrayLike = 0.01,
    batch_size: int | None = None,
) -> MeanShiftResult:
    """The blurring shift of :func:`~msde_jax.core.mean_shift` (exact neighbours), its points
    sharded over ``mesh``.

    Each iteration every device gathers the current points of all devices (one all-gather of
    n × d), moves its own rows toward the weighted mean of their k nearest, and the devices
    agree on the stopping rule through one all-reduce of the shift lengths. For the inductive
    shift, whose rows are independent, wrap :func:`~msde_jax.core.mean_shift` with
    :func:`row_sharded`.

    Args:
        x: (n, d) points.
        weights: (n,) density weights (default: ones).
        mesh: a one-axis device mesh (:func:`row_mesh`; static).
        k, step_size, max_iter, tol, batch_size: as :func:`~msde_jax.core.mean_shift`.

    Returns:
        :class:`~msde_jax.core.MeanShiftResult`, as the one-device blurring shift.
    """
    axis = _axis(mesh)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):  # step_size and tol would truncate to 0
        x = x.astype(jnp.result_type(float))
    n = x.shape[0]
    k = min(k, n)
    w = jnp.ones(n, x.dtype) if weights is None else jnp.asarray(weights, x.dtype)
    step_size = jnp.asarray(step_size, x.dtype)
    tol = jnp.asarray(tol, x.dtype)
    valid = _pad(jnp.ones(n, bool), mesh.size)
    xc, c = centred(x)  # as mean_shift: centred, then put back where x is
    xp, wp = _pad(xc, mesh.size), _pad(w, mesh.size)

    def local(y0, w_local, ok, origin):
        w_all = lax.all_gather(w_local, axis, tiled=True)
        ok_all = lax.all_gather(ok, axis, tiled=True)

        def cond(state):
            _, _, it, converged, _ = state
            return (it < max_iter) & ~converged

        def body(state):
            y, disp, it, _, previous = state
            y_all = lax.all_gather(y, axis, tiled=True)
            sqn = jnp.where(ok_all, sq_norms(y_all), jnp.inf)

            def one(row):
                return shift_one(row[0], y_all, sqn, w_all, k, row[1], origin)

            m, delta, idx = map_rows(one, (y, previous), batch_size)
            delta = jnp.where(ok, delta, 0.0)
            mean_delta = lax.psum(jnp.sum(delta), axis) / n
            y = move_points(y, m, delta, step_size)
            return y, disp + delta, it + 1, mean_delta < tol, idx

        rows = y0.shape[0]
        init = (y0, jnp.zeros(rows, y0.dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        return masked_loop(cond, body, init + (first_windows((rows,), k),), max_iter)[:4]

    spec = PartitionSpec(axis)
    points, disp, n_iter, converged = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, spec, spec, PartitionSpec()),
        out_specs=(spec, spec, PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )(xp, wp, valid, -c)
    return from_centred(x, xc, MeanShiftResult(points[:n], disp[:n], n_iter, converged))
