"""kNN on L2-normalised features (``normalize="l2"``): the cosine kNN distance, k > 1."""

import numpy as np
import pytest

from msde_jax import MSDEDetector
from msde_jax.core.blocks import content_order

K = 5
COSINE = dict(mode="none", score="knn", score_neighbors=K, normalize="l2", standardize=False)


def _cosine_knn(train: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """NumPy reference: the mean of the k smallest √(2 − 2 cos) to the training rows."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = query / np.linalg.norm(query, axis=1, keepdims=True)
    dist = np.sqrt(np.maximum(2 - 2 * (b.astype(np.float64) @ a.T.astype(np.float64)), 0))
    return np.sort(dist, axis=1)[:, :k].mean(axis=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    train = (rng.normal(size=(60, 8)) + 2).astype(np.float32)
    test = np.concatenate([rng.normal(size=(6, 8)) + 2, rng.normal(size=(6, 8)) - 2])
    return train, test.astype(np.float32)


def test_cosine_knn_equals_numpy(data):
    train, test = data
    det = MSDEDetector(**COSINE, n_folds=3).fit(train)
    np.testing.assert_allclose(det.score_samples(test), _cosine_knn(train, test, K), atol=2e-6)
    # Out of fold: each fold against the other folds.
    order = content_order(train)
    for fold in range(3):
        held = np.sort(order[fold::3])
        rest = np.setdiff1d(np.arange(len(train)), held)
        want = _cosine_knn(train[rest], train[held], K)
        np.testing.assert_allclose(det.decision_scores_[held], want, atol=2e-6)
    # A row's length does not count, only its direction.
    scaled = test * np.linspace(0.1, 30, len(test), dtype=np.float32)[:, None]
    np.testing.assert_allclose(det.score_samples(scaled), det.score_samples(test), atol=2e-6)


def test_l2_then_standardise_and_round_trip(data, tmp_path):
    train, test = data
    det = MSDEDetector(mode="none", score="knn", score_neighbors=3, normalize="l2").fit(train)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    plain = MSDEDetector(mode="none", score="knn", score_neighbors=3).fit(unit)
    q = test / np.linalg.norm(test, axis=1, keepdims=True)
    np.testing.assert_allclose(det.score_samples(test), plain.score_samples(q), rtol=1e-5)
    det.save(tmp_path / "cos.npz")
    again = MSDEDetector.load(tmp_path / "cos.npz")
    assert again.normalize == "l2"
    np.testing.assert_array_equal(again.score_samples(test), det.score_samples(test))


def test_normalize_is_checked():
    with pytest.raises(ValueError, match="normalize='l1' is not valid"):
        MSDEDetector(normalize="l1").config()
