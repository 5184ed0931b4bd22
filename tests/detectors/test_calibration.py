"""Rank calibration: −log of a continuous conformal p-value, its tail, leave-one-out training
scores, the threshold's promise, and a rank-calibrated FusedDetector (fit, save / load)."""

import json
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msde_jax import FusedDetector, MSDEDetector, load_detector
from msde_jax.detectors.calibration import (
    RankCalibration,
    fuse_scores,
    loo_tail_scores,
    rank_calibration,
    tail_scale,
    tail_score,
)
from msde_jax.detectors.fitting import quantile_threshold
from msde_jax.detectors.persistence import read_npz

N_REF = 16  # one reference size: every hypothesis example reuses the compiled programs

references = st.lists(
    st.floats(-100, 100, allow_nan=False, width=32), min_size=N_REF, max_size=N_REF
).map(lambda v: np.sort(np.asarray(v, np.float32)))


def _c(s, o):
    o = np.asarray(o, np.float32)
    return np.asarray(tail_score(np.asarray(s, np.float32), o, tail_scale(o)))


@settings(deadline=None, max_examples=40)
@given(references, st.floats(-1e3, 1e3, allow_nan=False, width=32))
def test_calibration_is_monotone_and_non_negative(o, start):
    grid = np.linspace(start, start + 400.0, 64, dtype=np.float32)
    grid = np.sort(np.concatenate([grid, o, o - 1e-3, o + 1e-3]).astype(np.float32))
    c = _c(grid, o)
    assert np.isfinite(c).all()
    assert (c >= 0).all()
    assert (np.diff(c) >= -1e-5).all()


@settings(deadline=None, max_examples=40)
@given(
    st.lists(st.floats(0.05, 3.0), min_size=N_REF, max_size=N_REF),
    st.floats(-5.0, 5.0),
    st.floats(-10.0, 60.0),
)
def test_calibration_is_continuous_and_strictly_increasing_above_the_smallest(gaps, low, s):
    # Distinct references with gaps >= 0.05: slope at most 1 / min(gap, β), none flat.
    o = (low + np.cumsum(gaps)).astype(np.float32)
    beta = float(tail_scale(o))
    eps = 1e-2
    pair = np.asarray([s, s + eps], np.float32)
    c0, c1 = _c(pair, o)
    bound = eps / min(min(gaps), beta)
    assert c1 - c0 <= bound * 1.01 + 1e-4
    if s >= o[0]:
        assert c1 > c0


def test_order_statistics_get_conformal_p_values_and_the_tail_is_exponential():
    o = np.asarray([0.0, 1.0, 2.0, 4.0, 7.0], np.float32)
    n = o.size
    c = _c(o, o)
    expected = [-math.log((1 + n - i) / (n + 1)) for i in range(n)]  # p = (1 + #{≥ o_i})/(n+1)
    np.testing.assert_allclose(c, expected, rtol=1e-6)
    assert _c([-50.0], o)[0] == 0.0  # below every normal: p = 1
    np.testing.assert_allclose(_c([1.5], o)[0], math.log(6) - math.log(1 + 3.5), rtol=1e-6)
    # m = ⌈n / 10⌉ = 1: β = 7 − 4; beyond the largest c grows by 1/β per unit.
    assert float(tail_scale(o)) == pytest.approx(3.0)
    far = _c([7.0, 10.0, 13.0], o)
    np.testing.assert_allclose(np.diff(far), [1.0, 1.0], rtol=1e-5)
    # Tied top scores: a finite, steep tail.
    assert 0 < float(tail_scale(np.asarray([0, 1, 1, 1], np.float32))) <= 1e-6
    # Tied scores share the conformal count #{o ≥ s} (each tie had its own before: at 2.0
    # below, 3 instead of 5), and between distinct values G is linear again.
    tied = np.asarray([1.0, 2.0, 2.0, 2.0, 3.0, 4.0], np.float32)
    counts = {1.0: 6, 2.0: 5, 2.5: 3.5, 3.0: 2, 4.0: 1}
    got = _c(list(counts), tied)
    np.testing.assert_allclose(got, [math.log(7 / (1 + g)) for g in counts.values()], atol=1e-6)


def test_the_tail_starts_where_a_tied_maximum_leaves_off():
    """p(o_(n)) counts the maximum's ties, so c has no jump past a tied top score (it jumped by
    log((1 + k) / 2) past a k-times-tied one)."""
    o = np.r_[np.arange(18) * 0.5, 10.0, 10.0].astype(np.float32)  # n = 20, 10 twice
    at, past = _c([10.0, np.nextafter(np.float32(10), np.float32(11))], o)
    assert at == pytest.approx(math.log(21 / 3), rel=1e-6)
    assert past == pytest.approx(at, abs=1e-5)
    np.testing.assert_allclose(_c([13.0], o), at + 3.0 / float(tail_scale(o)), rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 1e-14, 1e20])
def test_the_calibration_does_not_depend_on_the_scores_unit(scale):
    """jnp.interp takes gaps below ~1e-14 for zero width: interpolated on the scores' own
    scale, tiny scores were a step function (0, 0.095, 0.452 for 0.047, 0.147, 0.526)."""
    o = np.arange(1.0, 11.0, dtype=np.float32)
    s = np.asarray([1.5, 2.5, 5.5, 12.0], np.float32)
    want = _c(s, o)
    np.testing.assert_allclose(want[:3], np.log(11) - np.log1p([9.5, 8.5, 5.5]), rtol=1e-5)
    np.testing.assert_allclose(_c(s * np.float32(scale), o * np.float32(scale)), want, rtol=1e-4)


def test_leave_one_out_needs_three_scores():
    for bad in (np.zeros(2, np.float32), np.zeros((4, 1), np.float32)):
        with pytest.raises(ValueError, match="at least 3 samples"):
            loo_tail_scores({"a": bad})


def test_leave_one_out_is_each_score_against_the_others(rng):
    s = rng.normal(size=9).astype(np.float32)
    loo = np.asarray(loo_tail_scores({"a": s})["a"])
    for k in range(s.size):
        others = np.sort(np.delete(s, k))
        assert loo[k] == pytest.approx(_c([s[k]], others)[0], rel=1e-6)


def test_fused_rank_scores_are_jit_able_and_batch_independent(rng):
    cal = rank_calibration({"a": rng.normal(size=30), "b": rng.gamma(2.0, size=30)})
    assert isinstance(cal, RankCalibration)
    # 64 scores, many beyond the largest normal's (the exponential tail's division)
    a, b = rng.normal(size=64) * 3, rng.gamma(2.0, size=64) * 3
    x = {"a": a.astype(np.float32), "b": b.astype(np.float32)}
    assert (x["a"] > cal.sorted["a"][-1]).sum() > 5
    batch = np.asarray(fuse_scores(x, cal))
    np.testing.assert_allclose(np.asarray(jax.jit(fuse_scores)(x, cal)), batch, rtol=1e-6)
    for i in range(64):
        alone = np.asarray(fuse_scores({k: v[i : i + 1] for k, v in x.items()}, cal))
        assert alone[0] == batch[i]


def _fprs(rng, n: int, contamination: float, repeats: int) -> tuple[float, float]:
    """Mean FPR on fresh normals of the threshold from n 'out-of-fold' scores of two
    components with different laws (a heavy and a light tail): with the training scores
    calibrated leave-one-out, and with each calibrated by a distribution that holds it."""
    rates = []
    for _ in range(repeats):
        oof = {"a": rng.standard_t(3, size=n), "b": rng.gamma(2.0, size=n)}
        cal = rank_calibration(oof)
        new = {"a": rng.standard_t(3, size=4000), "b": rng.gamma(2.0, size=4000)}
        fresh = np.asarray(fuse_scores(new, cal))
        rate = []
        for train in (loo_tail_scores(oof), {k: _c(v, cal.sorted[k]) for k, v in oof.items()}):
            fused = np.mean([np.asarray(v) for v in train.values()], axis=0)
            rate.append(np.mean(fresh > quantile_threshold(fused, contamination)))
        rates.append(rate)
    return tuple(np.mean(rates, axis=0))


def test_the_threshold_keeps_its_false_positive_promise(rng):
    # Leave-one-out training scores: fresh normals exceed the threshold about `contamination`
    # of the time (n = 100 exchangeable scores: the threshold is the 91st, which a fresh one
    # exceeds with probability 10 / 101 ≈ 0.099); calibrating each score with a
    # distribution that holds it flags more, on the same draws.
    loo, biased = _fprs(rng, 100, 0.1, repeats=60)
    assert abs(loo - 10 / 101) < 0.01
    assert biased > loo + 0.004


# ---------------------------------------------------------------------- the facade
PARAMS = {"mode": "none", "n_folds": 3, "n_components": 3}


def _features(rng, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "wide": (rng.normal(size=(n, 5)) + shift).astype(np.float32),
        "narrow": (rng.standard_t(3, size=(n, 3)) + shift).astype(np.float32),
    }


@pytest.fixture
def fitted(rng):
    components = {
        "wide": MSDEDetector(**PARAMS),
        "narrow": MSDEDetector(**PARAMS, covariance="ledoit_wolf"),
    }
    det = FusedDetector(components, contamination=0.1, calibration="rank")
    return det.fit(_features(rng, 60)), _features(rng, 9, shift=1.0)


def test_rank_fused_detector_scores_mean_tail_scores(fitted):
    det, test = fitted
    oof = {name: c.decision_scores_ for name, c in det.components.items()}
    raw = {name: c.score_samples(test[name]) for name, c in det.components.items()}
    parts = {name: _c(raw[name], np.sort(oof[name])) for name in raw}
    np.testing.assert_allclose(det.score_samples(test), np.mean(list(parts.values()), 0), 1e-5)
    for name, part in det.component_scores(test).items():
        np.testing.assert_allclose(part, parts[name], rtol=1e-5)
    loo = np.mean([np.asarray(v) for v in loo_tail_scores(oof).values()], axis=0)
    np.testing.assert_allclose(det.decision_scores_, loo, rtol=1e-6)
    assert det.threshold_ == quantile_threshold(det.decision_scores_, 0.1)
    assert "calibration='rank'" in repr(det)


def test_rank_fused_detector_round_trips(fitted, tmp_path):
    det, test = fitted
    det.save(tmp_path / "rank.npz", metadata={"note": 1})
    meta, arrays = read_npz(tmp_path / "rank.npz", what="FusedDetector")
    assert meta["params"]["calibration"] == "rank"
    assert arrays["fusion.sorted"].shape == (2, 60)
    assert "fusion.mean" not in arrays
    again = load_detector(tmp_path / "rank.npz")
    assert again.calibration == "rank"
    assert again.metadata_ == {"note": 1}
    np.testing.assert_array_equal(again.score_samples(test), det.score_samples(test))
    np.testing.assert_array_equal(again.decision_scores_, det.decision_scores_)
    assert again.threshold_ == det.threshold_
    # A z-scored file holds no calibration parameter, as files did before the option.
    z = FusedDetector(det.components).fit(_features(np.random.default_rng(1), 60))
    z.save(tmp_path / "z.npz")
    assert "calibration" not in read_npz(tmp_path / "z.npz", what="FusedDetector")[0]["params"]


def test_damaged_rank_files_are_refused(fitted, tmp_path):
    det, _ = fitted
    meta, arrays = det.to_arrays()
    unsorted = dict(arrays, **{"fusion.sorted": arrays["fusion.sorted"][:, ::-1].copy()})
    with pytest.raises(ValueError, match="must be sorted"):
        FusedDetector.from_arrays(json.loads(json.dumps(meta)), unsorted)
    with pytest.raises(ValueError, match="'fusion.sorted' is missing"):
        FusedDetector.from_arrays(meta, {k: v for k, v in arrays.items() if k != "fusion.sorted"})
    bad = {**meta, "params": {**meta["params"], "calibration": "median"}}
    with pytest.raises(ValueError, match="calibration='median' is not valid"):
        FusedDetector.from_arrays(bad, arrays)
    with pytest.raises(ValueError, match="calibration='median' is not valid"):
        FusedDetector(det.components, calibration="median").fit(
            _features(np.random.default_rng(2), 20)
        )
