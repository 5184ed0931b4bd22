"""The fit skeleton: content-ordered folds, folds of groups, and the cross-fit threshold."""

import numpy as np
import pytest

from msde_jax import MSDEDetector, PatchBankDetector
from msde_jax.detectors.fitting import (
    folds,
    out_of_fold_scores,
    quantile_threshold,
    threshold_rank,
)


def _keys(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2**62, n).astype(np.uint64)


def test_folds_partition_the_samples_in_content_order():
    keys = _keys(23)
    held = folds(keys, 4)
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), np.arange(23))
    order = np.argsort(keys, kind="stable")
    for f, fold in enumerate(held):
        np.testing.assert_array_equal(fold, np.sort(order[f::4]))


def test_folds_of_groups_keep_each_group_together():
    keys = _keys(30, seed=1)
    groups = np.repeat(np.array([5, 1, 9, 3, 7, 2]), 5)  # six groups of five
    held = folds(keys, 3, groups)
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), np.arange(30))
    for fold in held:
        assert fold.size == 10
        for g in np.unique(groups[fold]):
            assert set(np.flatnonzero(groups == g)) <= set(fold)  # the whole group
    # The same samples in another row order make the same folds of groups.
    perm = np.random.default_rng(2).permutation(30)
    moved = folds(keys[perm], 3, groups[perm])
    assert sorted(map(tuple, (np.sort(perm[f]) for f in moved))) == sorted(map(tuple, held))
    with pytest.raises(ValueError, match="6 groups"):
        folds(keys, 7, groups)
    with pytest.raises(ValueError, match="one id per sample"):
        folds(keys, 3, groups[:5])


def test_copies_of_one_sample_share_a_fold():
    # A scan stored twice: dealt into two folds, each copy was scored by a model that saw the
    # other (out-of-fold score about 0) and the threshold fell (twice the promised false
    # positives on fresh normals in a review's example).
    keys = _keys(20, seed=3)
    copies = np.r_[keys, keys[:6], keys[:2]]  # 6 samples twice, 2 of them three times
    held = folds(copies, 4)
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), np.arange(28))
    fold_of = np.empty(28, int)
    for f, fold in enumerate(held):
        fold_of[fold] = f
    for key in keys[:6]:
        assert np.unique(fold_of[copies == key]).size == 1
    assert [fold.size for fold in folds(copies, 4)] == [fold.size for fold in held]
    # Without copies, the folds are those of the content order, as before.
    plain = folds(keys, 4)
    order = np.argsort(keys, kind="stable")
    for f, fold in enumerate(plain):
        np.testing.assert_array_equal(fold, np.sort(order[f::4]))
    # Fewer distinct samples than folds: dealt one by one (no other way).
    assert all(fold.size == 1 for fold in folds(np.repeat(keys[:1], 3), 3))
    # Groups holding the same content are merged: copies across volumes share a fold.
    # Volumes 7 and 8 hold copies of slices of volumes 0 and 1: 0, 1, 7, 8 count as one.
    groups = np.r_[np.repeat(np.arange(5), 4), np.repeat([7, 8], 4)]
    held = folds(copies, 3, groups)
    for key in keys[:6]:
        samples = np.flatnonzero(copies == key)
        assert sum(np.isin(samples, fold).any() for fold in held) == 1
    with pytest.raises(ValueError, match="4 groups .those holding the same content counted"):
        folds(copies, 5, groups)


def test_a_threshold_needs_scores_and_no_nan():
    """A NaN among the out-of-fold scores made the threshold NaN, which flags nothing; two
    infinite ones made it NaN too (np.quantile between them), which predict then took for
    threshold='none'."""
    with pytest.raises(ValueError, match="1 of the 3 out-of-fold scores .* are NaN"):
        quantile_threshold(np.array([1.0, np.nan, 2.0]), 0.05)
    with pytest.raises(ValueError, match="2 of the 40 out-of-fold scores .* NaN or infinite"):
        quantile_threshold(np.r_[np.arange(38.0), np.inf, np.inf], 0.05)
    with pytest.raises(ValueError, match="no scores"):
        quantile_threshold(np.zeros(0), 0.05)


def test_out_of_fold_scores_score_each_fold_by_the_others():
    held = folds(_keys(10), 2)
    seen = []

    def fit_score(rest, fold):
        seen.append((rest, fold))
        return fold * 10.0

    np.testing.assert_array_equal(out_of_fold_scores(held, fit_score), np.arange(10) * 10.0)
    for rest, fold in seen:
        assert not np.intersect1d(rest, fold).size


@pytest.mark.parametrize("kind", ["msde", "bank"])
def test_detectors_fit_with_groups(kind):
    rng = np.random.default_rng(4)
    if kind == "msde":
        # Eight "volumes" of eight near-identical "slices": folds of slices would score each
        # slice by a model that saw its twins, folds of volumes do not.
        centres = rng.normal(size=(8, 1, 6))
        x = (centres + 0.01 * rng.normal(size=(8, 8, 6))).reshape(64, 6).astype(np.float32)
        det, other = MSDEDetector(mode="none", score="knn"), MSDEDetector(mode="none", score="knn")
    else:
        centres = rng.normal(size=(8, 1, 2, 2, 3))
        x = (centres + 0.01 * rng.normal(size=(8, 8, 2, 2, 3))).reshape(64, 2, 2, 3)
        x = x.astype(np.float32)
        det, other = PatchBankDetector(size=50), PatchBankDetector(size=50)
    groups = np.repeat(np.arange(8), 8)
    det.fit(x, groups=groups)
    other.fit(x)
    np.testing.assert_array_equal(det.score_samples(x[:5]), other.score_samples(x[:5]))
    # Out of its group, a slice is far from every training slice: higher out-of-fold scores.
    assert np.median(det.decision_scores_) > 10 * np.median(other.decision_scores_)


class _FakeDevice:
    def __init__(self, platform, free=None):
        self.platform = platform
        self.device_kind = f"fake {platform}"
        self._free = free

    def memory_stats(self):
        return None if self._free is None else {"bytes_limit": self._free, "bytes_in_use": 0}


def test_block_sizes_follow_the_backend_and_its_free_memory():
    from msde_jax.detectors.config import auto_batch

    cpu = _FakeDevice("cpu")
    assert auto_batch(None, 1000, device=cpu) is None  # one block on a CPU up to 1024 rows
    assert auto_batch(None, 5000, device=cpu) == 256  # cache-sized blocks beyond
    assert auto_batch(64, 5000, device=cpu) == 64  # the user's choice wins everywhere
    gpu = _FakeDevice("gpu", free=80 << 30)
    assert auto_batch(None, 20_000, device=gpu) is None  # the whole problem fits: one block
    rows = auto_batch(None, 500_000, device=gpu)  # (rows × n) buffers within a quarter
    assert rows % 256 == 0
    assert 16 * rows * 500_000 <= (80 << 30) // 4 < 16 * (rows + 256) * 500_000
    assert auto_batch(None, 10**7, device=_FakeDevice("tpu", free=1 << 20)) == 256  # at least
    assert auto_batch(None, 50_000, device=_FakeDevice("gpu")) == 1280  # 4 GiB assumed
    # a full device (0 bytes free) is not an unknown one: the smallest block (was 4 GiB's)
    assert auto_batch(None, 50_000, device=_FakeDevice("gpu", free=0)) == 256


def test_the_threshold_is_the_conformal_quantile_and_keeps_its_promise(rng):
    """np.quantile's linear 95 % quantile of n exchangeable scores is exceeded by a new one
    with probability (1 + (n − 1) · 0.05) / (n + 1): 0.091 at n = 20, 0.121 at n = 10, not
    the 0.05 promised; the ⌈(n + 1)(1 − c)⌉-th smallest is exceeded with at most c."""
    assert quantile_threshold(np.arange(101.0), 0.05) == 96.0  # rank ⌈102 · 0.95⌉ = 97
    assert [threshold_rank(n, 0.05) for n in (1, 10, 18, 19, 20, 476)] == [1, 10, 18, 19, 20, 454]
    assert threshold_rank(99, 0.1) == 90  # 100 · 0.9 = 90 exactly, not 91
    for n in (10, 20, 40, 100):
        train = rng.random((4000, n))
        thresholds = np.array([quantile_threshold(t, 0.05) for t in train])
        rate = np.mean(rng.random(4000) > thresholds)  # one fresh normal per training set
        exact = 1 - threshold_rank(n, 0.05) / (n + 1)  # rank-based: any continuous law
        assert rate == pytest.approx(exact, abs=0.012)
        assert exact <= 0.05 or n < 19  # too few for the promise: the largest score
        linear = np.mean(rng.random(4000) > np.quantile(train, 0.95, axis=1))
        assert linear > exact + 0.004 * (n <= 40)
