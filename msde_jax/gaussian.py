"""A multivariate Gaussian model of the normal data: fit, Mahalanobis distance, log-density.

The covariance estimators mirror scikit-learn's ``EmpiricalCovariance``, ``LedoitWolf`` and
``OAS``; ``"ridge"`` is the MSDE papers' unbiased sample covariance plus ``ridge * I``.
"""

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

__all__ = [
    "COVARIANCE_ESTIMATORS",
    "GaussianState",
    "gaussian_fit",
    "gaussian_logpdf",
    "mahalanobis",
]

COVARIANCE_ESTIMATORS = ("empirical", "ridge", "ledoit_wolf", "oas")


class GaussianState(NamedTuple):
    """A fitted Gaussian, a pytree of arrays (d = number of features).

    Attributes:
        mean: (d,) location (sklearn ``location_``).
        covariance: (d, d) symmetric covariance (sklearn ``covariance_``).
        cholesky: (d, d) lower-triangular ``L`` with ``L @ L.T == covariance``; NaN when the
            covariance is not positive definite (e.g. ``"empirical"`` with n <= d).
    """

    mean: jax.Array
    covariance: jax.Array
    cholesky: jax.Array


def _ledoit_wolf_shrinkage(xc: jax.Array, emp_cov: jax.Array) -> jax.Array:
    """``sklearn.covariance.ledoit_wolf_shrinkage`` for centred ``xc``, without blocks.

    sklearn's blocked sums are ``beta_ = sum(X2.T @ X2) = sum_i ||x_i||^4`` (X2 = X**2) and
    ``delta_ = sum((X.T @ X)**2) / n**2 = ||emp_cov||_F^2``; the row form of ``beta_`` is
    O(n d) instead of O(n d^2).
    """
    n, p = xc.shape
    trace = jnp.trace(emp_cov)
    mu = trace / p
    beta_ = jnp.sum(jnp.sum(xc * xc, axis=1) ** 2)
    delta_ = jnp.sum(emp_cov * emp_cov)
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace + p * mu**2) / p
    # Never shrink past 1 (that would flip the sign of the covariances).
    beta = jnp.minimum(beta, delta)
    # sklearn: 0 if beta == 0 else beta / delta; beta >= 0, so delta == 0 implies beta == 0.
    return jnp.where(beta == 0, 0.0, beta / jnp.where(delta == 0, 1.0, delta))


def _oas_shrinkage(n: int, emp_cov: jax.Array) -> jax.Array:
    """The OAS shrinkage of ``sklearn.covariance.OAS`` (sklearn's form, without the 2/p term).

    ``min((alpha + mu^2) / ((n + 1) (alpha - mu^2 / p)), 1)`` with ``alpha = mean(S**2)`` and
    ``mu = trace(S) / p``; 1 when the denominator is 0.
    """
    p = emp_cov.shape[0]
    alpha = jnp.mean(emp_cov * emp_cov)
    mu_squared = (jnp.trace(emp_cov) / p) ** 2
    num = alpha + mu_squared
    den = (n + 1) * (alpha - mu_squared / p)
    return jnp.where(den == 0, 1.0, jnp.minimum(num / jnp.where(den == 0, 1.0, den), 1.0))


def _shrink(emp_cov: jax.Array, shrinkage: jax.Array) -> jax.Array:
    """``(1 - shrinkage) * S + shrinkage * trace(S) / p * I``."""
    p = emp_cov.shape[0]
    mu = jnp.trace(emp_cov) / p
    return (1.0 - shrinkage) * emp_cov + (shrinkage * mu) * jnp.eye(p, dtype=emp_cov.dtype)


@partial(jax.jit, static_argnames=("covariance",))
def gaussian_fit(
    x: ArrayLike, *, covariance: str = "ridge", ridge: ArrayLike = 1e-4
) -> GaussianState:
    """Fit a Gaussian (mean, covariance and its Cholesky factor) to the rows of ``x``.

    With ``xc = x - mean`` and ``S = xc.T @ xc / n`` (the biased maximum-likelihood estimate):

    - ``"empirical"``: ``S`` (``sklearn.covariance.EmpiricalCovariance``).
    - ``"ridge"`` (default): ``xc.T @ xc / (n - 1) + ridge * I``, the unbiased sample
      covariance plus a ridge, as in the MSDE papers (Kar et al., arXiv 2602.03293 and
      2604.19191, ``ridge = 1e-4``).
    - ``"ledoit_wolf"``: ``(1 - a) S + a trace(S)/d I`` with the Ledoit-Wolf shrinkage ``a``
      (``sklearn.covariance.LedoitWolf``, same formula without its Python-side blocks).
    - ``"oas"``: the same form with the Oracle Approximating Shrinkage ``a``
      (``sklearn.covariance.OAS``, sklearn's variant of Chen et al. 2010, Eq. 23).

    ``covariance`` is static (one compilation per estimator); ``ridge`` is traced, so sweeping
    it never recompiles. ``ridge`` is used by ``"ridge"`` only.

    Args:
        x: (n, d) data, n >= 2.
        covariance: one of ``"empirical"``, ``"ridge"``, ``"ledoit_wolf"``, ``"oas"``.
        ridge: scalar added to the diagonal of the unbiased covariance for ``"ridge"``.

    Returns:
        A :class:`GaussianState`. Its ``cholesky`` is NaN if the covariance is not numerically
        positive definite (``"empirical"`` with n <= d, or constant features); ``"ridge"`` with
        ``ridge > 0`` is always positive definite, the shrinkage estimators whenever their
        shrinkage is > 0 and the data are not constant.

    Raises:
        ValueError: for an unknown ``covariance`` (at trace time).
    """
    if covariance not in COVARIANCE_ESTIMATORS:
        raise ValueError(
            f"Unknown covariance={covariance!r}; valid options are "
            + ", ".join(repr(c) for c in COVARIANCE_ESTIMATORS)
            + "."
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    n, d = x.shape
    mean = jnp.mean(x, axis=0)
    xc = x - mean[None, :]
    scatter = jnp.matmul(xc.T, xc, precision=lax.Precision.HIGHEST)
    # A matmul need not be bitwise symmetric; Cholesky reads only one triangle.
    scatter = 0.5 * (scatter + scatter.T)
    emp_cov = scatter / n
    if covariance == "empirical":
        cov = emp_cov
    elif covariance == "ridge":
        ridge = jnp.asarray(ridge, dtype=x.dtype)
        cov = scatter / (n - 1) + ridge * jnp.eye(d, dtype=x.dtype)
    elif covariance == "ledoit_wolf":
        cov = _shrink(emp_cov, _ledoit_wolf_shrinkage(xc, emp_cov))
    else:
        cov = _shrink(emp_cov, _oas_shrinkage(n, emp_cov))
    return GaussianState(mean, cov, jnp.linalg.cholesky(cov))


def _whiten(state: GaussianState, x: ArrayLike) -> jax.Array:
    """``L^{-1} (x - mean)`` for every row, as a (d, n) array (one triangular solve)."""
    diff = jnp.asarray(x) - state.mean[None, :]
    return solve_triangular(state.cholesky, diff.T, lower=True)


@jax.jit
def mahalanobis(state: GaussianState, x: ArrayLike) -> jax.Array:
    """Mahalanobis distance of each row of ``x``: ``sqrt((x - mean)^T covariance^{-1} (x - mean))``.

    Computed as ``||L^{-1} (x - mean)||`` with a triangular solve against the Cholesky factor,
    never an explicit inverse. This is the distance, *not* its square:
    ``sklearn.covariance.EmpiricalCovariance.mahalanobis`` returns the square.

    Args:
        state: a fitted :class:`GaussianState` over d features.
        x: (n, d) points.

    Returns:
        (n,) non-negative distances (the MSDE anomaly score; higher = more anomalous).
    """
    z = _whiten(state, x)
    return jnp.sqrt(jnp.sum(z * z, axis=0))


@jax.jit
def gaussian_logpdf(state: GaussianState, x: ArrayLike) -> jax.Array:
    """Log-density of each row of ``x`` under ``N(mean, covariance)``.

    ``-(d log(2 pi) + log det covariance + m^2) / 2`` with ``m`` the Mahalanobis distance and
    ``log det covariance = 2 sum(log diag L)``. Mirrors ``scipy.stats.multivariate_normal.logpdf``.

    Args:
        state: a fitted :class:`GaussianState` over d features.
        x: (n, d) points.

    Returns:
        (n,) log-densities.
    """
    d = state.mean.shape[0]
    z = _whiten(state, x)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(state.cholesky)))
    return -0.5 * (d * math.log(2.0 * math.pi) + logdet + jnp.sum(z * z, axis=0))
