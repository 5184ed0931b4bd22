"""The fuzzy simplicial set against umap-learn, given the same exact kNN graph."""

import numpy as np
import pytest
import umap.umap_ as umap_  # noqa: E402  (test dependency)
from sklearn.neighbors import NearestNeighbors

from msde_jax.core import Neighbors, fuzzy_degree, fuzzy_simplicial_set, fuzzy_union


def _umap_reference(x, k, local_connectivity=1.0):
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    graph, sigmas, rhos = umap_.fuzzy_simplicial_set(
        x.astype(np.float32),
        k,
        None,
        "euclidean",
        knn_indices=idx,
        knn_dists=dist.astype(np.float32),
        local_connectivity=local_connectivity,
    )
    return Neighbors(dist.astype(np.float32), idx.astype(np.int32)), graph.toarray(), sigmas, rhos


@pytest.mark.parametrize(
    ("n", "k", "local_connectivity"), [(80, 15, 1.0), (120, 10, 1.0), (60, 8, 1.6), (40, 6, 0.0)]
)
def test_matches_umap(n, k, local_connectivity):
    x = np.random.default_rng(n).normal(size=(n, 5))
    neighbors, graph, sigmas, rhos = _umap_reference(x, k, local_connectivity)
    ours = fuzzy_simplicial_set(neighbors, local_connectivity=local_connectivity)
    np.testing.assert_allclose(ours.rhos, rhos, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.sigmas, sigmas, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fuzzy_union(ours), graph, atol=1e-4)
    np.testing.assert_allclose(fuzzy_degree(ours), graph.sum(axis=1), rtol=1e-4, atol=1e-4)


def test_duplicates_and_zero_rho():
    # Points with exact duplicates have several zero distances; isolated grid points test ties.
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(size=(20, 3)), 3, axis=0)
    neighbors, graph, sigmas, rhos = _umap_reference(x, 9)
    ours = fuzzy_simplicial_set(neighbors)
    np.testing.assert_allclose(ours.rhos, rhos, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.sigmas, sigmas, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(ours.memberships))


def test_union_is_symmetric_fuzzy_set():
    x = np.random.default_rng(2).normal(size=(50, 4))
    neighbors, *_ = _umap_reference(x, 7)
    s = np.asarray(fuzzy_union(fuzzy_simplicial_set(neighbors)))
    np.testing.assert_allclose(s, s.T, atol=1e-7)
    assert s.min() >= 0
    assert s.max() <= 1 + 1e-6
    np.testing.assert_array_equal(np.diag(s), 0)
