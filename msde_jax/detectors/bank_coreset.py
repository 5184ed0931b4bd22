"""The memory banks of a patch-bank fit: one per subset of the training images (the final
fit and each cross-fit fold's training part), chosen by the greedy or the two-stage coreset
(:class:`~msde_jax.detectors.bank_config.BankConfig`'s ``coreset``).

Host-side orchestration (content order, chunks, padding, index bookkeeping) around the jitted
core searches (:func:`~msde_jax.core.kcenter_greedy_batched`,
:func:`~msde_jax.core.bank_fit_subsets`, :func:`~msde_jax.core.bank_fit`).
"""

import functools
import math
from typing import Any

import jax
import numpy as np

from msde_jax._exported import Exported
from msde_jax._platform import cpu_paths
from msde_jax.core.blocks import bucket_fit_rows
from msde_jax.core.coreset import kcenter_greedy_batched, projection_matrix
from msde_jax.core.memory_bank import MemoryBank, bank_fit, bank_fit_subsets, grid_positions

__all__ = ["position_channels", "subset_banks"]

_SPREAD_ROWS = 1 << 16  # patches per block of position_channels' passes over the features


def position_channels(x: np.ndarray, position: float) -> tuple[np.float32, np.ndarray] | None:
    """The weight of the patches' grid positions and the two channels it gives each patch
    (:func:`~msde_jax.core.with_positions`), or ``None`` with ``position`` = 0.

    The weight is ``position`` × the spread of the training patches, √(Σ_c var_c) (their
    root-mean-square distance from their mean), so that crossing the whole grid costs
    ``position`` such spreads whatever the features' scale. Two passes over ``x`` in blocks of
    patches, in float64 (no copy of the features).

    Args:
        x: (n, h, w, c) checked patch features, or (n, P, c) with P = g².
        position: the weight in spreads, ≥ 0.

    Returns:
        ``(weight, channels)``: the float32 weight and (P, 2) float32 ``weight`` × the grid
        positions (:func:`~msde_jax.core.grid_positions`), row-major as the patches.
    """
    if position == 0:
        return None
    c = x.shape[-1]
    height, width = x.shape[1:3] if x.ndim == 4 else (math.isqrt(x.shape[1]),) * 2
    flat = x.reshape(-1, c)
    blocks = range(0, flat.shape[0], _SPREAD_ROWS)
    total = sum(flat[i : i + _SPREAD_ROWS].sum(axis=0, dtype=np.float64) for i in blocks)
    mean = total / flat.shape[0]
    squares = sum(np.square(flat[i : i + _SPREAD_ROWS] - mean).sum(axis=0) for i in blocks)
    weight = np.float32(position * math.sqrt(float(np.sum(squares / flat.shape[0]))))
    return weight, weight * grid_positions(height, width)


def subset_banks(
    x: np.ndarray,
    keys: np.ndarray,
    config: Any,
    subsets: list[np.ndarray],
    n_banks: int,
    positions: np.ndarray | None = None,
) -> list[MemoryBank]:
    """One bank per subset of the images (sorted indices into the checked patches ``x``
    (n, ..., c) with content ``keys``), each bank's ``indices`` the rows of ``x[subset]``
    flattened to (len(subset) · P, c) in the order given, for the first ``n_banks`` subsets
    (every subset still shapes the two-stage coreset's chunks, so the banks are the ones all
    the subsets give).

    With ``positions`` ((P, 2) channels of :func:`position_channels`) every search (and the
    shift) runs on the patches with those two channels appended, and the banks keep the c
    feature channels.

    Every bank takes its images in content order, so it depends on which images, not on
    their order, and :func:`~msde_jax.core.bank_fit` keeps its rows in that order (then patch
    position) for the weights and the shift. ``coreset="greedy"`` searches the patches of
    every subset (:func:`_banks`); ``"two_stage"`` searches the picks of a first stage
    (:func:`_first_stage`) instead.

    Args:
        x: (n, P, c) or (n, g, g, c) checked patch features.
        keys: (n,) their content keys.
        config: the detector's :class:`~msde_jax.detectors.bank_config.BankConfig`.
        subsets: sorted image indices, one array per bank.
        n_banks: how many leading subsets get a bank.
        positions: ``None``, or (P, 2) channels appended to every patch for the search.
    """
    n, c = x.shape[0], x.shape[-1]
    n_patches = math.prod(x.shape[1:-1])
    patches = x.reshape(n, n_patches, c)
    searched_c = c if positions is None else c + 2
    order = np.argsort(keys, kind="stable")
    position = np.empty(n, np.intp)
    position[order] = np.arange(n)
    members = [np.sort(position[subset]) for subset in subsets]  # rows in content order
    wanted = members[:n_banks]
    fit = {
        "size": config.size,
        "shift": config.shift,
        "k": config.k,
        "step_size": config.step_size,
        "max_iter": config.max_iter,
        "tol": config.tol,
        "density": config.density,
        "projection_dim": config.projection(searched_c),
        "key": jax.random.key(config.seed),
    }
    if fit["projection_dim"] is not None:  # drawn once: no search program draws it again
        dim = fit["projection_dim"]
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        fit["key"] = projection_matrix(fit["key"], searched_c, dim, dtype)
    if config.coreset == "two_stage":
        pool = _first_stage(patches, order, members, config, fit, positions)
        inside = [np.isin(pool // n_patches, member) for member in wanted]
        vectors = _appended(patches[order[pool // n_patches], pool % n_patches], positions, pool)
        banks, picked = _banks(vectors, inside, bucket_fit_rows(pool.size), config, fit, c)
        flat = [pool[rows] for rows in picked]  # pool rows → rows of the ordered patches
    else:
        in_member = np.zeros((len(wanted), n), bool)
        for s, member in enumerate(wanted):
            in_member[s, member] = True
        inside = list(np.repeat(in_member, n_patches, axis=1))
        ordered = patches[order].reshape(-1, c)
        ordered = _appended(ordered, positions, np.arange(ordered.shape[0]))
        banks, flat = _banks(ordered, inside, bucket_fit_rows(n) * n_patches, config, fit, c)
    out = []
    for subset, bank, rows in zip(subsets[:n_banks], banks, flat, strict=True):
        # rows of the ordered patches → rows of x[subset] in the order given
        image = np.searchsorted(subset, order[rows // n_patches])
        given = (image * n_patches + rows % n_patches).astype(np.int32)
        out.append(bank._replace(indices=jax.device_put(given)))  # a copy, no program
    return out


def _appended(rows: np.ndarray, positions: np.ndarray | None, flat: np.ndarray) -> np.ndarray:
    """(N, c) ``rows`` of the patches ``flat`` (image · P + patch) with their two position
    channels appended; as they are without ``positions``."""
    if positions is None:
        return rows
    return np.concatenate([rows, positions[flat % positions.shape[0]]], axis=-1)


def _banks(
    rows: np.ndarray,
    inside: list[np.ndarray],
    padded: int,
    config: Any,
    fit: dict,
    channels: int,
) -> tuple[list[MemoryBank], list[np.ndarray]]:
    """One bank per subset of the (N, ≥ c) ``rows`` (``inside[s]``: (N,) booleans), and the
    rows each bank took, as indices into ``rows``; each bank keeps the first ``channels``
    columns of its rows (the features, without appended positions).

    On an accelerator, when every subset has more rows than the bank holds, all the searches
    run as one program over the rows padded to ``padded``
    (:func:`~msde_jax.core.bank_fit_subsets`): the subsets share each pass over the rows, and
    nearby N share the program. Otherwise each subset is fitted on its own rows by
    :func:`~msde_jax.core.bank_fit` (a bank of all its rows where it has no more than
    ``size``), padded to :func:`~msde_jax.core.blocks.bucket_fit_rows` so that nearby sizes
    share a program: a greedy step is a pass over the rows from memory, and on a CPU a
    subset's own rows cost less than a shared pass over all of them (the six searches of a
    brain MRI bank, 25,000 and 5 × 20,000 of 26,624 rows, on 2 cores, one run each: 6.5 s
    against 7.9 s shared, 10.6 s as one product per step). Both ways give the same banks up
    to float rounding."""
    counts = [int(mask.sum()) for mask in inside]
    if config.size < min(counts) and not cpu_paths():
        n, c = rows.shape
        valid = np.zeros((len(inside), padded), bool)
        valid[:, :n] = inside
        flat = np.concatenate([rows, np.zeros((padded - n, c), rows.dtype)])
        joint = bank_fit_subsets(flat, valid, batch_size=config.batch(config.size), **fit)
        # split on the host: indexing the device arrays would compile a slice per field
        host = jax.device_get(joint)
        host = host._replace(bank=host.bank[..., :channels])
        banks = [MemoryBank(*(jax.device_put(f[s]) for f in host)) for s in range(len(inside))]
        return banks, [np.asarray(f) for f in host.indices]
    banks, picked = [], []
    for mask, count in zip(inside, counts, strict=True):
        batch = config.batch(min(config.size, count))
        n_valid = count if config.size < count else None  # then padded: never picked
        own = np.zeros((bucket_fit_rows(count) if n_valid else count, *rows.shape[1:]), rows.dtype)
        np.compress(mask, rows, axis=0, out=own[:count])  # one copy of the subset's rows
        bank = bank_fit(own, batch_size=batch, n_valid=n_valid, **fit)
        if rows.shape[-1] > channels:  # the positions served the search only
            bank = bank._replace(bank=jax.device_put(np.asarray(bank.bank)[:, :channels]))
        banks.append(bank)
        picked.append(np.flatnonzero(mask)[np.asarray(banks[-1].indices)])
    return banks, picked


def _first_stage(
    patches: np.ndarray,
    order: np.ndarray,
    members: list[np.ndarray],
    config: Any,
    fit: dict,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """The first stage of ``coreset="two_stage"``: the rows of the content-ordered patches
    (image · P + patch, ascending) that the second stage searches (each with its two
    ``positions`` channels appended, where given).

    The images (content-ordered rows ``members`` per subset) fall into atoms, the images
    that belong to the same subsets (the cross-fit folds), and each atom into near-equal
    chunks of at most ``chunk_patches`` patches. Each chunk gives ``size`` rows by the greedy
    search (on the projection the second stage uses), or all its rows where it has no more.
    The chunks' searches run as one program (:func:`~msde_jax.core.kcenter_greedy_batched`:
    in step on an accelerator, one after another on a CPU), as many at a time as
    ``chunk_patches`` allows, each chunk padded to the largest's
    :func:`~msde_jax.core.blocks.bucket_fit_rows` images, so one program serves every group.
    A subset's pool is then the picks of the chunks inside it: a fold's bank never sees the
    fold's patches, and at most about ``chunk_patches`` patches are on the device at a time.
    """
    n, n_patches, c = patches.shape
    membership = np.zeros((n, len(members)), bool)
    for s, member in enumerate(members):
        membership[member, s] = True
    atom = np.unique(membership, axis=0, return_inverse=True)[1].reshape(-1)
    per_chunk = max(1, config.chunk_patches // n_patches)
    chunks = []
    for a in np.unique(atom[membership.any(axis=1)]):
        images = np.flatnonzero(atom == a)
        chunks += np.array_split(images, -(-images.size // per_chunk))
    # a chunk with no more patches than the bank holds gives them all
    picks = [
        (chunk[:, None] * n_patches + np.arange(n_patches)).reshape(-1)
        for chunk in chunks
        if chunk.size * n_patches <= config.size
    ]
    searched = [chunk for chunk in chunks if chunk.size * n_patches > config.size]
    if searched:
        padded = bucket_fit_rows(max(chunk.size for chunk in searched))
        per_call = max(1, config.chunk_patches // (padded * n_patches))
        calls = -(-len(searched) // per_call)
        per_call = -(-len(searched) // calls)  # equal calls, the last filled with empty sets
        for g in range(0, len(searched), per_call):
            group = searched[g : g + per_call]
            width = c if positions is None else c + 2
            block = np.zeros((per_call, padded, n_patches, width), patches.dtype)
            counts = np.full(per_call, config.size, np.int32)  # an empty set's picks go unread
            for b, chunk in enumerate(group):
                block[b, : chunk.size, :, :c] = patches[order[chunk]]
                if positions is not None:
                    block[b, : chunk.size, :, c:] = positions
                counts[b] = chunk.size * n_patches
            search = _chunk_search(config.size, fit["projection_dim"], not cpu_paths())
            chosen = search(block.reshape(per_call, -1, width), counts, fit["key"])
            for chunk, rows in zip(group, np.asarray(chosen), strict=False):
                picks.append(chunk[rows // n_patches] * n_patches + rows % n_patches)
    return np.sort(np.concatenate(picks))


@functools.lru_cache(maxsize=8)
def _chunk_search(n_select: int, projection_dim: int | None, together: bool) -> Exported:
    """The first stage's searches (:func:`~msde_jax.core.kcenter_greedy_batched` for
    ``n_select`` picks, in step if ``together``: on an accelerator),
    ``search(chunks, counts, key)``, jitted as one program whose trace is kept on disk
    (:class:`~msde_jax._exported.Exported`)."""

    def search(chunks: jax.Array, counts: jax.Array, key: jax.Array) -> jax.Array:
        return kcenter_greedy_batched(
            chunks, n_select, counts, projection_dim=projection_dim, key=key, together=together
        )

    return Exported(jax.jit(search), "kcenter", static=(n_select, projection_dim, together))
