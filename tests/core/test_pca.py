"""PCA against sklearn.decomposition.PCA(svd_solver="full"), plus round-trip and jit checks."""

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from sklearn.decomposition import PCA

from msde_jax.core.pca import PCAState, pca_fit, pca_inverse_transform, pca_transform


def _data(rng, n, d):
    """Rotated data with well-separated variances, so every component is well determined."""
    scales = np.geomspace(3.0, 0.3, d)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return rng.normal(size=(n, d)) * scales[None, :] @ rotation.T + rng.normal(size=d)[None, :]


def _check_against_sklearn(state, x, n_components, *, rtol, atol):
    ref = PCA(n_components=n_components, svd_solver="full").fit(x)
    assert state.components.shape == ref.components_.shape
    np.testing.assert_allclose(state.mean, ref.mean_, rtol=rtol, atol=atol)
    np.testing.assert_allclose(state.components, ref.components_, rtol=rtol, atol=atol)
    np.testing.assert_allclose(state.explained_variance, ref.explained_variance_, rtol=rtol)
    np.testing.assert_allclose(
        state.explained_variance_ratio, ref.explained_variance_ratio_, rtol=rtol
    )
    query = x[: min(10, len(x))] + 0.5
    z = pca_transform(state, query)
    np.testing.assert_allclose(z, ref.transform(query), rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        pca_inverse_transform(state, z),
        ref.inverse_transform(ref.transform(query)),
        rtol=rtol,
        atol=atol,
    )


@pytest.mark.parametrize(
    ("shape", "n_components"),
    # (8, 12): n < d; centring leaves rank 7, so the 8th axis would be arbitrary.
    [((60, 10), 1), ((60, 10), 4), ((60, 10), 10), ((8, 12), 3), ((8, 12), 7)],
)
def test_matches_sklearn_float64(x64, rng, shape, n_components):
    x = _data(rng, *shape) if shape[0] > shape[1] else rng.normal(size=shape)
    state = pca_fit(jnp.asarray(x), n_components)
    assert state.components.dtype == jnp.float64
    _check_against_sklearn(state, x, n_components, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("n_components", [2, 6])
def test_matches_sklearn_float32(rng, n_components):
    x = _data(rng, 200, 6)
    state = pca_fit(x.astype(np.float32), n_components)
    assert state.components.dtype == jnp.float32
    # float32 against sklearn in float64: errors ~ eps32 * condition / relative gap.
    _check_against_sklearn(state, x, n_components, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.75, 0.9, 0.97, 0.999])
def test_fraction_matches_sklearn(x64, rng, fraction):
    x = _data(rng, 80, 9)
    state = pca_fit(x, fraction)
    ref = PCA(n_components=fraction, svd_solver="full").fit(x)
    assert state.components.shape[0] == ref.n_components_
    np.testing.assert_allclose(state.components, ref.components_, rtol=1e-9, atol=1e-10)
    assert float(np.sum(state.explained_variance_ratio)) > fraction


def test_fraction_is_capped(x64, rng):
    # Every cumulative ratio is <= the largest double below 1, so searchsorted returns
    # len(ratio) and sklearn's "+ 1" must be capped at min(n, d).
    x = _data(rng, 30, 5)
    state = pca_fit(x, float(np.nextafter(1.0, 0.0)))
    assert state.components.shape == (5, 5)


def test_state_is_a_pytree(rng):
    state = pca_fit(_data(rng, 20, 4), 3)
    assert isinstance(state, PCAState)
    leaves = jax.tree_util.tree_leaves(state)
    assert [leaf.shape for leaf in leaves] == [(4,), (3, 4), (3,), (3,)]


def test_jit_equals_eager(x64, rng):
    x = _data(rng, 60, 10)
    eager = pca_fit(x, 3)
    jitted = jax.jit(pca_fit, static_argnames="n_components")(x, n_components=3)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    z = pca_transform(eager, x)
    # Op-by-op (the SVD itself is skipped here: un-jitted it only re-runs the same LAPACK call).
    with jax.disable_jit():
        z_eager = pca_transform(eager, x)
        back_eager = pca_inverse_transform(eager, z_eager)
    np.testing.assert_allclose(z, z_eager, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pca_inverse_transform(eager, z), back_eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 7, 1.0, 0.0, 1.5, -0.2, True, "3", None])
def test_bad_n_components_raises(rng, bad):
    x = _data(rng, 10, 6)
    with pytest.raises(ValueError, match="n_components"):
        pca_fit(x, bad)


def test_bad_n_components_raises_under_jit(rng):
    x = _data(rng, 10, 6)
    with pytest.raises(ValueError, match="n_components"):
        jax.jit(pca_fit, static_argnames="n_components")(x, n_components=11)


def test_fraction_is_not_traceable(rng):
    x = _data(rng, 10, 6)
    with pytest.raises(TypeError, match="cannot be traced"):
        jax.jit(pca_fit, static_argnames="n_components")(x, n_components=0.5)


@given(
    x=st.sampled_from([(12, 3), (20, 5)]).flatmap(
        lambda shape: hnp.arrays(
            np.float64,
            shape,
            elements=st.floats(-100, 100, allow_nan=False, allow_subnormal=False),
        )
    )
)
def test_full_rank_round_trip(x):
    # With all d components (n > d) Vt is a full orthogonal basis, whatever the data's rank.
    with jax.enable_x64(True):
        state = pca_fit(x, x.shape[1])
        back = pca_inverse_transform(state, pca_transform(state, x))
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-11 * (1 + np.abs(x).max()))


def test_padding_rows_marked_invalid_count_for_nothing():
    """``valid`` leaves padding rows out of the mean and the factorisation: the PCA of the
    real rows alone, n − 1 the real count's."""
    x = np.random.default_rng(31).normal(size=(40, 5)).astype(np.float32) * [5, 4, 3, 2, 1]
    padded = np.concatenate([x, np.full((8, 5), -3.0, np.float32)])
    got = pca_fit(padded, 3, valid=np.arange(48) < 40)
    want = PCA(n_components=3, svd_solver="full").fit(x)
    np.testing.assert_allclose(got.mean, want.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.components, want.components_, atol=1e-5)
    np.testing.assert_allclose(got.explained_variance, want.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(
        got.explained_variance_ratio, want.explained_variance_ratio_, rtol=1e-5
    )
