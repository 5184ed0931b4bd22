"""A patch memory bank (PatchCore, Roth et al., CVPR 2022), optionally density-enhanced by MSDE.

Training patches → greedy k-center coreset → (optionally) the blurring MSDE shift of the bank →
each test patch's distance to its nearest bank patch(es) → one score per image.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.core.coreset import kcenter_greedy, kcenter_greedy_subsets
from msde_jax.core.density import density_weights
from msde_jax.core.mean_shift import mean_shift
from msde_jax.core.neighbors import knn

__all__ = [
    "REDUCTIONS",
    "BankPositions",
    "MemoryBank",
    "bank_fit",
    "bank_fit_subsets",
    "grid_positions",
    "image_scores",
    "patch_scores",
    "reduced_patches",
    "with_positions",
]

REDUCTIONS = ("max", "mean", "top")

# The static arguments of the bank fits (shapes, loop counts, methods).
_FIT_STATIC = ("size", "shift", "k", "max_iter", "density", "projection_dim", "batch_size")

# Relative slack in ⌈q·P⌉ so that q·P landing a rounding error above an integer (0.7 · 10 is
# 7.000000000000001 in float64) does not count one patch more.
_ROUNDING_SLACK = 1e-6


class MemoryBank(NamedTuple):
    """A fitted patch memory bank.

    Attributes:
        bank: (m, c) bank patches (shifted, if the bank was fitted with ``shift=True``).
        density: (m,) the density weights the shift used (ones when there was no shift), e.g.
            for an inductive :func:`~msde_jax.core.mean_shift` of test patches toward the bank.
        indices: (m,) int32 rows of the training patches the bank was selected from, one per
            bank row (:func:`bank_fit` gives them in ascending order).
        n_iter: MSDE iterations run on the bank (0 without the shift).
    """

    bank: jax.Array
    density: jax.Array
    indices: jax.Array
    n_iter: jax.Array | int = 0


class BankPositions(NamedTuple):
    """Where the bank's patches lie in their images, for a position-aware distance.

    Attributes:
        weight: () the cost of crossing the whole grid: the distance between two patches is
            √(‖f − f′‖² + weight² ‖p − p′‖²) for features f and grid positions p in [0, 1]².
        bank: (m, 2) each bank row's (row, column) on its image's grid, scaled to [0, 1].
    """

    weight: jax.Array
    bank: jax.Array


def grid_positions(height: int, width: int) -> np.ndarray:
    """(height · width, 2) float32 (row, column) of each patch of a grid, row-major, each
    scaled to [0, 1] (0 on a grid one patch long)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    scaled = [rows / max(height - 1, 1), cols / max(width - 1, 1)]
    return np.stack(scaled, axis=-1).reshape(-1, 2).astype(np.float32)


def with_positions(
    patches: ArrayLike, weight: ArrayLike, grid: tuple[int, int] | None = None
) -> jax.Array:
    """Patch features with two channels more, ``weight`` × their grid positions
    (:func:`grid_positions`): Euclidean distances between such vectors are the position-aware
    distances of :class:`BankPositions`.

    Args:
        patches: (..., h, w, c) features on a grid, or (..., P, c) with ``grid`` = (h, w),
            h · w = P.
        weight: () the cost of crossing the whole grid.
        grid: the (h, w) of flat patches; ``None`` for features on a grid.

    Returns:
        (..., h, w, c + 2) or (..., P, c + 2) in the dtype of ``patches``.
    """
    patches = jnp.asarray(patches)
    height, width = grid if grid is not None else patches.shape[-3:-1]
    where = jnp.asarray(weight, patches.dtype) * grid_positions(height, width)
    where = jnp.broadcast_to(
        where.reshape((*patches.shape[-3:-1], 2) if grid is None else (-1, 2)),
        (*patches.shape[:-1], 2),
    )
    return jnp.concatenate([patches, where], axis=-1)


@partial(jax.jit, static_argnames=_FIT_STATIC)
def bank_fit(
    patches: ArrayLike,
    *,
    size: int,
    shift: bool = False,
    k: int = 50,
    step_size: float | ArrayLike = 0.33,
    max_iter: int = 8,
    tol: float | ArrayLike = 0.01,
    density: str = "msde",
    projection_dim: int | None = None,
    key: ArrayLike | None = None,
    batch_size: int | None = None,
    n_valid: int | ArrayLike | None = None,
) -> MemoryBank:
    """Fit a memory bank: a k-center coreset of the training patches, optionally MSDE-shifted.

    1. ``size`` rows are chosen by :func:`~msde_jax.core.kcenter_greedy` (starting from row 0, on a
       ``projection_dim`` random projection if given); all rows when ``size ≥ N``. The bank
       keeps them in ascending row order, not in the order the coreset chose them.
    2. With ``shift=True`` the bank is density-enhanced: w = ``density_weights(bank,
       method=density)`` and the bank is replaced by the blurring ``mean_shift(bank, w, k=k,
       step_size=step_size, max_iter=max_iter, tol=tol)``. Common patches contract onto their
       modes, and rare patches among the normals are pulled toward them, so a test patch that
       resembles only a rare training patch no longer finds a close match. (``"msde"``
       weights come from blocks of consecutive bank rows: in the training order, because the
       farthest-point order would put the outlying patches together in the first blocks.)

    The medical MSDE defaults are k = 50, η = 0.33, T = 8, θ = 0.01.

    Args:
        patches: (N, c) training patches, or (n_images, P, c) (flattened to (n_images·P, c)).
        size: bank rows m = min(size, N) (static).
        shift: apply the MSDE shift to the bank (static).
        k: the shift's kNN window (static).
        step_size: η (traced).
        max_iter: T (static).
        tol: θ (traced).
        density: the weight scheme of :func:`~msde_jax.core.density_weights` (static).
        projection_dim: dimension of the coreset's random projection (static); ``None``
            searches in the full space.
        key: PRNG key of that projection, or its matrix
            (:func:`~msde_jax.core.projection_matrix`).
        batch_size: rows per block in the weights and the shift's kNN searches (static).
            The coreset's distance passes run unblocked: a matrix-vector pass has O(N) output
            either way, so blocks would bound no memory and only slow each greedy step.
        n_valid: the first ``n_valid`` of the N rows are the training patches, the rest
            padding the coreset never picks (traced; ``None``: all N). Fits of different
            sizes padded to one N then share a compiled program. Needs ``size < n_valid``
            when given (with ``size ≥ n_valid`` the bank is every valid row: don't pad).

    Returns:
        :class:`MemoryBank` ``(bank, density, indices, n_iter)``.
    """
    patches = jnp.asarray(patches)
    x = patches.reshape(-1, patches.shape[-1])
    n = x.shape[0]
    if size >= n:
        indices = jnp.arange(n, dtype=jnp.int32)
    else:
        chosen = kcenter_greedy(
            x, size, projection_dim=projection_dim, key=key, batch_size=None, n_valid=n_valid
        )
        indices = jnp.sort(chosen)
    enhance = _enhancer(shift, k, step_size, max_iter, tol, density, batch_size)
    return enhance(x[indices], indices)


@partial(jax.jit, static_argnames=_FIT_STATIC)
def bank_fit_subsets(
    patches: ArrayLike,
    valid: ArrayLike,
    *,
    size: int,
    shift: bool = False,
    k: int = 50,
    step_size: float | ArrayLike = 0.33,
    max_iter: int = 8,
    tol: float | ArrayLike = 0.01,
    density: str = "msde",
    projection_dim: int | None = None,
    key: ArrayLike | None = None,
    batch_size: int | None = None,
) -> MemoryBank:
    """:func:`bank_fit` on several subsets of the rows at once, as one compiled program.

    Bank s is the bank :func:`bank_fit` fits on the rows where ``valid[s]`` holds (in their
    order), up to float rounding: the coreset searches share every pass over the patches
    (:func:`~msde_jax.core.kcenter_greedy_subsets`) and the shifts of the S banks run
    vectorised. On an accelerator a memory bank's final fit and its cross-fit folds
    (S = folds + 1) share one program this way; on a CPU
    :class:`~msde_jax.detectors.PatchBankDetector` fits each on its own rows instead.

    Args:
        patches: (N, c) patches, or (n_images, P, c) (flattened to (n_images·P, c)).
        valid: (S, N) boolean: the rows of each subset, each with more than ``size`` rows
            (traced, not checked: the caller fits a subset with fewer rows by :func:`bank_fit`,
            whose bank is then every row).
        size, shift, k, step_size, max_iter, tol, density, projection_dim, key, batch_size:
            as in :func:`bank_fit`.

    Returns:
        :class:`MemoryBank` whose fields have a leading axis of S: ``bank`` (S, size, c),
        ``density`` (S, size), ``indices`` (S, size) (rows of the N patches, ascending within
        each subset) and ``n_iter`` (S,).
    """
    patches = jnp.asarray(patches)
    x = patches.reshape(-1, patches.shape[-1])
    chosen = kcenter_greedy_subsets(x, size, valid, projection_dim=projection_dim, key=key)
    indices = jnp.sort(chosen, axis=1)
    enhance = _enhancer(shift, k, step_size, max_iter, tol, density, batch_size)
    return jax.vmap(enhance)(x[indices], indices)


def _enhancer(
    shift: bool,
    k: int,
    step_size: float | ArrayLike,
    max_iter: int,
    tol: float | ArrayLike,
    density: str,
    batch_size: int | None,
) -> Callable[[jax.Array, jax.Array], MemoryBank]:
    """``(bank rows, their indices) -> MemoryBank``: the rows as they are, or MSDE-shifted."""

    def enhance(bank: jax.Array, indices: jax.Array) -> MemoryBank:
        if not shift:
            ones = jnp.ones(bank.shape[0], bank.dtype)
            return MemoryBank(bank, ones, indices, jnp.zeros((), jnp.int32))
        w = density_weights(bank, method=density, batch_size=batch_size)
        moved = mean_shift(
            bank, w, k=k, step_size=step_size, max_iter=max_iter, tol=tol, batch_size=batch_size
        )
        return MemoryBank(moved.points, w, indices, jnp.asarray(moved.n_iter, jnp.int32))

    return enhance


@partial(jax.jit, static_argnames=("k", "batch_size"))
def patch_scores(
    bank: MemoryBank,
    patches: ArrayLike,
    *,
    k: int = 1,
    batch_size: int | None = None,
    positions: BankPositions | None = None,
) -> jax.Array:
    """Each test patch's mean Euclidean distance (not squared) to its ``k`` nearest bank patches.

    With k = 1 this is PatchCore's patch score, minₘ ‖p − bₘ‖. Exact search by
    :func:`~msde_jax.core.knn` in blocks of ``batch_size`` patches, so memory is
    O(batch_size · m). Every patch is scored on its own: an image's scores do not depend on
    the other images in the call. With ``positions`` the distance also counts where the
    patches lie (:class:`BankPositions`): the test patches must be on a grid.

    Args:
        bank: a fitted :class:`MemoryBank` with m rows.
        patches: (n_images, P, c) test patches (any leading shape (..., c) works); with
            ``positions``, (n_images, ..., h, w, c) (one image needs its leading axis:
            four axes or more are read as grids), or (..., P, c) with P a square.
        k: neighbours averaged, 1 ≤ k ≤ m (static).
        batch_size: patches per block (static); any value gives the same result.
        positions: the bank rows' places and their weight, or ``None``.

    Returns:
        (n_images, P) patch scores (the leading shape of ``patches``).
    """
    patches = jnp.asarray(patches, bank.bank.dtype)
    rows = bank.bank
    if positions is not None:
        weight = positions.weight.astype(rows.dtype)
        rows = jnp.concatenate([rows, weight * positions.bank.astype(rows.dtype)], axis=-1)
        shape = patches.shape
        if patches.ndim < 4:
            side = math.isqrt(shape[-2])
            if side * side != shape[-2]:
                raise ValueError(
                    f"positions need patches on a grid: {shape[-2]} patches per image is not "
                    "g × g; pass (..., g, g, c) features."
                )
            shape = (*shape[:-2], side, side, shape[-1])
        patches = with_positions(patches.reshape(shape), weight).reshape(*patches.shape[:-1], -1)
    flat = patches.reshape(-1, patches.shape[-1])
    dist = knn(flat, rows, k=k, batch_size=batch_size).distances
    return jnp.mean(dist, axis=-1).reshape(patches.shape[:-1])


@partial(jax.jit, static_argnames=("reduce",))
def image_scores(
    scores: ArrayLike,
    *,
    reduce: str = "max",
    q: float | ArrayLike = 0.1,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """One anomaly score per image from its patch scores (higher = more anomalous).

    * ``"max"`` — the most anomalous patch (PatchCore's image score, without its reweighting);
    * ``"mean"`` — the mean over all patches;
    * ``"top"`` — the mean of the n = clip(⌈q·P⌉, 1, P) highest patch scores (at least one:
      q → 0 gives ``"max"``, q = 1 gives ``"mean"``).

    With a ``mask`` (e.g. :func:`~msde_jax.core.foreground.foreground_mask`) each reduction
    runs over the image's masked patches only, P being their count (so ``"top"`` averages the
    top q of the foreground); an image with no masked patch is reduced over all its patches.
    Fixed shapes (masked sums, no boolean indexing), so it stays jit-able, and each image
    depends only on its own scores and mask.

    ``q`` is traced: the patches are sorted and the top n averaged under a mask, rather than
    taking ``lax.top_k(n)`` with a static n, so sweeping q never recompiles (sorting P ≈ 196
    values per image costs nothing next to the kNN search).

    Args:
        scores: (n_images, P) patch scores, e.g. from :func:`patch_scores` (any leading shape
            (..., P) works).
        reduce: ``"max"``, ``"mean"`` or ``"top"`` (static).
        q: the fraction of patches averaged by ``"top"``, in (0, 1].
        mask: boolean, the shape of ``scores``: the patches to reduce over (``None``: all).

    Returns:
        (n_images,) image scores.
    """
    s = jnp.asarray(scores)
    if not jnp.issubdtype(s.dtype, jnp.floating):  # q would truncate to 0 ("top" as "max")
        s = s.astype(jnp.result_type(float))
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")
    if mask is not None:
        return _masked_image_scores(s, jnp.asarray(mask, bool), reduce=reduce, q=q)
    if reduce == "max":
        return jnp.max(s, axis=-1)
    if reduce == "mean":
        return jnp.mean(s, axis=-1)
    n_patches = s.shape[-1]
    q = jnp.asarray(q, s.dtype)
    n_top = jnp.clip(jnp.ceil(q * n_patches * (1 - _ROUNDING_SLACK)), 1, n_patches)
    descending = -jnp.sort(-s, axis=-1)
    keep = jnp.broadcast_to(jnp.arange(n_patches, dtype=s.dtype) < n_top, s.shape)
    return jnp.sum(jnp.where(keep, descending, 0.0), axis=-1) / n_top


def reduced_patches(mask: ArrayLike) -> jax.Array:
    """The patches :func:`image_scores` reduces over under ``mask`` (..., P): the masked ones,
    or all of an image's where none is."""
    mask = jnp.asarray(mask, bool)
    return mask | ~jnp.any(mask, axis=-1, keepdims=True)


def _masked_image_scores(s: jax.Array, mask: jax.Array, *, reduce: str, q: ArrayLike) -> jax.Array:
    """:func:`image_scores` over the masked patches of each image (all of them where none is)."""
    mask = reduced_patches(mask)
    count = jnp.sum(mask, axis=-1).astype(s.dtype)
    if reduce == "max":
        return jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1)
    if reduce == "mean":
        return jnp.sum(jnp.where(mask, s, 0.0), axis=-1) / count
    q = jnp.asarray(q, s.dtype)
    n_top = jnp.clip(jnp.ceil(q * count * (1 - _ROUNDING_SLACK)), 1, count)
    descending = -jnp.sort(-jnp.where(mask, s, -jnp.inf), axis=-1)
    keep = jnp.broadcast_to(jnp.arange(s.shape[-1], dtype=s.dtype), s.shape) < n_top[..., None]
    return jnp.sum(jnp.where(keep, descending, 0.0), axis=-1) / n_top
