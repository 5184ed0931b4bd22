"""The patch memory bank: patch scores against scikit-learn, the coreset and MSDE steps against
the core functions, image scores, chunking, batch independence, and an easy detection case."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors
from testing import clustered

from msde_jax.core import (
    BankPositions,
    MemoryBank,
    bank_fit,
    bank_fit_subsets,
    density_weights,
    grid_positions,
    image_scores,
    kcenter_greedy,
    mean_shift,
    patch_scores,
    roc_auc,
    with_positions,
)

P, C = 9, 4  # patches per image (a 3 × 3 grid), channels


def _patches(seed, n_images, p=P, c=C):
    return np.random.default_rng(seed).normal(size=(n_images, p, c)).astype(np.float32)


def _bank(x):
    return MemoryBank(x, np.ones(len(x), x.dtype), np.arange(len(x), dtype=np.int32))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [1, 3])
def test_patch_scores_match_sklearn(x64, dtype, k):
    train = _patches(0, 20).reshape(-1, C).astype(dtype)
    test = _patches(1, 6).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    ref = NearestNeighbors(n_neighbors=k).fit(train).kneighbors(test.reshape(-1, C))[0]
    got = patch_scores(_bank(train), test, k=k)
    assert got.shape == (6, P)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, ref.mean(axis=1).reshape(6, P), rtol=tol, atol=tol)


# Every batch size compiles new programs: ten sizes (derandomized, edges included) suffice.
@settings(max_examples=10)
@given(batch_size=st.integers(1, 6 * P + 3))
def test_patch_scores_chunked_equal_unchunked(batch_size):
    bank = _bank(_patches(0, 20).reshape(-1, C))
    test = _patches(1, 6)
    for k in (1, 4):
        np.testing.assert_allclose(
            patch_scores(bank, test, k=k, batch_size=batch_size),
            patch_scores(bank, test, k=k),
            rtol=1e-6,
        )


def test_bank_is_the_coreset():
    train = _patches(2, 30)
    flat = train.reshape(-1, C)
    fitted = bank_fit(train, size=40)  # (n_images, P, c) is flattened
    # The coreset's rows in ascending row order, not in the order it chose them.
    chosen = np.asarray(kcenter_greedy(flat, 40))
    assert not np.array_equal(chosen, np.sort(chosen))
    indices = np.sort(chosen)
    np.testing.assert_array_equal(fitted.indices, indices)
    np.testing.assert_array_equal(fitted.bank, flat[indices])
    np.testing.assert_array_equal(fitted.density, np.ones(40))
    assert int(fitted.n_iter) == 0
    np.testing.assert_array_equal(bank_fit(flat, size=40).bank, fitted.bank)
    projected = bank_fit(train, size=40, projection_dim=2, key=jax.random.key(3))
    np.testing.assert_array_equal(
        projected.indices,
        np.sort(kcenter_greedy(flat, 40, projection_dim=2, key=jax.random.key(3))),
    )


def test_bank_larger_than_data_keeps_every_row():
    flat = _patches(3, 4).reshape(-1, C)
    for size in (len(flat), len(flat) + 10):
        fitted = bank_fit(flat, size=size)
        np.testing.assert_array_equal(fitted.bank, flat)
        np.testing.assert_array_equal(fitted.indices, np.arange(len(flat)))


@pytest.mark.parametrize("density", ["msde", "uniform", "fuzzy_degree"])
def test_shifted_bank_is_mean_shift_of_the_coreset(density):
    train = _patches(4, 40)
    plain = bank_fit(train, size=150)
    fitted = bank_fit(train, size=150, shift=True, density=density, k=20, step_size=0.4)
    w = density_weights(plain.bank, method=density)
    want = mean_shift(plain.bank, w, k=20, step_size=0.4)
    np.testing.assert_array_equal(fitted.indices, plain.indices)
    np.testing.assert_array_equal(fitted.density, w)
    np.testing.assert_array_equal(fitted.bank, want.points)
    assert int(fitted.n_iter) == int(want.n_iter) >= 1


def test_shifted_bank_chunked_equals_unchunked():
    train = _patches(5, 40)
    full = bank_fit(train, size=120, shift=True, k=15)
    chunked = bank_fit(train, size=120, shift=True, k=15, batch_size=37)
    np.testing.assert_array_equal(chunked.indices, full.indices)
    np.testing.assert_allclose(chunked.bank, full.bank, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.density, full.density, rtol=1e-6)
    assert int(chunked.n_iter) == int(full.n_iter)


@pytest.mark.parametrize("shift", [False, True])
def test_subset_banks_equal_separate_fits(shift):
    """One joint fit over subsets of the rows gives each subset the bank bank_fit gives it on
    its own rows (the indices mapped back to the joint rows), shift and weights included."""
    train = clustered(17, 30, p=9, c=C).reshape(-1, C)
    rng = np.random.default_rng(1)
    valid = np.stack([np.ones(len(train), bool), rng.random(len(train)) < 0.7])
    kwargs = {"size": 60, "shift": shift, "k": 10, "projection_dim": 3}
    joint = bank_fit_subsets(train, valid, **kwargs)
    assert joint.bank.shape == (2, 60, C)
    assert joint.n_iter.shape == (2,)
    for s in range(2):
        rows = np.flatnonzero(valid[s])
        alone = bank_fit(train[rows], **kwargs)
        np.testing.assert_array_equal(joint.indices[s], rows[np.asarray(alone.indices)])
        np.testing.assert_allclose(joint.bank[s], alone.bank, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(joint.density[s], alone.density, rtol=1e-5, atol=1e-6)
        assert int(joint.n_iter[s]) == int(alone.n_iter)


def test_msde_weight_blocks_follow_the_training_order():
    # Farthest-point order puts the outlying patches first, so consecutive-row ("msde")
    # weight blocks of the coreset's order would group them; the bank is in training order.
    train = clustered(16, 30, p=9, c=C)
    flat = train.reshape(-1, C)
    fitted = bank_fit(train, size=120, shift=True, k=10)
    rows = np.sort(np.asarray(kcenter_greedy(flat, 120)))
    np.testing.assert_array_equal(fitted.indices, rows)
    w = density_weights(flat[rows])
    np.testing.assert_array_equal(fitted.density, w)
    chosen = np.asarray(kcenter_greedy(flat, 120))
    assert not np.allclose(density_weights(flat[chosen]), w[np.argsort(np.argsort(chosen))])


def test_image_scores():
    s = np.random.default_rng(6).uniform(size=(5, 10))
    desc = -np.sort(-s, axis=1)
    np.testing.assert_allclose(image_scores(s), s.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(image_scores(s, reduce="mean"), s.mean(axis=1), rtol=1e-6)
    for q, n_top in ((0.25, 3), (0.7, 7), (0.1, 1), (1e-9, 1), (1.0, 10), (2.0, 10)):
        np.testing.assert_allclose(
            image_scores(s, reduce="top", q=q), desc[:, :n_top].mean(axis=1), rtol=1e-6
        )
    with pytest.raises(ValueError, match="reduce must be one of"):
        image_scores(s, reduce="median")


def test_top_q_is_exact_in_float64(x64):
    s = np.random.default_rng(7).uniform(size=(3, 10))
    desc = -np.sort(-s, axis=1)
    # 0.7 · 10 is 7.000000000000001 in float64: still the top 7, not 8.
    np.testing.assert_allclose(
        image_scores(s, reduce="top", q=0.7), desc[:, :7].mean(axis=1), rtol=1e-12
    )


def test_sweeping_q_does_not_retrace():
    traces = 0

    def score(s, q):
        nonlocal traces
        traces += 1
        return image_scores(s, reduce="top", q=q)

    score = jax.jit(score)
    s = np.random.default_rng(8).uniform(size=(4, 11)).astype(np.float32)
    got = [score(s, q) for q in (0.1, 0.3, 0.5, 1.0)]
    assert traces == 1
    np.testing.assert_allclose(got[-1], s.mean(axis=1), rtol=1e-6)


@given(seed=st.integers(0, 2**16), size=st.sampled_from([1, 3]))
def test_image_score_does_not_depend_on_the_batch(seed, size):
    bank = bank_fit(_patches(9, 30), size=100, shift=True, k=10)
    test = _patches(10, 8)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(test), size=size, replace=False)
    others = rng.normal(scale=4.0, size=(5, P, C)).astype(np.float32)

    def score(images):
        return image_scores(patch_scores(bank, images, batch_size=16), reduce="top", q=0.3)

    full = score(test)
    np.testing.assert_allclose(score(test[rows]), full[rows], rtol=1e-6)
    np.testing.assert_allclose(
        score(np.concatenate([others, test[rows]]))[5:], full[rows], rtol=1e-6
    )


@pytest.mark.parametrize("shift", [False, True])
def test_off_cluster_patches_rank_abnormal_images_first(shift):
    train = clustered(11, 40)
    test = clustered(12, 20, n_abnormal=10)
    labels = np.r_[np.zeros(10), np.ones(10)]
    bank = bank_fit(train, size=120, shift=shift, density="uniform")
    scores = image_scores(patch_scores(bank, test), reduce="max")
    assert roc_auc(labels, scores) == 1.0


def test_shift_stops_rare_training_patches_from_counting_as_normal():
    # Three training images each carry one rare patch; the abnormal test images carry patches
    # close to those. The coreset keeps the rare patches (k-center favours outliers), so the
    # plain bank scores the abnormal images as normal; after MSDE they have moved to the modes.
    rng = np.random.default_rng(13)
    rare = rng.normal(size=(3, 8))
    rare = 4.0 * rare / np.linalg.norm(rare, axis=-1, keepdims=True) - 2.5
    train = clustered(14, 40)
    train[:3, 0] = rare
    test = clustered(15, 20)
    test[10:, 0] = rare[np.arange(10) % 3] + rng.normal(scale=0.1, size=(10, 8))
    labels = np.r_[np.zeros(10), np.ones(10)]
    auroc = {}
    for shift in (False, True):
        bank = bank_fit(train, size=150, shift=shift)
        auroc[shift] = roc_auc(labels, image_scores(patch_scores(bank, test), reduce="max"))
    assert auroc[True] == 1.0
    assert auroc[False] < 0.8


def test_patch_scores_with_positions_are_distances_with_two_more_channels():
    """BankPositions(w, places): the distance to a bank row is the Euclidean one over the
    features and w × the (row, column) places, on a grid or on flat patches P = g²."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3, 3, 4)).astype(np.float32)
    rows = rng.normal(size=(12, 4)).astype(np.float32)
    places = grid_positions(3, 3)[rng.integers(0, 9, 12)]
    want = [[0, 0], [0, 0.5], [0, 1], [1, 0], [1, 0.5], [1, 1]]
    np.testing.assert_array_equal(grid_positions(2, 3), want)
    weight = np.float32(2.5)
    bank = MemoryBank(rows, np.ones(12, np.float32), np.arange(12, dtype=np.int32))
    got = patch_scores(bank, x, k=2, positions=BankPositions(weight, places))
    placed = with_positions(x, weight)
    assert placed.shape == (5, 3, 3, 6)
    where = weight * grid_positions(3, 3).reshape(3, 3, 2)
    np.testing.assert_array_equal(placed[..., 4:], np.broadcast_to(where, (5, 3, 3, 2)))
    wide = bank._replace(bank=np.concatenate([rows, weight * places], axis=1))
    np.testing.assert_allclose(got, patch_scores(wide, placed, k=2), rtol=1e-6)
    flat = patch_scores(bank, x.reshape(5, 9, 4), k=2, positions=BankPositions(weight, places))
    np.testing.assert_allclose(flat.reshape(5, 3, 3), got, rtol=1e-6)
    assert not np.allclose(got, patch_scores(bank, x, k=2))
    with pytest.raises(ValueError, match="8 patches per image is not g × g"):
        patch_scores(bank, x.reshape(5, 9, 4)[:, :8], positions=BankPositions(weight, places))
