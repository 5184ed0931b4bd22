"""The evaluation report: metrics and curves against sklearn.metrics, and the files it writes."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from msde_jax.report import (
    MATPLOTLIB_MISSING,
    evaluation_metrics,
    precision_recall_curve,
    roc_curve,
    write_report,
)

PNGS = ("roc.png", "pr.png", "histogram.png", "grid.png")


def _data(rng, n=120, rate=0.4, ties=False):
    labels = rng.random(n) < rate
    labels[:2] = [True, False]
    scores = rng.gamma(2.0, 1.0, n) + 1.5 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # many tied scores, across both classes
    return labels, scores


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_sklearn(rng, ties):
    labels, scores = _data(rng, ties=ties)
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
    labels, scores = _data(rng, n=40)
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
    labels, scores = _data(rng, ties=ties)
    ours = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    reference = skm.roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_precision_recall_curve_matches_sklearn(rng, ties, drop_intermediate):
    labels, scores = _data(rng, ties=ties)
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


def _images(rng, n):
    """Small random images in every form to_float reads: gray, RGB, uint8, float."""
    images = []
    for i in range(n):
        img = rng.random((12 + i % 3, 10, 3) if i % 2 else (12, 12)).astype(np.float32)
        images.append((img * 255).astype(np.uint8) if i % 3 == 0 else img)
    return images


def test_write_report(tmp_path, rng):
    labels, scores = _data(rng, n=40)
    threshold = float(np.quantile(scores[~labels], 0.9))
    images = _images(rng, 40)
    path = tmp_path / "case_0.png"
    Image.fromarray(np.asarray(images[0])).save(path)
    images[0] = path  # paths and arrays mixed
    out = tmp_path / "nested" / "report"
    config = {"backbone": "efficientnet_lite0", "layers": np.arange(3), "out": tmp_path}
    timings = {"fit": 1.25, "score": np.float32(0.5)}
    m = write_report(
        out,
        labels=labels,
        scores=scores,
        threshold=threshold,
        images=images,
        title="Test report",
        config=config,
        timings=timings,
    )
    assert m == evaluation_metrics(labels, scores, threshold)
    assert sorted(p.name for p in out.iterdir()) == sorted(("metrics.json", "report.md", *PNGS))

    with open(out / "metrics.json", encoding="utf-8") as f:
        record = json.load(f)
    assert record["metrics"] == m
    expected_config = {"backbone": "efficientnet_lite0", "layers": [0, 1, 2], "out": str(tmp_path)}
    assert record["config"] == expected_config
    assert record["timings"] == {"fit": 1.25, "score": 0.5}
    assert record["title"] == "Test report"

    for name in PNGS:
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG"
            width, height = img.size
            assert 300 <= width <= 3000
            assert 300 <= height <= 3000
            pixels = np.asarray(img.convert("L"))
            assert pixels.std() > 10  # something is drawn

    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# Test report\n")
    for name in PNGS:
        assert f"]({name})" in text
    assert "](metrics.json)" in text
    assert f"| AUROC | {m['auroc']:.4f} |" in text
    assert "efficientnet_lite0" in text
    assert "| fit | 1.250 |" in text


def test_write_report_without_images(tmp_path, rng):
    labels, scores = _data(rng, n=30)
    write_report(tmp_path, labels=labels, scores=scores, threshold=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ("metrics.json", "report.md", "roc.png", "pr.png", "histogram.png")
    )
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "grid.png" not in text
    assert "## Configuration" not in text


def test_write_report_rejects_bad_input(tmp_path, rng):
    labels, scores = _data(rng, n=10)
    with pytest.raises(ValueError, match="both normal and abnormal"):
        write_report(tmp_path, labels=np.ones(10), scores=scores, threshold=1.0)
    with pytest.raises(ValueError, match="images"):
        write_report(tmp_path, labels=labels, scores=scores, threshold=1.0, images=[0] * 3)
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_missing_matplotlib_message(tmp_path, rng, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    labels, scores = _data(rng, n=10)
    with pytest.raises(ImportError, match="pip install 'msde-jax\\[report\\]'") as info:
        write_report(tmp_path / "r", labels=labels, scores=scores, threshold=1.0)
    assert str(info.value) == MATPLOTLIB_MISSING
    assert not (tmp_path / "r").exists()
