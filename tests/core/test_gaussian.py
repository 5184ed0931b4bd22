"""Gaussian fit / Mahalanobis / log-density against scikit-learn, NumPy and SciPy."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from scipy.stats import multivariate_normal
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf

from msde_jax.core.gaussian import (
    COVARIANCE_ESTIMATORS,
    GaussianState,
    gaussian_fit,
    gaussian_logpdf,
    mahalanobis,
)

SKLEARN = {"empirical": EmpiricalCovariance, "ledoit_wolf": LedoitWolf, "oas": OAS}


# Every (shape, dtype, estimator) compiles once, so most tests share one data and query shape.
N, D, Q = 80, 6, 15


def _data(rng, n, d):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ mixing.T + rng.normal(size=d)[None, :]


@pytest.mark.parametrize(
    ("name", "shape"),
    [(name, (N, D)) for name in sorted(SKLEARN)]
    # More features than samples, where the shrinkage matters (the MLE is singular there).
    + [("ledoit_wolf", (12, 20)), ("oas", (12, 20))]
    # sklearn special-cases one feature (shrinkage 0); the formulas must give the same result.
    + [(name, (50, 1)) for name in sorted(SKLEARN)],
)
def test_matches_sklearn_float64(x64, rng, name, shape):
    x = _data(rng, *shape)
    query = _data(rng, Q, shape[1])
    ref = SKLEARN[name]().fit(x)
    state = gaussian_fit(x, covariance=name)
    assert state.covariance.dtype == jnp.float64
    np.testing.assert_allclose(state.mean, ref.location_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state.covariance, ref.covariance_, rtol=1e-10, atol=1e-12)
    # sklearn's .mahalanobis is the *squared* distance.
    np.testing.assert_allclose(mahalanobis(state, query) ** 2, ref.mahalanobis(query), rtol=1e-8)


@pytest.mark.parametrize("ridge", [0.0, 1e-4, 0.5])
def test_ridge_matches_numpy_float64(x64, rng, ridge):
    x = _data(rng, N, D)
    query = _data(rng, Q, D)
    cov = np.cov(x, rowvar=False, ddof=1) + ridge * np.eye(D)
    state = gaussian_fit(x, covariance="ridge", ridge=ridge)
    np.testing.assert_allclose(state.covariance, cov, rtol=1e-12, atol=1e-14)
    diff = query - x.mean(0)
    expected = np.sqrt(np.einsum("ij,ij->i", diff, np.linalg.solve(cov, diff.T).T))
    np.testing.assert_allclose(mahalanobis(state, query), expected, rtol=1e-10)


def test_default_is_paper_ridge(x64, rng):
    x = _data(rng, N, D)
    state = gaussian_fit(x)
    np.testing.assert_allclose(
        state.covariance, np.cov(x, rowvar=False) + 1e-4 * np.eye(D), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("name", COVARIANCE_ESTIMATORS)
def test_float32_close_to_float64_reference(rng, name):
    x = _data(rng, N, D)
    query = _data(rng, Q, D)
    state = gaussian_fit(x.astype(np.float32), covariance=name)
    assert state.cholesky.dtype == jnp.float32
    if name == "ridge":
        cov = np.cov(x, rowvar=False) + 1e-4 * np.eye(D)
    else:
        cov = SKLEARN[name]().fit(x).covariance_
    np.testing.assert_allclose(state.covariance, cov, rtol=1e-4, atol=1e-5)
    diff = query - x.mean(0)
    expected = np.sqrt(np.einsum("ij,ij->i", diff, np.linalg.solve(cov, diff.T).T))
    np.testing.assert_allclose(mahalanobis(state, query.astype(np.float32)), expected, rtol=1e-4)


@pytest.mark.parametrize("name", COVARIANCE_ESTIMATORS)
def test_cholesky_and_logpdf_match_scipy(x64, rng, name):
    x = _data(rng, N, D)
    query = _data(rng, Q, D)
    state = gaussian_fit(x, covariance=name)
    low = np.asarray(state.cholesky)
    np.testing.assert_array_equal(low, np.tril(low))
    np.testing.assert_allclose(low @ low.T, state.covariance, rtol=1e-12, atol=1e-14)
    expected = multivariate_normal(np.asarray(state.mean), np.asarray(state.covariance)).logpdf(
        query
    )
    np.testing.assert_allclose(gaussian_logpdf(state, query), expected, rtol=1e-11)


def test_jit_equals_eager(x64, rng):
    x = _data(rng, N, D)
    # One estimator only: op by op every primitive compiles separately (~2 s per estimator).
    jitted = gaussian_fit(x, covariance="ridge")
    dist, logpdf = mahalanobis(jitted, x), gaussian_logpdf(jitted, x)
    with jax.disable_jit():
        eager = gaussian_fit(x, covariance="ridge")
        eager_dist, eager_logpdf = mahalanobis(eager, x), gaussian_logpdf(eager, x)
    assert isinstance(eager, GaussianState)
    for a, b in zip(jitted, eager, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dist, eager_dist, rtol=1e-12)
    np.testing.assert_allclose(logpdf, eager_logpdf, rtol=1e-12)


def test_unknown_covariance_raises(rng):
    with pytest.raises(ValueError, match="'empirical', 'ridge', 'ledoit_wolf', 'oas'"):
        gaussian_fit(_data(rng, 10, 2), covariance="shrunk")


def test_ridge_does_not_retrace(rng):
    x = _data(rng, 37, 3).astype(np.float32)  # a shape no other test uses
    traces = 0

    def fit(data, ridge):
        nonlocal traces
        traces += 1
        return gaussian_fit(data, covariance="ridge", ridge=ridge)

    fit = jax.jit(fit)
    diagonals = [np.diag(fit(x, ridge).covariance) for ridge in (1e-4, 1e-2, 1.0)]
    assert traces == 1
    np.testing.assert_allclose(diagonals[2] - diagonals[0], 1.0 - 1e-4, rtol=1e-5)
    # Direct calls hit gaussian_fit's own compilation cache once for all ridge values.
    if hasattr(gaussian_fit, "_cache_size"):
        before = gaussian_fit._cache_size()
        for ridge in (1e-4, 1e-3, 0.1, 2.0):
            gaussian_fit(x, covariance="ridge", ridge=ridge)
        assert gaussian_fit._cache_size() == before + 1


# Few shapes: every (shape, estimator) pair compiles once.
_SHAPES = st.sampled_from([(30, 2), (N, D)])


@given(
    shape=st.just((N, D)),
    seed=st.integers(0, 2**32 - 1),
    offset=st.floats(-50, 50),
    name=st.sampled_from(COVARIANCE_ESTIMATORS),
)
def test_translation_invariance(shape, seed, offset, name):
    rng = np.random.default_rng(seed)
    x, query = _data(rng, *shape), _data(rng, Q, shape[1])
    shift = offset * rng.normal(size=shape[1])[None, :]
    with jax.enable_x64(True):
        base = mahalanobis(gaussian_fit(x, covariance=name), query)
        moved = mahalanobis(gaussian_fit(x + shift, covariance=name), query + shift)
    np.testing.assert_allclose(moved, base, rtol=1e-8, atol=1e-10)


@given(
    shape=_SHAPES,
    seed=st.integers(0, 2**32 - 1),
    log_singular_values=st.lists(st.floats(-1.5, 1.5), min_size=D, max_size=D),
)
def test_linear_invariance(shape, seed, log_singular_values):
    # Mahalanobis is affine invariant for the MLE covariance (shrinkage/ridge targets are not).
    rng = np.random.default_rng(seed)
    d = shape[1]
    x, query = _data(rng, *shape), _data(rng, Q, d)
    left, _ = np.linalg.qr(rng.normal(size=(d, d)))
    right, _ = np.linalg.qr(rng.normal(size=(d, d)))
    # Condition number <= e^3 by construction.
    linear = left @ np.diag(np.exp(log_singular_values[:d])) @ right
    with jax.enable_x64(True):
        base = mahalanobis(gaussian_fit(x, covariance="empirical"), query)
        mapped = mahalanobis(gaussian_fit(x @ linear.T, covariance="empirical"), query @ linear.T)
    np.testing.assert_allclose(mapped, base, rtol=1e-8)


@pytest.mark.parametrize("name", ["empirical", "ridge", "ledoit_wolf", "oas"])
def test_float32_mahalanobis_at_condition_number_1e8(rng, name):
    # Standard deviations from 1 to 1e-4 along random directions: covariance condition
    # number ~1e8. The factor comes from a QR of the data, so float32 keeps ~4 digits
    # (forming X.T X first loses them all: 185 % error on this case).
    d = 8
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    sd = np.logspace(0, -4, d)
    x = (rng.normal(size=(500, d)) * sd) @ q.T
    t = (rng.normal(size=(50, d)) * sd) @ q.T
    assert np.linalg.cond(np.cov(x.T)) > 5e7
    ridge = 1e-12  # the default 1e-4 would dominate the small directions
    got = np.asarray(
        mahalanobis(
            gaussian_fit(x.astype(np.float32), covariance=name, ridge=ridge), t.astype(np.float32)
        )
    )
    with jax.enable_x64(True):
        ref = np.asarray(mahalanobis(gaussian_fit(x, covariance=name, ridge=ridge), t))
    np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_ridge_is_the_covariance_plus_ridge_however_ill_conditioned(rng):
    # Fewer rows than features: the ridge alone holds most directions up, against one of
    # variance 9e6. The factor is accurate (its rows hold sqrt(ridge)·I), so no jitter may be
    # added: it was (1e-2 of the mean variance), 97 % off the ridge Gaussian's distances.
    sd = np.ones(64)
    sd[0] = 3e3
    x, t = rng.normal(size=(2, 20, 64)) * sd
    got = mahalanobis(gaussian_fit(x.astype(np.float32)), t.astype(np.float32))
    cov, diff = np.cov(x.T) + 1e-4 * np.eye(64), t - x.mean(0)
    ref = np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("name", ["empirical", "ridge", "ledoit_wolf", "oas"])
@pytest.mark.parametrize("case", ["constant", "duplicated", "n_below_d"])
def test_singular_covariance_falls_back_to_jitter_never_nan(rng, name, case):
    x = {
        "constant": np.ones((30, 5)),
        "duplicated": np.repeat(rng.normal(size=(3, 5)), 10, axis=0),
        "n_below_d": rng.normal(size=(4, 12)),
    }[case].astype(np.float32)
    state = gaussian_fit(x, covariance=name)
    assert np.isfinite(np.asarray(state.cholesky)).all()
    assert np.isfinite(np.asarray(mahalanobis(state, x[:3] + 0.5))).all()
    assert np.isfinite(np.asarray(gaussian_logpdf(state, x[:3]))).all()


@pytest.mark.parametrize("covariance", COVARIANCE_ESTIMATORS)
def test_padding_rows_marked_invalid_count_for_nothing(covariance):
    """``valid`` leaves padding rows out: the fit equals sklearn's on the real rows alone."""
    x = np.random.default_rng(30).normal(size=(40, 4)).astype(np.float32) * [1, 2, 3, 4]
    padded = np.concatenate([x, np.full((8, 4), 7.0, np.float32)])  # any finite padding
    valid = np.arange(48) < 40
    got = gaussian_fit(padded, covariance=covariance, valid=valid)
    want = gaussian_fit(x, covariance=covariance)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
