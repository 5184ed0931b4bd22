"""kcenter_greedy against a plain NumPy greedy loop, its 2-approximation guarantee, chunking,
projection, jit and retracing."""

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msde_jax._platform import PATHS_ENV
from msde_jax.core import (
    kcenter_greedy,
    kcenter_greedy_batched,
    kcenter_greedy_subsets,
    projection_matrix,
    random_projection,
)

N, D = 41, 5


def _data(seed, n=N, d=D):
    return np.random.default_rng(seed).normal(size=(n, d))


def numpy_greedy(x, n_select, start=0):
    """Farthest-point sampling, written out: the textbook loop the JAX version must match."""
    x = np.asarray(x, np.float64)
    dist = np.full(len(x), np.inf)
    chosen = [start]
    for _ in range(n_select - 1):
        dist = np.minimum(dist, ((x - x[chosen[-1]]) ** 2).sum(axis=1))
        dist[chosen] = -1.0
        chosen.append(int(np.argmax(dist)))
    return np.array(chosen)


def radius(x, centres):
    """The k-center objective: the largest distance from a row to its nearest chosen row."""
    d = np.linalg.norm(x[:, None, :] - x[None, centres, :], axis=-1)
    return d.min(axis=1).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("start", [0, 17])
def test_matches_numpy_greedy(x64, dtype, start):
    x = _data(1, 300, 8).astype(dtype)
    got = kcenter_greedy(x, 60, start=start)
    assert got.dtype == np.int32
    assert got.shape == (60,)
    np.testing.assert_array_equal(got, numpy_greedy(x, 60, start))


@pytest.mark.parametrize("pad", ["zeros", "far", "copies"])
def test_padding_rows_are_never_chosen(pad):
    """Rows past ``n_valid`` change nothing: the same rows as the unpadded search, whatever
    the padding holds (zeros, far outliers that would be chosen first, duplicates)."""
    x = _data(3, 200, 6).astype(np.float32)
    filler = {"zeros": np.zeros((56, 6)), "far": np.full((56, 6), 50.0), "copies": x[:56]}[pad]
    padded = np.concatenate([x, filler.astype(np.float32)])
    got = kcenter_greedy(padded, 40, n_valid=200, projection_dim=4)
    np.testing.assert_array_equal(got, kcenter_greedy(x, 40, projection_dim=4))
    np.testing.assert_array_equal(kcenter_greedy(padded, 40, n_valid=200), numpy_greedy(x, 40))


def test_far_from_origin():
    # A large common offset: ‖x‖² + ‖y‖² − 2xᵀy alone would drown the distances in float32.
    x = _data(2, 200, 6)
    shifted = (x + 1e3).astype(np.float32)
    np.testing.assert_array_equal(kcenter_greedy(shifted, 30), numpy_greedy(x, 30))


# Every batch size compiles new programs: ten sizes (derandomized, edges included) suffice.
@settings(max_examples=10)
@given(batch_size=st.integers(1, N + 3), seed=st.integers(0, 3))
def test_chunked_equals_unchunked(batch_size, seed):
    x = _data(seed).astype(np.float32)
    for projection_dim in (None, 3):
        full = kcenter_greedy(x, 12, projection_dim=projection_dim)
        chunked = kcenter_greedy(x, 12, projection_dim=projection_dim, batch_size=batch_size)
        np.testing.assert_array_equal(chunked, full)


def test_selecting_all_rows_is_a_permutation():
    x = _data(3).astype(np.float32)
    np.testing.assert_array_equal(np.sort(kcenter_greedy(x, N)), np.arange(N))
    # Exact duplicates: still distinct indices; of each pair the lower index first, the twins
    # of chosen rows (distance 0 up to rounding) last.
    twins = np.concatenate([x[:10], x[:10]])
    got = np.asarray(kcenter_greedy(twins, 20))
    np.testing.assert_array_equal(np.sort(got[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(got[10:]), np.arange(10, 20))


def test_ties_go_to_the_lowest_index():
    # Rows 1 and 2 are equally far from row 0 (exactly, in binary), whichever side they are on.
    x = np.array([[0.0], [-2.0], [2.0], [0.5]], np.float32)
    np.testing.assert_array_equal(kcenter_greedy(x, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(kcenter_greedy(x[[0, 2, 1, 3]], 4), [0, 1, 2, 3])


@pytest.mark.parametrize("seed", range(4))
def test_within_twice_the_optimal_radius(seed):
    x = _data(seed, 12, 2)
    for n_select in (2, 3, 4):
        best = min(radius(x, list(c)) for c in itertools.combinations(range(12), n_select))
        greedy = radius(x, np.asarray(kcenter_greedy(x.astype(np.float32), n_select)))
        assert best <= greedy <= 2 * best + 1e-6


def test_one_row():
    np.testing.assert_array_equal(kcenter_greedy(_data(0), 1, start=5), [5])


@pytest.mark.parametrize("n_select", [0, N + 1])
def test_bad_n_select_raises(n_select):
    with pytest.raises(ValueError, match="n_select must be between 1"):
        kcenter_greedy(_data(0), n_select)


def test_projection():
    x = _data(4, 200, 40).astype(np.float32)
    key = jax.random.key(7)
    z = random_projection(x, 16, key=key)
    assert z.shape == (200, 16)
    np.testing.assert_array_equal(
        kcenter_greedy(x, 20, projection_dim=16, key=key), kcenter_greedy(z, 20)
    )
    np.testing.assert_array_equal(
        kcenter_greedy(x, 20, projection_dim=16), kcenter_greedy(x, 20, projection_dim=16, key=None)
    )
    # Johnson-Lindenstrauss: with many dimensions the pairwise distances barely change.
    wide = np.asarray(random_projection(x, 4000, key=key, batch_size=64))
    ratio = np.linalg.norm(wide[:50, None] - wide[None, :50], axis=-1)[np.triu_indices(50, 1)]
    ratio /= np.linalg.norm(x[:50, None] - x[None, :50], axis=-1)[np.triu_indices(50, 1)]
    assert 0.9 < ratio.min()
    assert ratio.max() < 1.1


def test_the_projection_matrix_stands_for_its_key():
    """R drawn once (``projection_matrix``) and given as ``key`` is the projection the key
    draws, and the program given it draws nothing (no threefry to compile); a matrix of the
    wrong shape is refused."""
    x = _data(4, 200, 40).astype(np.float32)
    key = jax.random.key(7)
    r = projection_matrix(key, 40, 16)
    assert r.shape == (40, 16)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(
        random_projection(x, 16, key=r), random_projection(x, 16, key=key)
    )
    by_key = kcenter_greedy(x, 20, projection_dim=16, key=key)
    np.testing.assert_array_equal(kcenter_greedy(x, 20, projection_dim=16, key=r), by_key)
    sets = np.stack([x[:100], x[100:]])
    counts = np.array([100, 80], np.int32)
    np.testing.assert_array_equal(
        kcenter_greedy_batched(sets, 5, counts, projection_dim=16, key=r),
        kcenter_greedy_batched(sets, 5, counts, projection_dim=16, key=key),
    )
    lowered = jax.jit(kcenter_greedy, static_argnames=("n_select", "projection_dim"))
    assert "threefry" in lowered.lower(x, 20, projection_dim=16, key=key).as_text()
    assert "threefry" not in lowered.lower(x, 20, projection_dim=16, key=r).as_text()
    with pytest.raises(ValueError, match=r"must be \(features, dim\) = \(40, 8\)"):
        random_projection(x, 8, key=r)


def test_projected_selection_still_covers_well():
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=10.0, size=(8, 64))
    x = (centres[rng.integers(0, 8, 400)] + rng.normal(size=(400, 64))).astype(np.float32)
    exact = radius(x, np.asarray(kcenter_greedy(x, 8)))
    projected = radius(x, np.asarray(kcenter_greedy(x, 8, projection_dim=16)))
    assert projected < 1.5 * exact  # every cluster is still hit once


def test_jit_equals_eager():
    x = _data(6).astype(np.float32)
    jitted = kcenter_greedy(x, 10, start=3, projection_dim=4, batch_size=7)
    with jax.disable_jit():
        eager = kcenter_greedy(x, 10, start=3, projection_dim=4, batch_size=7)
    np.testing.assert_array_equal(jitted, eager)


def test_new_data_and_start_do_not_retrace():
    traces = 0

    def select(x, start):
        nonlocal traces
        traces += 1
        return kcenter_greedy(x, 9, start=start)

    select = jax.jit(select)
    for seed, start in ((0, 0), (1, 4), (2, 11)):
        x = _data(seed, 43, 3).astype(np.float32)  # a shape no other test uses
        np.testing.assert_array_equal(select(x, start), numpy_greedy(x, 9, start))
    assert traces == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("projection_dim", [None, 4])
def test_subsets_equal_separate_searches(x64, dtype, projection_dim):
    """Each subset's search is the search on its own rows (from its first row), as indices
    into x; the rows outside it, including far outliers, are never chosen."""
    x = _data(4, 240, 6).astype(dtype)
    x[-8:] += 40.0  # outliers in no subset but the first: the others must never pick them
    rng = np.random.default_rng(0)
    valid = rng.random((4, 240)) < np.array([[1.0], [0.8], [0.5], [0.3]])
    valid[1:, -8:] = False
    got = kcenter_greedy_subsets(x, 25, valid, projection_dim=projection_dim)
    assert got.shape == (4, 25)
    assert got.dtype == np.int32
    for s in range(4):
        rows = np.flatnonzero(valid[s])
        alone = kcenter_greedy(x[rows], 25, projection_dim=projection_dim)
        np.testing.assert_array_equal(got[s], rows[np.asarray(alone)])


def _products_with(closed, shape):
    """The (lhs shape) of every dot_general in ``closed`` (nested jaxprs too) whose right
    operand has ``shape``."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general" and eqn.invars[1].aval.shape == shape:
                found.append(eqn.invars[0].aval.shape)
            for value in eqn.params.values():
                for inner in value if isinstance(value, tuple | list) else (value,):
                    if hasattr(inner, "eqns"):
                        walk(inner)
                    elif hasattr(inner, "jaxpr") and hasattr(inner.jaxpr, "eqns"):
                        walk(inner.jaxpr)

    walk(closed.jaxpr)
    return found


@pytest.mark.parametrize(("paths", "want"), [("cpu", [(6,)] * 3), ("accelerator", [(3, 6)])])
def test_a_subsets_step_is_a_product_per_subset_on_a_cpu(monkeypatch, paths, want):
    """Each greedy step's distances to the S newest rows: S matrix-vector products on a CPU
    (faster there than one product with S columns, ``benchmarks/bench_bank.py``), one (S, d)
    × (d, n) product on an accelerator (``MSDE_JAX_PATHS``, read when the program is traced)."""
    monkeypatch.setenv(PATHS_ENV, paths)
    x = _data(4, 240, 6).astype(np.float32)
    valid = np.random.default_rng(0).random((3, 240)) < 0.7
    closed = jax.make_jaxpr(lambda a, v: kcenter_greedy_subsets.__wrapped__(a, 5, v))(x, valid)
    assert _products_with(closed, (6, 240)) == want


def test_subsets_refuse_a_bad_mask():
    with pytest.raises(ValueError, match="valid must be"):
        kcenter_greedy_subsets(_data(0), 3, np.ones(N, bool))


@pytest.mark.parametrize(
    ("projection_dim", "together"), [(None, None), (4, None), (None, True), (4, False)]
)
def test_batched_equals_separate_searches(projection_dim, together):
    """Each set's search is the search on its own valid rows, in step or one after another;
    the padding is never chosen."""
    x = _data(5, 3 * 90, 6).astype(np.float32).reshape(3, 90, 6)
    counts = np.array([90, 61, 30], np.int32)
    for b, count in enumerate(counts):
        x[b, count:] = 50.0  # padding far away: a search that saw it would pick it first
    got = kcenter_greedy_batched(x, 20, counts, projection_dim=projection_dim, together=together)
    assert got.shape == (3, 20)
    assert got.dtype == np.int32
    for b, count in enumerate(counts):
        alone = kcenter_greedy(x[b, :count], 20, projection_dim=projection_dim)
        np.testing.assert_array_equal(got[b], alone)


def test_batched_refuses_a_bad_shape():
    with pytest.raises(ValueError, match="x must be"):
        kcenter_greedy_batched(_data(0), 3, np.array([5]))
