"""AUROC, AP, ROC / PR curves and threshold metrics against sklearn.metrics, ties included."""

import json

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from sklearn import metrics as skm
from sklearn.metrics import average_precision_score, roc_auc_score
from testing import labelled_scores

from msde_jax.core.metrics import (
    average_precision,
    evaluation_metrics,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)

METRICS = [(roc_auc, roc_auc_score), (average_precision, average_precision_score)]
# Every new (length, dtype) recompiles, so the tests share a few: float32 scores of length 8, 32
# or 100 with bool labels, and float64 scores of length 300.


def _labels(rng, n, rate=0.3):
    labels = rng.random(n) < rate
    labels[:2] = [True, False]  # both classes present
    return labels


@pytest.mark.parametrize(("ours", "reference"), METRICS)
def test_random_scores_float32(rng, ours, reference):
    labels = _labels(rng, 100)
    scores = (rng.normal(size=100) + labels).astype(np.float32)
    value = ours(labels, scores)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, reference(labels, scores), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("ours", "reference"), METRICS)
def test_random_scores_float64(x64, rng, ours, reference):
    labels = _labels(rng, 300)
    scores = rng.normal(size=300) + labels
    value = ours(labels, scores)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, reference(labels, scores), rtol=1e-12)


@pytest.mark.parametrize(("ours", "reference"), METRICS)
def test_float64_scores_closer_than_float32_resolves_without_x64(rng, ours, reference):
    labels = _labels(rng, 300)
    scores = 1000.0 + 1e-6 * (rng.normal(size=300) + 2 * labels)  # one value in float32
    assert np.unique(scores.astype(np.float32)).size < 5
    np.testing.assert_allclose(ours(labels, scores), reference(labels, scores), rtol=1e-6)


@pytest.mark.parametrize(("ours", "reference"), METRICS)
@pytest.mark.parametrize("n_values", [1, 2, 3, 7])
def test_many_ties(x64, rng, ours, reference, n_values):
    for _ in range(5):
        labels = _labels(rng, 300, rate=rng.uniform(0.05, 0.95))
        scores = np.round(rng.uniform(0, n_values - 1, size=300) + 0.5 * labels)
        np.testing.assert_allclose(ours(labels, scores), reference(labels, scores), rtol=1e-12)


def test_all_tied_scores(rng):
    labels = _labels(rng, 100)
    scores = np.full(100, 3.0, dtype=np.float32)
    assert float(roc_auc(labels, scores)) == 0.5
    np.testing.assert_allclose(average_precision(labels, scores), labels.mean(), rtol=1e-6)


@pytest.mark.parametrize(("ours", "reference"), METRICS)
def test_int_labels_and_int_scores(rng, ours, reference):
    labels = _labels(rng, 100).astype(np.int32)
    scores = rng.integers(0, 5, size=100).astype(np.int32)
    np.testing.assert_allclose(ours(labels, scores), reference(labels, scores), rtol=1e-6)
    np.testing.assert_allclose(ours(labels.astype(bool), scores), ours(labels, scores), rtol=0)


@pytest.mark.parametrize(("ours", "reference"), METRICS)
@pytest.mark.parametrize(
    "scores",
    [
        np.array([2**31 - 3, 2**31 + 10, 2**31 + 5, 2**32 + 1, 7, 2**40], np.int64),  # JAX wraps
        np.array([2**32 - 1, 2**31 + 1, 5, 2**31, 0, 1], np.uint32),  # past int32
        np.array([1e-45, 2e-45, 3e-45, 0, -1e-45, 1e-44], np.float32),  # XLA flushes to 0
    ],
    ids=["int64", "uint32", "subnormal"],
)
def test_numpy_scores_the_device_would_merge_are_ranked_on_the_host(scores, ours, reference):
    labels = np.array([0, 1, 0, 1, 1, 0], bool)
    assert float(ours(labels, scores)) == pytest.approx(reference(labels, scores), rel=1e-6)


@pytest.mark.parametrize("ours", [roc_auc, average_precision])
def test_numpy_faults_are_named(ours):
    """NaN has no rank (it used to get one, different in float32 and float64), and shapes are
    named as given, not as padded."""
    with pytest.raises(ValueError, match="scores hold 1 NaN of 4"):
        ours(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.2], np.float32))
    with pytest.raises(ValueError, match=r"got shapes \(4, 1\) and \(4, 1\)"):
        ours(np.zeros((4, 1)), np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match=r"got shapes \(3,\) and \(4,\)"):
        ours(np.zeros(3), np.zeros(4, np.float32))


def test_perfect_and_reversed_ranking():
    labels = np.arange(8) >= 5
    scores = np.arange(8, dtype=np.float32)
    assert float(roc_auc(labels, scores)) == 1.0
    assert float(roc_auc(labels, -scores)) == 0.0
    assert float(average_precision(labels, scores)) == 1.0


@pytest.mark.parametrize("ours", [roc_auc, average_precision])
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_is_nan(ours, label):
    labels = np.full(8, bool(label))
    assert np.isnan(ours(labels, np.linspace(0, 1, 8, dtype=np.float32)))


@pytest.mark.parametrize("ours", [roc_auc, average_precision])
def test_jit_equals_eager(rng, ours):
    # Short: un-jitted, every primitive (and every level of the cummax scan) compiles on its own.
    labels = _labels(rng, 8)
    scores = np.round(rng.normal(size=8), 1).astype(np.float32)
    with jax.disable_jit():
        eager = ours(labels, scores)
    np.testing.assert_allclose(ours(labels, scores), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(ours)(labels, scores), eager, rtol=1e-6)


# Lengths are bucketed (each new length recompiles); small score alphabets force ties.
# No subnormals: XLA on CPU flushes them to zero, so they would tie with 0 (NumPy keeps them).
@st.composite
def _problems(draw):
    n = draw(st.sampled_from([8, 32, 100]))
    labels = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    labels[:2] = [True, False]
    values = draw(
        st.one_of(
            st.lists(st.integers(-3, 3), min_size=n, max_size=n),
            st.lists(st.floats(-1e3, 1e3, width=32, allow_subnormal=False), min_size=n, max_size=n),
        )
    )
    return labels, np.asarray(values, dtype=np.float32)


@given(problem=_problems())
def test_property_matches_sklearn(problem):
    labels, scores = problem
    for ours, reference in METRICS:
        np.testing.assert_allclose(
            ours(labels, scores), reference(labels, scores), rtol=1e-5, atol=1e-6
        )


# ------------------------------------------------------------------- curves and threshold metrics
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_sklearn(rng, ties):
    labels, scores = labelled_scores(rng, ties=ties)
    threshold = float(np.median(scores))  # with ties, some scores equal the threshold
    m = evaluation_metrics(labels.astype(int), scores, threshold)
    predicted = scores > threshold
    np.testing.assert_allclose(m["auroc"], skm.roc_auc_score(labels, scores), rtol=1e-12)
    np.testing.assert_allclose(
        m["average_precision"], skm.average_precision_score(labels, scores), rtol=1e-12
    )
    assert m["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, predicted))
    assert m["sensitivity"] == m["recall"]
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["false_positive_rate"] == pytest.approx(fp / (tn + fp))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert (m["n_normal"], m["n_abnormal"]) == ((~labels).sum(), labels.sum())
    assert m["threshold"] == threshold
    for value in m.values():  # plain Python numbers, JSON-serialisable
        assert type(value) in (int, float)
    assert json.loads(json.dumps(m)) == m


def test_metrics_edge_thresholds(rng):
    labels, scores = labelled_scores(rng, n=40)
    above = evaluation_metrics(labels, scores, scores.max())  # nothing predicted abnormal
    assert (above["tp"], above["fp"]) == (0, 0)
    assert above["precision"] == above["f1"] == above["recall"] == 0.0
    assert above["specificity"] == 1.0
    below = evaluation_metrics(labels, scores, -np.inf)  # everything predicted abnormal
    assert below["recall"] == 1.0
    assert below["false_positive_rate"] == 1.0
    one_class = evaluation_metrics(np.zeros(5), np.arange(5.0), 2.0)
    assert np.isnan(one_class["auroc"])
    assert np.isnan(one_class["average_precision"])
    with pytest.raises(ValueError, match="same length"):
        evaluation_metrics(labels[:-1], scores, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        evaluation_metrics(labels, np.r_[scores[:-1], np.nan], 1.0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_roc_curve_matches_sklearn(rng, ties, drop_intermediate):
    labels, scores = labelled_scores(rng, ties=ties)
    ours = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    reference = skm.roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_precision_recall_curve_matches_sklearn(rng, ties, drop_intermediate):
    labels, scores = labelled_scores(rng, ties=ties)
    ours = precision_recall_curve(labels, scores, drop_intermediate=drop_intermediate)
    reference = skm.precision_recall_curve(labels, scores, drop_intermediate=drop_intermediate)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_curves_tiny_and_all_tied():
    labels = np.array([0, 1, 0, 1])
    scores = np.full(4, 0.3)
    for ours, reference in (
        (roc_curve, skm.roc_curve),
        (precision_recall_curve, skm.precision_recall_curve),
    ):
        for a, b in zip(ours(labels, scores), reference(labels, scores), strict=True):
            np.testing.assert_allclose(a, b)


# ---------------------------------------------------------------------- localisation
def _aupro_reference(masks, maps, max_fpr):
    """A direct transcription: every distinct map value as a threshold, regions by SciPy."""
    from scipy import ndimage

    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        lab, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[lab == r] for r in range(1, count + 1)]
    normal = maps[~masks]
    points = []
    for t in np.unique(np.r_[maps.ravel(), np.inf])[::-1]:
        fpr = np.mean(normal > t)
        pro = np.mean([np.mean(r > t) for r in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    keep = fpr <= max_fpr
    x = np.r_[fpr[keep], max_fpr]
    y = np.r_[pro[keep], np.interp(max_fpr, fpr, pro)]
    return np.trapezoid(y, x) / max_fpr


def test_aupro(rng):
    from msde_jax.core.metrics import aupro

    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:6, 2:6] = True  # two regions of very different sizes count equally
    masks[0, 10:19, 10:19] = True
    masks[1, 5:8, 12:14] = True
    maps = rng.random(masks.shape) + 0.8 * masks
    ours = aupro(masks, maps, n_steps=2000)  # more steps than normal pixels: the whole curve
    np.testing.assert_allclose(ours, _aupro_reference(masks, maps, 0.3), atol=1e-12)
    fewer = aupro(masks, maps, n_steps=50)  # chords across the curve's steps
    assert fewer == pytest.approx(ours, abs=0.01)
    assert aupro(masks, masks.astype(float) + 0.01 * rng.random(masks.shape)) == pytest.approx(1)
    noise = [aupro(masks, rng.random(masks.shape)) for _ in range(5)]
    assert 0.05 < np.mean(noise) < 0.25  # about max_fpr / 2 for a random map
    with pytest.raises(ValueError, match="at least one anomalous region"):
        aupro(np.zeros((1, 4, 4)), rng.random((1, 4, 4)))
    with pytest.raises(ValueError, match="alike"):
        aupro(masks, maps[0])
    with pytest.raises(ValueError, match="maps hold 1 NaN pixels"):
        aupro(masks, np.where(np.arange(maps.size).reshape(maps.shape) == 7, np.nan, maps))
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        aupro(masks, maps, n_steps=0)


def test_aupro_climbs_between_normal_values():
    """Normal pixels 0, …, 9 and a one-pixel region at 8.5: at FPR 0.1 (threshold 9) PRO is
    0, and it reaches 1 before FPR moves on at threshold 8 — a vertical step, not the chord
    from (0.1, 0) to (0.2, 1) that gave 0.500 and 0.850."""
    from msde_jax.core.metrics import aupro

    masks = np.zeros((1, 1, 11), bool)
    masks[0, 0, 10] = True
    maps = np.r_[np.arange(10.0), 8.5][None, None]
    assert aupro(masks, maps, max_fpr=0.3) == pytest.approx(2 / 3)  # (0.3 − 0.1) / 0.3
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.9)
    for max_fpr in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(
            _aupro_reference(masks, maps, max_fpr), abs=1e-12
        )


def test_aupro_interpolates_across_tied_map_values(rng):
    """Quantised maps (or maps set to 0 outside a foreground): FPR jumps past max_fpr at one
    threshold, and PRO at max_fpr lies between the operating points on either side (it was
    held at the last point below, down to 0 for a constant map)."""
    from msde_jax.core.metrics import aupro

    masks = np.zeros((2, 16, 16), bool)
    masks[0, 3:7, 3:9] = True
    masks[1, 9:14, 2:5] = True
    maps = np.round(3 * (rng.random(masks.shape) + 0.4 * masks)) / 3  # five levels
    for max_fpr in (0.05, 0.3, 1.0):
        want = _aupro_reference(masks, maps, max_fpr)
        np.testing.assert_allclose(aupro(masks, maps, max_fpr=max_fpr), want, atol=1e-12)
    assert aupro(masks, np.ones(masks.shape)) == pytest.approx(0.15)  # chance: max_fpr / 2
    one = np.zeros((1, 10, 10), bool)
    one[0, :2, :5] = True  # 10 region pixels, all hit, and 50 of the 90 normal pixels
    hit = one.astype(float)
    hit[0, 5:] = 1.0
    # (0, 0) → (50/90, 1): PRO 0.54 at FPR 0.3, area 0.081 / 0.3
    assert aupro(one, hit) == pytest.approx(0.27)


def test_lengths_in_one_bucket_share_a_program_and_padding_counts_for_nothing():
    """Outside jit the inputs are padded to a bucketed length with a mask: lengths up to 1,024
    run one compiled program (a validation set, a test set and the kinds of a cold
    ``msde-jax evaluate``), and the padding (zeros, tied with real zero scores here) changes no
    value."""
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=1100), 1).astype(np.float32)  # ties, zeros among them
    labels = rng.random(1100) < 0.4
    roc_auc(labels[:20], scores[:20])
    before = _auc_and_ap_cache_size()
    for n in (5, 23, 600, 1024):
        y, s = labels[:n], scores[:n]
        np.testing.assert_allclose(roc_auc(y, s), roc_auc_score(y, s), rtol=1e-6)
        ap = average_precision(y, s)
        np.testing.assert_allclose(ap, average_precision_score(y, s), rtol=1e-6)
    assert _auc_and_ap_cache_size() == before
    np.testing.assert_allclose(roc_auc(labels, scores), roc_auc_score(labels, scores), rtol=1e-6)
    assert _auc_and_ap_cache_size() == before + 1  # 1,100 → 2,048


def _auc_and_ap_cache_size():
    from msde_jax.core import metrics

    return metrics._auc_and_ap._cache_size()
