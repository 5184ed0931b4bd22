"""knn against scikit-learn, plus chunking, permutation and jit invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from msde_jax.core import knn
from msde_jax.core.neighbors import least_index, prune_beyond

N, D = 37, 4


def _data(seed, n=N, d=D):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_sklearn(x64, dtype):
    x = _data(1, 120, 6).astype(dtype)
    queries = _data(2, 30, 6).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    nn = NearestNeighbors(n_neighbors=7).fit(x)
    d_ref, i_ref = nn.kneighbors(queries)
    got = knn(queries, x, k=7)
    np.testing.assert_array_equal(got.indices, i_ref)
    np.testing.assert_allclose(got.distances, d_ref, rtol=tol, atol=tol)
    d_self, i_self = nn.kneighbors(x)
    got = knn(x, k=7)
    np.testing.assert_array_equal(got.indices, i_self)
    np.testing.assert_allclose(got.distances, d_self, rtol=tol, atol=tol)
    assert got.indices.dtype == np.int32
    assert got.distances.dtype == np.dtype(dtype)


@pytest.mark.parametrize("padded", [False, True])
def test_data_far_from_the_origin_keeps_its_neighbours(padded):
    """float32 ‖r‖² − 2qᵀr at an offset of 1000 reordered neighbours (recall 0.71); the rows
    are centred on the reference mean first (real rows only), which leaves distances as they
    are."""
    x = (_data(4, 300, 16) + 1000).astype(np.float32)
    queries = (_data(5, 40, 16) + 1000).astype(np.float32)
    nn = NearestNeighbors(n_neighbors=5).fit(x.astype(np.float64))
    d_ref, i_ref = nn.kneighbors(queries.astype(np.float64))
    valid = None
    if padded:  # padding far away must not move the centre
        x = np.concatenate([x, np.full((20, 16), -5e4, np.float32)])
        valid = np.arange(len(x)) < 300
    got = knn(queries, x, k=5, reference_valid=valid)
    np.testing.assert_array_equal(got.indices, i_ref)
    np.testing.assert_allclose(got.distances, d_ref, rtol=1e-4)


def test_self_first_with_duplicates():
    x = _data(3, 10, 3)
    x = np.concatenate([x, x])  # every point has an exact twin
    got = knn(x, k=3)
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(20))
    np.testing.assert_array_equal(got.distances[:, :2], 0.0)
    twins = np.concatenate([np.arange(10, 20), np.arange(10)])
    np.testing.assert_array_equal(got.indices[:, 1], twins)


def test_distances_are_accurate_far_from_origin():
    # ‖x‖² + ‖y‖² − 2xᵀy alone loses all digits here in float32; the recomputed distances do not.
    base = np.full((1, 8), 1e3, np.float32)
    x = base + np.random.default_rng(4).normal(scale=1e-2, size=(50, 8)).astype(np.float32)
    got = knn(x, k=4)
    exact = np.linalg.norm(x[:, None] - x[got.indices], axis=-1)
    np.testing.assert_allclose(got.distances, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [0, N + 1])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k must be between 1"):
        knn(_data(0), k=k)


# Every batch size compiles new programs: ten sizes (derandomized, edges included) suffice.
@settings(max_examples=10)
@given(batch_size=st.integers(1, N + 3), seed=st.integers(0, 3))
def test_chunked_equals_unchunked(batch_size, seed):
    x = _data(seed)
    full = knn(x, k=5)
    for reference in (None, x[::2]):
        full = knn(x, reference, k=5)
        chunked = knn(x, reference, k=5, batch_size=batch_size)
        np.testing.assert_array_equal(chunked.indices, full.indices)
        np.testing.assert_allclose(chunked.distances, full.distances, rtol=1e-6)


@given(seed=st.integers(0, 2**16))
def test_permuting_queries_permutes_output(seed):
    x = _data(seed % 7)
    perm = np.random.default_rng(seed).permutation(N)
    full = knn(x, k=5)
    permuted = knn(x[perm], k=5)
    # Reference rows move too, so indices are relabelled through the permutation.
    np.testing.assert_array_equal(perm[permuted.indices], full.indices[perm])
    np.testing.assert_allclose(permuted.distances, full.distances[perm], rtol=1e-6)


def test_jit_equals_eager():
    x = _data(5)
    jitted = knn(x, k=6, batch_size=8)
    with jax.disable_jit():
        eager = knn(x, k=6, batch_size=8)
    np.testing.assert_array_equal(eager.indices, jitted.indices)
    np.testing.assert_allclose(eager.distances, jitted.distances, rtol=1e-6)


def test_reference_rows_marked_invalid_are_never_neighbours():
    rng = np.random.default_rng(32)
    reference = rng.normal(size=(30, 3)).astype(np.float32)
    queries = rng.normal(size=(7, 3)).astype(np.float32)
    padded = np.concatenate([reference, queries])  # padding right on top of the queries
    got = knn(queries, padded, k=4, reference_valid=np.arange(37) < 30)
    want = knn(queries, reference, k=4)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.distances, want.distances, rtol=1e-6)


@jax.jit
def _top_k_plain_and_pruned(score, within):
    pruned = prune_beyond(score, within)
    return jax.lax.top_k(-score, within.shape[-1]), jax.lax.top_k(-pruned, within.shape[-1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), levels=st.sampled_from([3, 50, 0]), nan=st.booleans())
def test_pruning_keeps_the_top_k(seed, levels, nan):
    # Any k distinct columns bound the k smallest scores: pruning beyond their largest changes
    # neither the indices nor their order, with ties (few levels), +inf (padding) and NaN.
    rng = np.random.default_rng(seed)
    score = rng.normal(size=(6, 40)).astype(np.float32)
    if levels:
        score = np.round(score * levels / 4).astype(np.float32)
    score[:, rng.random(40) < 0.2] = np.inf
    if nan:
        score[rng.random(score.shape) < 0.05] = np.nan
    within = np.stack([rng.choice(40, 5, replace=False) for _ in range(6)]).astype(np.int32)
    score[0] = rng.permutation(40)  # a row bounded by its own 5 nearest: 35 entries go
    within[0] = np.argsort(score[0])[:5]
    (v_plain, i_plain), (v_pruned, i_pruned) = _top_k_plain_and_pruned(score, within)
    np.testing.assert_array_equal(i_pruned, i_plain)
    np.testing.assert_array_equal(v_pruned, v_plain)
    pruned = np.asarray(prune_beyond(score, within))
    bound = np.take_along_axis(score, within, 1).max(1, keepdims=True)
    with np.errstate(invalid="ignore"):
        gone = score > bound  # only entries surely above the bound (a NaN bound prunes nothing)
    np.testing.assert_array_equal(pruned[gone], np.inf)
    np.testing.assert_array_equal(pruned[~gone], score[~gone])
    assert gone[0].sum() == 35


_SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 1e-45, -1e-45, 2.0]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.sampled_from(_SPECIAL), min_size=1, max_size=9),
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
)
def test_least_index_is_top_ks_choice(values, dtype):
    """k = 1 selects by one reduction: the index lax.top_k(-score, 1) gives, ties, signed
    zeros, infinities and NaNs of either sign included (top_k orders floats totally)."""
    score = jnp.asarray(np.array(values, np.float32), dtype)
    want = int(jax.lax.top_k(-score, 1)[1][0])
    assert int(least_index(score)) == want
    assert int(jax.jit(least_index)(score)) == want


def test_least_index_refuses_integers():
    with pytest.raises(TypeError, match="ranks floats"):
        least_index(jnp.arange(3))


def test_one_neighbour_is_the_first_of_k(x64):
    """knn(k=1) (one reduction per query) gives the first neighbour of knn(k=3) (top_k), with
    exact duplicates in the reference (ties go to the lower row) and padding masked."""
    x = _data(5, 60, 3)
    x[40:50] = x[:10]  # duplicates: the lower row is the neighbour
    queries = np.concatenate([_data(6, 20, 3), x[:10]])
    valid = np.arange(60) < 55
    one = knn(queries, x, k=1, reference_valid=valid)
    three = knn(queries, x, k=3, reference_valid=valid)
    np.testing.assert_array_equal(one.indices[:, 0], three.indices[:, 0])
    np.testing.assert_array_equal(one.distances[:, 0], three.distances[:, 0])
    assert (np.asarray(one.indices) < 55).all()
