"""Sanity checks of the NumPy oracle in reference_msde.py (not of msde_jax)."""

import numpy as np
import pytest
import reference_msde as ref

UMAP_IMPORT = pytest.mark.filterwarnings(
    "ignore:Tensorflow not installed; ParametricUMAP will be unavailable:ImportWarning"
)


def _blobs(rng, n, d, n_centers=3, spread=0.3):
    centers = rng.normal(scale=3.0, size=(n_centers, d))
    labels = rng.integers(0, n_centers, size=n)
    return centers[labels] + spread * rng.normal(size=(n, d))


def test_knn_matches_sklearn(rng):
    from sklearn.neighbors import NearestNeighbors

    x = rng.normal(size=(80, 6))
    q = rng.normal(size=(30, 6))
    nn = NearestNeighbors(n_neighbors=7, algorithm="brute").fit(x)
    d_sk, i_sk = nn.kneighbors(q)
    d, i = ref.knn_ref(q, x, 7)
    np.testing.assert_array_equal(i, i_sk)
    np.testing.assert_allclose(d, d_sk, rtol=1e-10, atol=1e-10)

    # self_first on data without duplicates equals plain kNN of the set on itself
    d_self, i_self = ref.knn_ref(x, x, 7, self_first=True)
    d_sk2, i_sk2 = nn.kneighbors(x)
    np.testing.assert_array_equal(i_self, i_sk2)
    np.testing.assert_allclose(d_self, d_sk2, atol=1e-6)  # sklearn's expanded form: ~1e-8 at 0


def test_knn_self_first_with_duplicates():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    d, i = ref.knn_ref(x, x, 3, self_first=True)
    np.testing.assert_array_equal(i[:, 0], np.arange(4))
    np.testing.assert_array_equal(d[:, 0], 0.0)
    np.testing.assert_array_equal(i[1], [1, 0, 2])  # the duplicate comes second
    np.testing.assert_array_equal(i[0], [0, 1, 2])
    # without self_first the stable sort puts the lower-index duplicate first
    _, i_plain = ref.knn_ref(x, x, 3)
    np.testing.assert_array_equal(i_plain[1], [0, 1, 2])


@UMAP_IMPORT
@pytest.mark.parametrize("q", [5, 15])
def test_fuzzy_graph_matches_umap(rng, q):
    import umap.umap_ as umap_

    x = rng.normal(size=(60, 5))
    dists, idx = ref.knn_ref(x, x, q, self_first=True)
    graph, sig_u, rho_u = umap_.fuzzy_simplicial_set(
        x.astype(np.float32),
        n_neighbors=q,
        random_state=None,
        metric="euclidean",
        knn_indices=idx.astype(np.int32),
        knn_dists=dists.astype(np.float32),
    )
    sigmas, rhos = ref.smooth_knn_dist_ref(dists, q)
    np.testing.assert_allclose(rhos, rho_u, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sigmas, sig_u, atol=1e-4, rtol=1e-4)
    s = ref.fuzzy_union_ref(idx, dists, sigmas, rhos, 60)
    np.testing.assert_allclose(s, graph.toarray(), atol=1e-4)
    np.testing.assert_allclose(s, s.T)
    np.testing.assert_array_equal(np.diag(s), 0.0)
    np.testing.assert_allclose(ref.fuzzy_degree_ref(x, q), graph.toarray().sum(axis=1), atol=1e-3)


@UMAP_IMPORT
def test_smooth_knn_dist_matches_umap_with_zero_rows_and_connectivity(rng):
    import umap.umap_ as umap_

    dists = np.sort(rng.uniform(0.1, 2.0, size=(20, 8)), axis=1)
    dists[:, 0] = 0.0
    dists[3, :4] = 0.0  # leading duplicates
    dists[5, :] = 0.0  # all zero: rho = 0, global-mean floor
    for lc in (1.0, 1.5, 2.0):
        sig_u, rho_u = umap_.smooth_knn_dist(dists.astype(np.float32), 8.0, local_connectivity=lc)
        sigmas, rhos = ref.smooth_knn_dist_ref(dists, 8, local_connectivity=lc)
        np.testing.assert_allclose(rhos, rho_u, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(sigmas, sig_u, atol=1e-4, rtol=1e-4)


def test_membership_skips_absent_neighbours():
    idx = np.array([[0, 1, -1], [1, 0, 2], [2, 1, -1]])
    dists = np.array([[0.0, 1.0, 9.0], [0.0, 1.0, 2.0], [0.0, 2.0, 9.0]])
    sigmas = np.array([1.0, 1.0, 1.0])
    rhos = np.array([1.0, 1.0, 2.0])
    a = ref.membership_ref(idx, dists, sigmas, rhos, 3)
    expected = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, np.exp(-1.0)], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(a, expected)
    s = ref.fuzzy_union_ref(idx, dists, sigmas, rhos, 3)
    np.testing.assert_allclose(s, expected + expected.T - expected * expected.T)


def test_density_weights_basic_properties(rng):
    x = _blobs(rng, 250, 4)
    w = ref.density_weights_ref(x)
    assert w.shape == (250,)
    assert np.all(np.isfinite(w))
    assert np.all(w >= 0)
    assert np.all(w <= 99)  # at most r - 1 others within a block of 100
    assert np.any(w > 0)
    assert ref.block_size_ref(250) == 100
    assert ref.block_size_ref(45) == 45
    assert ref.block_size_ref(5000, 400) == 1000


def test_density_weights_are_blockwise(rng):
    x = _blobs(rng, 250, 4)
    w = ref.density_weights_ref(x)
    x2 = x.copy()
    x2[100:200] = rng.normal(size=(100, 4)) * 5.0
    w2 = ref.density_weights_ref(x2)
    np.testing.assert_array_equal(w2[:100], w[:100])
    np.testing.assert_array_equal(w2[200:], w[200:])
    assert not np.array_equal(w2[100:200], w[100:200])
    # the partial last block (50 rows) is processed on its own
    w_last, _ = ref.density_block_ref(x[200:])
    np.testing.assert_array_equal(w[200:], w_last)


def test_density_epsilon_is_bisection_minimum(rng):
    x = _blobs(rng, 100, 4)
    _, info = ref.density_block_ref(x)
    s = ref.fuzzy_graph_ref(x, 15)
    dmat = ref.row_distances_ref(s)
    assert info["lo"] <= info["eps"] <= info["hi"]
    if info["bisected"]:
        assert ref.condition_ref(dmat, info["eps"], info["t"], info["req"])
        below = info["eps"] - 2 * ref.BISECTION_TOL
        assert below < info["lo"] or not ref.condition_ref(dmat, below, info["t"], info["req"])


def test_density_small_blocks_run():
    x = np.arange(12.0).reshape(6, 2) ** 1.5
    for n in (1, 2, 3, 6):
        w = ref.density_weights_ref(x[:n])
        assert w.shape == (n,)
        assert np.all(np.isfinite(w))
        assert np.all(w >= 0)
    np.testing.assert_array_equal(ref.density_weights_ref(x[:1]), [0.0])


def test_index_sum_quirk_runs_and_differs(rng):
    x = _blobs(rng, 100, 4)
    w = ref.density_weights_ref(x)
    wq = ref.density_weights_ref(x, index_sum_quirk=True)
    assert wq.shape == w.shape
    assert np.all(np.isfinite(wq))
    assert not np.array_equal(w, wq)
    _, info = ref.density_block_ref(x)
    _, info_q = ref.density_block_ref(x, index_sum_quirk=True)
    assert info_q["eps"] <= info["eps"]


def test_mean_shift_stays_in_bounding_box(rng):
    x = _blobs(rng, 120, 3)
    w = rng.uniform(0.5, 2.0, size=120)
    y, disp, n_iter = ref.mean_shift_ref(x, w, k=20)
    assert 1 <= n_iter <= 8
    assert np.all(y >= x.min(axis=0) - 1e-12)
    assert np.all(y <= x.max(axis=0) + 1e-12)
    assert np.all(disp >= 0)
    assert y.shape == x.shape


def test_mean_shift_one_step_full_window_moves_to_global_mean(rng):
    x = rng.normal(size=(40, 3))
    y, disp, n_iter = ref.mean_shift_ref(x, np.ones(40), k=40, max_iter=1)
    mu = x.mean(axis=0)
    np.testing.assert_allclose(y, x + 0.33 * (mu - x), atol=1e-12)
    np.testing.assert_allclose(disp, np.linalg.norm(mu - x, axis=1), atol=1e-12)
    assert n_iter == 1
    # with k > n it is clipped to n
    y2, _, _ = ref.mean_shift_ref(x, np.ones(40), k=500, max_iter=1)
    np.testing.assert_allclose(y2, y)


def test_mean_shift_early_stop():
    x = np.zeros((10, 2))
    y, disp, n_iter = ref.mean_shift_ref(x, np.ones(10), k=5)
    assert n_iter == 1
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(disp, 0.0)


def test_inductive_mean_shift(rng):
    ref_x = _blobs(rng, 80, 3)
    ref_w = rng.uniform(0.5, 2.0, size=80)
    ref_copy = ref_x.copy()
    q = rng.normal(scale=3.0, size=(12, 3))
    y, disp, n_iter = ref.inductive_mean_shift_ref(q, ref_x, ref_w, k=10)
    np.testing.assert_array_equal(ref_x, ref_copy)
    assert y.shape == q.shape
    assert disp.shape == (12,)
    assert n_iter.shape == (12,)
    assert np.all((n_iter >= 1) & (n_iter <= 8))
    # one at a time == batch
    for p in range(12):
        y1, d1, t1 = ref.inductive_mean_shift_ref(q[p : p + 1], ref_x, ref_w, k=10)
        np.testing.assert_array_equal(y1[0], y[p])
        assert d1[0] == disp[p]
        assert t1[0] == n_iter[p]
    # full window, one step: a fraction step_size towards the weighted reference mean
    y_full, _, _ = ref.inductive_mean_shift_ref(q, ref_x, ref_w, k=80, max_iter=1)
    mu = (ref_w[:, None] * ref_x).sum(axis=0) / ref_w.sum()
    np.testing.assert_allclose(y_full, q + 0.33 * (mu - q), atol=1e-12)
