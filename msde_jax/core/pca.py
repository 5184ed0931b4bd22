"""Principal component analysis by a thin SVD of the centred data.

Mirrors ``sklearn.decomposition.PCA(svd_solver="full")`` (scikit-learn >= 1.5): same mean,
components (including their signs), explained variance and explained-variance ratio.
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = ["PCAState", "pca_fit", "pca_inverse_transform", "pca_transform"]


class PCAState(NamedTuple):
    """A fitted PCA, a pytree of arrays (c = number of kept components, d = features).

    Attributes:
        mean: (d,) per-feature mean of the training data (sklearn ``mean_``).
        components: (c, d) principal axes as orthonormal rows, sorted by decreasing variance
            (sklearn ``components_``).
        explained_variance: (c,) variance along each axis, ``S**2 / (n - 1)``
            (sklearn ``explained_variance_``).
        explained_variance_ratio: (c,) ``explained_variance`` divided by the total variance of
            *all* ``min(n, d)`` components, so it sums to < 1 when components were dropped
            (sklearn ``explained_variance_ratio_``).
    """

    mean: jax.Array
    components: jax.Array
    explained_variance: jax.Array
    explained_variance_ratio: jax.Array


def masked_mean(x: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The mean of the rows of ``x`` that ``valid`` marks (all with ``None``) and their count.

    With ``valid``, the padding rows are left out of the sum, so sizes padded to one bucket
    share a program."""
    if valid is None:
        return jnp.mean(x, axis=0), jnp.asarray(x.shape[0], x.dtype)
    count = jnp.sum(valid).astype(x.dtype)
    return jnp.sum(jnp.where(valid[:, None], x, 0), axis=0) / count, count


def masked_centre(x: jax.Array, mean: jax.Array, valid: jax.Array | None) -> jax.Array:
    """``x − mean``, with the padding rows (``valid`` False) set to zero rows: every sum of
    squares and products over it is then that of the real rows alone."""
    centred = x - mean[None, :]
    return centred if valid is None else jnp.where(valid[:, None], centred, 0)


@jax.jit
def _full_pca(x: jax.Array, valid: jax.Array | None = None) -> PCAState:
    """All ``min(n, d)`` components; the only place the SVD is computed."""
    n, d = x.shape
    mean, count = masked_mean(x, valid)
    centred = masked_centre(x, mean, valid)
    if n > d:
        # x − mean = Q R: the SVD of the (d, d) factor R has the same S and Vt, without the
        # (n, d) U a thin SVD of the data would build (n = 100,000 rows: 200 MB per 512 dims).
        centred = jnp.linalg.qr(centred, mode="r")
    _, s, vt = jnp.linalg.svd(centred, full_matrices=False)
    # sklearn >= 1.5 ``svd_flip(U, Vt, u_based_decision=False)``: the entry of largest magnitude
    # in each row of Vt is made positive. Deciding on Vt (not U) keeps the signs independent of
    # which rows were used to fit. A unit row never has sign 0, the guard only protects NaNs.
    pivot = jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1)
    signs = jnp.where(pivot < 0, -1, 1).astype(vt.dtype)
    variance = s**2 / (count - 1)
    total = jnp.sum(variance)  # 0 for constant rows: no direction explains anything
    return PCAState(mean, vt * signs, variance, variance / jnp.where(total > 0, total, 1))


def _truncate(state: PCAState, n_components: int) -> PCAState:
    return PCAState(
        state.mean,
        state.components[:n_components],
        state.explained_variance[:n_components],
        state.explained_variance_ratio[:n_components],
    )


def pca_fit(x: ArrayLike, n_components: int | float, valid: ArrayLike | None = None) -> PCAState:
    """Fit a PCA to ``x`` by a thin SVD of the centred data.

    With ``x - mean = U diag(S) Vt`` (the SVD of the centred data, or for n > d of its
    (d, d) factor R from a QR decomposition, which has the same S and Vt), the
    components are the first ``n_components`` rows of ``Vt`` with the sign convention of
    scikit-learn's ``svd_flip(U, Vt, u_based_decision=False)`` (largest-magnitude entry of each
    row positive), ``explained_variance = S**2 / (n - 1)`` and
    ``explained_variance_ratio = explained_variance / sum(S**2 / (n - 1))`` over all
    ``min(n, d)`` components. Mirrors ``sklearn.decomposition.PCA(svd_solver="full")``.

    Args:
        x: (n, d) data, n >= 2.
        n_components: either an int in ``1..min(n, d)``, the number of components to keep
            (static: under ``jax.jit`` pass it via ``static_argnames="n_components"``), or a float
            in (0, 1), the fraction of variance to explain: the smallest count whose cumulative
            ratio exceeds it, ``searchsorted(cumsum(ratio), frac, side="right") + 1`` capped at
            ``min(n, d)``, exactly as scikit-learn resolves it.
        valid: (n,) bool, which rows are real (``None``: all): the others are padding (so that
            sizes in one bucket share a program) and are left out of the mean and of the
            factorisation (zero rows once centred); n is then the real count. Ranges are
            checked against the padded shape.

    Returns:
        A :class:`PCAState` with c = the resolved number of components.

    Raises:
        ValueError: if ``x`` is not 2-D, or ``n_components`` is not an int in range or a
            float in (0, 1) (checked on shapes, so also under jit).
        TypeError: if a float ``n_components`` is used under a JAX transformation.

    Note:
        The float form is *not* traceable: it runs the jitted full SVD and then reads the
        variance ratios back to the host to pick the count (the output shape depends on the
        data). Resolve the count once and pass the int to traced code.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (n, d) array, got shape {x.shape}.")
    n, d = x.shape
    max_components = min(n, d)
    if isinstance(n_components, numbers.Integral) and not isinstance(n_components, bool):
        if not 1 <= n_components <= max_components:
            raise ValueError(
                f"n_components={n_components} must be in 1..min(n, d)={max_components} "
                f"for data of shape {x.shape}, or a float in (0, 1)."
            )
        return _truncate(_full_pca(x, valid), int(n_components))
    if isinstance(n_components, numbers.Real) and not isinstance(n_components, bool):
        if not 0.0 < n_components < 1.0:
            raise ValueError(
                f"A float n_components={n_components} is a fraction of explained variance and "
                "must lie strictly between 0 and 1; pass an int to fix the count."
            )
        full = _full_pca(x, valid)
        if isinstance(full.explained_variance_ratio, jax.core.Tracer):
            raise TypeError(
                "A float n_components picks the number of components from the data and cannot "
                "be traced; resolve it eagerly with pca_fit and pass the int count instead."
            )
        # Same dtype and summation order as sklearn (cumulative sum of the ratios).
        cumulative = np.cumsum(np.asarray(full.explained_variance_ratio))
        count = int(np.searchsorted(cumulative, n_components, side="right")) + 1
        return _truncate(full, min(count, max_components))
    raise ValueError(
        f"n_components must be an int in 1..{max_components} or a float in (0, 1), "
        f"got {n_components!r}."
    )


@jax.jit
def pca_transform(state: PCAState, x: ArrayLike) -> jax.Array:
    """Project data onto the principal axes: ``(x - mean) @ components.T``.

    Mirrors ``sklearn.decomposition.PCA.transform`` (without whitening).

    Args:
        state: a fitted :class:`PCAState` with c components over d features.
        x: (n, d) data.

    Returns:
        (n, c) coordinates in the principal subspace.
    """
    return jnp.matmul(
        jnp.asarray(x) - state.mean[None, :], state.components.T, precision=lax.Precision.HIGHEST
    )


@jax.jit
def pca_inverse_transform(state: PCAState, z: ArrayLike) -> jax.Array:
    """Map principal-subspace coordinates back to feature space: ``z @ components + mean``.

    Mirrors ``sklearn.decomposition.PCA.inverse_transform`` (without whitening). With all
    ``d`` components kept (and n > d) it inverts :func:`pca_transform`; otherwise it returns
    the orthogonal projection of the data onto the affine principal subspace.

    Args:
        state: a fitted :class:`PCAState` with c components over d features.
        z: (n, c) coordinates.

    Returns:
        (n, d) reconstructed data.
    """
    return (
        jnp.matmul(jnp.asarray(z), state.components, precision=lax.Precision.HIGHEST)
        + state.mean[None, :]
    )
