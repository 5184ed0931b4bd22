"""Mean shift against the NumPy transcription, plus its invariances."""

import jax
import numpy as np
import pytest
import reference_msde as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from msde_jax.core import mean_shift

N, D = 48, 3


def _blobs(seed, n=N, d=D):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, d))
    return centers[rng.integers(0, 3, size=n)] + 0.7 * rng.normal(size=(n, d))


def _weights(seed, n=N):
    return np.random.default_rng(seed + 100).uniform(0.5, 2.0, size=n)


@pytest.mark.parametrize(("k", "max_iter", "tol"), [(10, 8, 0.01), (50, 8, 0.01), (5, 30, 0.05)])
def test_blurring_matches_reference(x64, k, max_iter, tol):
    x, w = _blobs(k, 120, 5), _weights(k, 120)
    got = mean_shift(x, w, k=k, max_iter=max_iter, tol=tol)
    y, disp, n_iter = ref.mean_shift_ref(x, w, k=k, max_iter=max_iter, tol=tol)
    np.testing.assert_allclose(got.points, y, atol=1e-5)
    np.testing.assert_allclose(got.displacement, disp, atol=1e-5)
    assert int(got.n_iter) == n_iter
    if n_iter < max_iter:
        assert bool(got.converged)


def test_one_dimensional_features_shift_as_the_reference_does():
    """d = 1 (a single score, tabular data): the pruned kNN search of the dense path was
    compiled wrongly inside the loop (jax 0.10.2, CPU) and its windows went wrong from the
    second iteration (max difference 0.28 here): both paths must follow the reference."""
    x = np.random.default_rng(0).normal(size=(57, 1))
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=57)
    y, disp, n_iter = ref.mean_shift_ref(x, w, k=5, max_iter=10, tol=1e-3)
    for batch_size in (None, 4):  # one dense block; per-point searches
        got = mean_shift(x.astype(np.float32), w, k=5, max_iter=10, tol=1e-3, batch_size=batch_size)
        np.testing.assert_allclose(got.points, y, atol=1e-4)
        np.testing.assert_allclose(got.displacement, disp, atol=1e-4)
        assert int(got.n_iter) == n_iter


def test_blurring_stops_early_when_converged(x64):
    x = _blobs(1, 60)
    got = mean_shift(x, k=5, max_iter=100, tol=0.05)
    _, _, n_iter = ref.mean_shift_ref(x, np.ones(60), k=5, max_iter=100, tol=0.05)
    assert int(got.n_iter) == n_iter < 100
    assert bool(got.converged)


def test_inductive_matches_reference(x64):
    reference, w = _blobs(2, 150, 4), _weights(2, 150)
    queries = _blobs(3, 40, 4) + 1.0
    got = mean_shift(queries, reference=reference, reference_weights=w, k=12, max_iter=10, tol=0.02)
    y, disp, n_iter = ref.inductive_mean_shift_ref(
        queries, reference, w, k=12, max_iter=10, tol=0.02
    )
    np.testing.assert_allclose(got.points, y, atol=1e-5)
    np.testing.assert_allclose(got.displacement, disp, atol=1e-5)
    np.testing.assert_array_equal(got.n_iter, n_iter)
    np.testing.assert_array_equal(got.converged, n_iter < 10)


def test_zero_weights_follow_the_published_floor(x64):
    # A window whose weights are all 0 has mean 0/1e-6 = 0: the published rule pulls toward 0.
    x = _blobs(4, 20)
    got = mean_shift(x, np.zeros(20), k=5, max_iter=1)
    np.testing.assert_allclose(got.points, x * (1 - 0.33), atol=1e-12)


def test_zero_weights_pull_toward_the_origin_of_the_data_as_given(x64):
    """The shift runs on centred points; the floor's weight still sits at the data's origin,
    not at their mean (inductive and blurring, dense and per-point blocks)."""
    x = _blobs(4, 20) + 50.0
    for batch_size in (None, 3):
        got = mean_shift(x, np.zeros(20), k=5, max_iter=1, batch_size=batch_size)
        np.testing.assert_allclose(got.points, x * (1 - 0.33), atol=1e-9)
    got = mean_shift(x[:4], reference=x, reference_weights=np.zeros(20), k=5, max_iter=1)
    np.testing.assert_allclose(got.points, x[:4] * (1 - 0.33), atol=1e-9)
    # half the floor: windows of weight 5e-7 end halfway between their mean and the origin
    got = mean_shift(x, np.full(20, 1e-7), k=5, max_iter=1)
    want = mean_shift(x, np.ones(20), k=5, max_iter=1)
    np.testing.assert_allclose(got.points - x, (want.points - x + 0.33 * (0 - x)) / 2, atol=1e-9)


@pytest.mark.parametrize("how", ["dense", "blocks", "approximate", "inductive"])
def test_data_far_from_the_origin_shift_as_at_the_origin(how):
    """float32 ‖r‖² − 2qᵀr on rows offset by 1000 picked other neighbours (one iteration's
    displacement off by up to 2.1, inductive 4.3; helper review, twenty-fourth session): the
    shifts rank and average centred points, so an offset moves the result only by the
    input's own rounding (ulp(1000) = 6e-5) carried through the iterations."""
    x, w = _blobs(5, 300, 16).astype(np.float32), _weights(5, 300).astype(np.float32)
    far = x + np.float32(1000)
    if how == "inductive":
        near = mean_shift(x[:60], reference=x, reference_weights=w, k=20)
        got = mean_shift(far[:60], reference=far, reference_weights=w, k=20)
    else:
        search = {"approximate": dict(neighbors="approximate", leaf_size=64)}.get(how, {})
        batch = {"blocks": dict(batch_size=32)}.get(how, {})
        near = mean_shift(x, w, k=20, **search, **batch)
        got = mean_shift(far, w, k=20, **search, **batch)
    # 8 iterations of float32 rounding on displacements of 5–11: within 1e-3 relative
    np.testing.assert_allclose(got.displacement, near.displacement, rtol=1e-3)
    np.testing.assert_allclose(got.points - 1000, near.points, atol=5e-3)
    np.testing.assert_array_equal(got.n_iter, near.n_iter)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), inductive=st.booleans())
def test_output_inside_bounding_box_of_reference(seed, inductive):
    x, w = _blobs(seed % 5).astype(np.float32), _weights(seed).astype(np.float32)
    if inductive:
        res = mean_shift(x + 2.0, reference=x, reference_weights=w, k=7)
    else:
        res = mean_shift(x, w, k=7)
    pts = np.asarray(res.points)
    lo, hi = x.min(0), x.max(0)
    if inductive:  # the starting points lie outside; only the moves are convex combinations
        start = x + 2.0
        lo, hi = np.minimum(lo, start.min(0)), np.maximum(hi, start.max(0))
    assert np.all(pts >= lo - 1e-5)
    assert np.all(pts <= hi + 1e-5)


def test_inductive_converges_inside_hull():
    # With many iterations a query ends (numerically) inside the reference's bounding box.
    x = _blobs(6).astype(np.float32)
    res = mean_shift(x + 5.0, reference=x, k=7, step_size=0.9, max_iter=60, tol=1e-6)
    assert np.all(np.asarray(res.points) <= x.max(0) + 1e-3)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16))
def test_permutation_equivariance(seed):
    x, w = _blobs(seed % 5), _weights(seed % 5)
    perm = np.random.default_rng(seed).permutation(N)
    full = mean_shift(x, w, k=6)
    permuted = mean_shift(x[perm], w[perm], k=6)
    np.testing.assert_allclose(permuted.points, np.asarray(full.points)[perm], atol=1e-5)
    np.testing.assert_allclose(
        permuted.displacement, np.asarray(full.displacement)[perm], atol=1e-5
    )
    ind = mean_shift(x[perm] + 1.0, reference=x, reference_weights=w, k=6)
    ind_full = mean_shift(x + 1.0, reference=x, reference_weights=w, k=6)
    np.testing.assert_allclose(ind.points, np.asarray(ind_full.points)[perm], atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_chunked_equals_unchunked(batch_size):
    x, w = _blobs(9), _weights(9)
    full = mean_shift(x, w, k=6)
    chunked = mean_shift(x, w, k=6, batch_size=batch_size)
    np.testing.assert_allclose(chunked.points, full.points, atol=1e-5)
    assert int(chunked.n_iter) == int(full.n_iter)
    full = mean_shift(x + 1.0, reference=x, reference_weights=w, k=6)
    chunked = mean_shift(x + 1.0, reference=x, reference_weights=w, k=6, batch_size=batch_size)
    np.testing.assert_allclose(chunked.points, full.points, atol=1e-5)
    np.testing.assert_array_equal(chunked.n_iter, full.n_iter)


def test_inductive_one_at_a_time_equals_batch():
    reference, w = _blobs(10), _weights(10)
    queries = _blobs(11, 12) + 0.5
    batch = mean_shift(queries, reference=reference, reference_weights=w, k=6)
    for i in range(0, 12, 5):
        single = mean_shift(queries[i : i + 1], reference=reference, reference_weights=w, k=6)
        np.testing.assert_allclose(single.points[0], batch.points[i], atol=1e-5)
        np.testing.assert_allclose(single.displacement[0], batch.displacement[i], atol=1e-5)
        assert int(single.n_iter[0]) == int(batch.n_iter[i])


def test_jit_equals_eager():
    x, w = _blobs(12, 20), _weights(12, 20)
    jitted = mean_shift(x, w, k=5, max_iter=3, batch_size=8)
    with jax.disable_jit():
        eager = mean_shift(x, w, k=5, max_iter=3, batch_size=8)
    np.testing.assert_allclose(eager.points, jitted.points, atol=1e-5)
    np.testing.assert_allclose(eager.displacement, jitted.displacement, atol=1e-5)


def test_sweeping_traced_parameters_does_not_recompile():
    x, w = _blobs(13).astype(np.float32), _weights(13).astype(np.float32)
    mean_shift(x, w, k=5, step_size=0.1, tol=0.01)
    before = mean_shift._cache_size()
    for step, tol in [(0.2, 0.02), (0.5, 0.001), (0.9, 0.1)]:
        mean_shift(x, w, k=5, step_size=step, tol=tol)
    assert mean_shift._cache_size() == before


def test_bad_arguments():
    x = _blobs(14)
    with pytest.raises(ValueError, match="reference_weights"):
        mean_shift(x, np.ones(N), reference=x)
    with pytest.raises(ValueError, match="without a reference"):
        mean_shift(x, reference_weights=np.ones(N))
