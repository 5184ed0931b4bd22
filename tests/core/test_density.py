"""Density weights against the plain NumPy transcription of DESIGN.md (tests/reference_msde.py)."""

import numpy as np
import pytest
import reference_msde as ref

from msde_jax.core import density_weights

UMAP_IMPORT = pytest.mark.filterwarnings(
    "ignore:Tensorflow not installed; ParametricUMAP will be unavailable:ImportWarning"
)


def _blobs(seed, n, d=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(4, d))
    return centers[rng.integers(0, 4, size=n)] + 0.5 * rng.normal(size=(n, d))


# n = 40: one block (n ≤ 3q); 100: one full block; 230: two blocks and a partial one of 30;
# 205: a last block of 5 rows (fewer than q); 301: a last block of a single row.
@pytest.mark.parametrize("n", [40, 100, 230, 205, 301])
@pytest.mark.parametrize("quirk", [False, True])
def test_msde_weights_match_reference(x64, n, quirk):
    x = _blobs(n, n)
    got = density_weights(x, index_sum_quirk=quirk)
    want = ref.density_weights_ref(x, index_sum_quirk=quirk)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_msde_weights_other_parameters(x64):
    x = _blobs(7, 150, 4)
    got = density_weights(x, n_neighbors=8, tau=20.0, fraction=0.5, n_radii=3)
    want = ref.density_weights_ref(x, n_neighbors=8, tau=20, fraction=0.5, n_radii=3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_quirk_gives_smaller_weights_on_average(x64):
    # Summing positions reaches the required count at a smaller radius, so counts shrink.
    x = _blobs(230, 230)
    assert density_weights(x, index_sum_quirk=True).mean() < density_weights(x).mean()


@UMAP_IMPORT
def test_fuzzy_degree_matches_reference(x64):
    x = _blobs(11, 90)
    np.testing.assert_allclose(
        density_weights(x, method="fuzzy_degree"), ref.fuzzy_degree_ref(x), rtol=1e-6, atol=1e-6
    )


def test_uniform():
    w = density_weights(np.zeros((7, 3), np.float32), method="uniform")
    np.testing.assert_array_equal(w, np.ones(7))
    assert w.dtype == np.float32


@pytest.mark.parametrize("batch_size", [1, 250])
def test_block_batches_equal_all_at_once(batch_size):
    x = _blobs(5, 230).astype(np.float32)
    np.testing.assert_array_equal(density_weights(x, batch_size=batch_size), density_weights(x))


def test_fuzzy_degree_is_order_free_and_msde_is_not(x64):
    x = _blobs(230, 230)
    perm = np.random.default_rng(0).permutation(230)
    degree = density_weights(x, method="fuzzy_degree")
    np.testing.assert_allclose(
        density_weights(x[perm], method="fuzzy_degree"), degree[perm], rtol=1e-9
    )
    # The published blocks follow the row order: documented, and visible here.
    msde = density_weights(x)
    assert not np.allclose(density_weights(x[perm]), msde[perm])


def test_float32_close_to_float64(x64):
    x = _blobs(17, 230)
    w64 = np.asarray(density_weights(x))
    w32 = np.asarray(density_weights(x.astype(np.float32)))
    assert w32.dtype == np.float32
    # Counts at a bisected radius can flip for a few borderline rows; the bulk must agree.
    assert np.mean(np.abs(w32 - w64) < 1e-3) > 0.95


@pytest.mark.parametrize("padded", [False, True])
def test_msde_weights_far_from_the_origin(padded):
    """At an offset of 1000, float32 ranking of uncentred rows changed weights by up to 2.5
    (helper review, twenty-fourth session); each block now ranks rows centred on the real
    rows' mean, so the weights are those at the origin (padding far away changes nothing)."""
    x = _blobs(19, 230, 16).astype(np.float32)
    want = np.asarray(density_weights(x))
    far = x + np.float32(1000)
    n_valid = None
    if padded:
        far = np.concatenate([far, np.full((20, 16), -5e4, np.float32)])
        n_valid = 230
    got = np.asarray(density_weights(far, n_valid=n_valid, block_size=100))[:230]
    np.testing.assert_array_equal(got, want)


def test_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        density_weights(np.zeros((5, 2)), method="knn")


@pytest.mark.parametrize("n", [30, 230])  # one block; blocks of 100 with a short last one
def test_padding_rows_after_n_valid_change_no_weight(n):
    """Rows after ``n_valid`` weigh 0 and the real rows' weights are those without them, when
    the caller passes the real count's block size."""
    x = np.random.default_rng(33).normal(size=(n + 14, 4)).astype(np.float32)
    block = n + 14 if n <= 45 else 100  # the published rule for n real rows, q = 15
    got = np.asarray(density_weights(x, n_valid=n, block_size=block))
    np.testing.assert_array_equal(got[:n], density_weights(x[:n]))
    np.testing.assert_array_equal(got[n:], 0)
    uniform = density_weights(x, method="uniform", n_valid=n)
    np.testing.assert_array_equal(uniform, np.arange(n + 14) < n)
