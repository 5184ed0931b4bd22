"""The memory banks of a patch-bank fit: one per subset of the training images (the final
fit and each cross-fit fold's training part), chosen by the greedy or the two-stage coreset
(:class:`~msde_jax.detectors.patch_bank.BankConfig`'s ``coreset``).

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
from msde_jax.core.blocks import bucket_fit_rows
from msde_jax.core.coreset import kcenter_greedy_batched
from msde_jax.core.memory_bank import MemoryBank, bank_fit, bank_fit_subsets

__all__ = ["subset_banks"]


def subset_banks(
    x: np.ndarray,
    keys: np.ndarray,
    config: Any,
    subsets: list[np.ndarray],
    n_banks: int,
) -> list[MemoryBank]:
    """One bank per subset of the images (sorted indices into the checked patches ``x``
    (n, ..., c) with content ``keys``), each bank's ``indices`` the rows of ``x[subset]``
    flattened to (len(subset) · P, c) in the order given, for the first ``n_banks`` subsets
    (every subset still shapes the two-stage coreset's chunks, so the banks are the ones all
    the subsets give).

    Every bank takes its images in content order, so it depends on which images, not on
    their order, and :func:`~msde_jax.core.bank_fit` keeps its rows in that order (then patch
    position) for the weights and the shift. ``coreset="greedy"`` searches the patches of
    every subset (:func:`_banks`); ``"two_stage"`` searches the picks of a first stage
    (:func:`_first_stage`) instead.

    Args:
        x: (n, P, c) or (n, g, g, c) checked patch features.
        keys: (n,) their content keys.
        config: the detector's :class:`~msde_jax.detectors.patch_bank.BankConfig`.
        subsets: sorted image indices, one array per bank.
        n_banks: how many leading subsets get a bank.
    """
    n, c = x.shape[0], x.shape[-1]
    n_patches = math.prod(x.shape[1:-1])
    patches = x.reshape(n, n_patches, c)
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
        "projection_dim": config.projection(c),
        "key": jax.random.key(config.seed),
    }
    if config.coreset == "two_stage":
        pool = _first_stage(patches, order, members, config, fit)
        inside = [np.isin(pool // n_patches, member) for member in wanted]
        vectors = patches[order[pool // n_patches], pool % n_patches]
        banks, picked = _banks(vectors, inside, bucket_fit_rows(pool.size), config, fit)
        flat = [pool[rows] for rows in picked]  # pool rows → rows of the ordered patches
    else:
        in_member = np.zeros((len(wanted), n), bool)
        for s, member in enumerate(wanted):
            in_member[s, member] = True
        inside = list(np.repeat(in_member, n_patches, axis=1))
        ordered = patches[order].reshape(-1, c)
        banks, flat = _banks(ordered, inside, bucket_fit_rows(n) * n_patches, config, fit)
    out = []
    for subset, bank, rows in zip(subsets[:n_banks], banks, flat, strict=True):
        # rows of the ordered patches → rows of x[subset] in the order given
        image = np.searchsorted(subset, order[rows // n_patches])
        given = (image * n_patches + rows % n_patches).astype(np.int32)
        out.append(bank._replace(indices=jax.device_put(given)))  # a copy, no program
    return out


def _banks(
    rows: np.ndarray, inside: list[np.ndarray], padded: int, config: Any, fit: dict
) -> tuple[list[MemoryBank], list[np.ndarray]]:
    """One bank per subset of the (N, c) ``rows`` (``inside[s]``: (N,) booleans), and the
    rows each bank took, as indices into ``rows``.

    When every subset has more rows than the bank holds, all the searches run as one program
    over the rows padded to ``padded`` (:func:`~msde_jax.core.bank_fit_subsets`): the subsets
    share each pass over the rows, and nearby N share the program. Otherwise each subset is
    fitted on its own by :func:`~msde_jax.core.bank_fit` (a bank of all its rows where it has
    no more than ``size``)."""
    counts = [int(mask.sum()) for mask in inside]
    if config.size < min(counts):
        n, c = rows.shape
        valid = np.zeros((len(inside), padded), bool)
        valid[:, :n] = inside
        flat = np.concatenate([rows, np.zeros((padded - n, c), rows.dtype)])
        joint = bank_fit_subsets(flat, valid, batch_size=config.batch(config.size), **fit)
        # split on the host: indexing the device arrays would compile a slice per field
        host = jax.device_get(joint)
        banks = [MemoryBank(*(jax.device_put(f[s]) for f in host)) for s in range(len(inside))]
        return banks, [np.asarray(f) for f in host.indices]
    banks, picked = [], []
    for mask, count in zip(inside, counts, strict=True):
        batch = config.batch(min(config.size, count))
        banks.append(bank_fit(rows[mask], batch_size=batch, **fit))
        picked.append(np.flatnonzero(mask)[np.asarray(banks[-1].indices)])
    return banks, picked


def _first_stage(
    patches: np.ndarray,
    order: np.ndarray,
    members: list[np.ndarray],
    config: Any,
    fit: dict,
) -> np.ndarray:
    """The first stage of ``coreset="two_stage"``: the rows of the content-ordered patches
    (image · P + patch, ascending) that the second stage searches.

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
            block = np.zeros((per_call, padded, n_patches, c), patches.dtype)
            counts = np.full(per_call, config.size, np.int32)  # an empty set's picks go unread
            for b, chunk in enumerate(group):
                block[b, : chunk.size] = patches[order[chunk]]
                counts[b] = chunk.size * n_patches
            search = _chunk_search(config.size, fit["projection_dim"])
            chosen = search(block.reshape(per_call, padded * n_patches, c), counts, fit["key"])
            for chunk, rows in zip(group, np.asarray(chosen), strict=False):
                picks.append(chunk[rows // n_patches] * n_patches + rows % n_patches)
    return np.sort(np.concatenate(picks))


@functools.lru_cache(maxsize=8)
def _chunk_search(n_select: int, projection_dim: int | None) -> Exported:
    """The first stage's searches (:func:`~msde_jax.core.kcenter_greedy_batched` for
    ``n_select`` picks, in step on an accelerator), ``search(chunks, counts, key)``, jitted as
    one program whose trace is kept on disk (:class:`~msde_jax._exported.Exported`)."""
    together = jax.default_backend() != "cpu"

    def search(chunks: jax.Array, counts: jax.Array, key: jax.Array) -> jax.Array:
        return kcenter_greedy_batched(
            chunks, n_select, counts, projection_dim=projection_dim, key=key, together=together
        )

    return Exported(jax.jit(search), "kcenter", static=(n_select, projection_dim, together))
