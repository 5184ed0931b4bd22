"""The evaluation report: the files it writes (its numbers: tests/core/test_metrics.py)."""

import json

import numpy as np
import pytest
from PIL import Image
from testing import hide_matplotlib, labelled_scores

from msde_jax.core.metrics import evaluation_metrics
from msde_jax.pipeline.report import FILES, MATPLOTLIB_MISSING, overlay_indices, write_report

PNGS = ("roc.png", "pr.png", "histogram.png", "grid.png")


def _images(rng, n):
    """Small random images in every form to_float reads: gray, RGB, uint8, float."""
    images = []
    for i in range(n):
        img = rng.random((12 + i % 3, 10, 3) if i % 2 else (12, 12)).astype(np.float32)
        images.append((img * 255).astype(np.uint8) if i % 3 == 0 else img)
    return images


def test_write_report(tmp_path, rng):
    labels, scores = labelled_scores(rng, n=40)
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
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ("metrics.json", "report.md", "report.html", *PNGS)
    )

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
    labels, scores = labelled_scores(rng, n=30)
    # A folder used again: an earlier report's grid and overlays are not left beside this one.
    for name in ("grid.png", "overlays.png"):
        (tmp_path / name).write_bytes(b"an earlier report's figure")
    write_report(tmp_path, labels=labels, scores=scores, threshold=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ("metrics.json", "report.md", "report.html", "roc.png", "pr.png", "histogram.png")
    )
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "grid.png" not in text
    assert "## Configuration" not in text


def test_write_report_rejects_bad_input(tmp_path, rng):
    labels, scores = labelled_scores(rng, n=10)
    with pytest.raises(ValueError, match="both normal and abnormal"):
        write_report(tmp_path, labels=np.ones(10), scores=scores, threshold=1.0)
    with pytest.raises(ValueError, match="images"):
        write_report(tmp_path, labels=labels, scores=scores, threshold=1.0, images=[0] * 3)
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_missing_matplotlib_message(tmp_path, rng, monkeypatch):

    hide_matplotlib(monkeypatch)
    labels, scores = labelled_scores(rng, n=10)
    with pytest.raises(ImportError, match="pip install matplotlib") as info:
        write_report(tmp_path / "r", labels=labels, scores=scores, threshold=1.0)
    assert str(info.value) == MATPLOTLIB_MISSING
    assert not (tmp_path / "r").exists()


def test_overlays_and_a_self_contained_html_page(tmp_path, rng):
    import base64
    import io

    labels, scores = labelled_scores(rng, n=20)
    shown = overlay_indices(scores)
    order = np.argsort(scores)
    assert shown.tolist() == [*order[::-1][:4].tolist(), *order[:4].tolist()]
    heatmaps = {int(i): (rng.random((32, 32, 3)), rng.random((32, 32)) * scores[i]) for i in shown}
    with pytest.raises(ValueError, match="heatmaps must hold the test images"):
        write_report(
            tmp_path / "bad",
            labels=labels,
            scores=scores,
            threshold=2.0,
            heatmaps=dict(list(heatmaps.items())[:3]),
        )
    write_report(
        tmp_path,
        labels=labels,
        scores=scores,
        threshold=2.0,
        heatmaps=heatmaps,
        config={"a|b": "`x`"},
    )
    assert set(FILES) - {p.name for p in tmp_path.iterdir()} == {"grid.png"}  # no images
    with Image.open(tmp_path / "overlays.png") as img:
        assert np.asarray(img.convert("L")).std() > 10
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "](overlays.png)" in text
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="overlays.png"' not in page
    assert "](" not in page
    embedded = page.split('src="data:image/png;base64,')[1:]
    assert len(embedded) == text.count("![")  # every figure of report.md, inside the page
    first = base64.b64decode(embedded[0].split('"', 1)[0])
    assert first == (tmp_path / "roc.png").read_bytes()
    with Image.open(io.BytesIO(first)) as img:
        assert img.format == "PNG"
    assert f"<td>AUROC</td><td>{evaluation_metrics(labels, scores, 2.0)['auroc']:.4f}</td>" in page


def test_binomial_quantile_equals_scipy_stats():
    from scipy.stats import binom

    from msde_jax.pipeline.evaluation import _binomial_quantile

    for n in (1, 2, 7, 47, 234, 300, 5000):  # the two tails the promise uses
        for p in (0.001, 0.05, 0.2, 0.5, 0.99):
            for q in (0.025, 0.975):
                assert _binomial_quantile(q, n, p) == binom.ppf(q, n, p), (q, n, p)


def test_threshold_promise_kept_or_not_and_said_in_the_report(tmp_path):
    from msde_jax.pipeline.evaluation import threshold_promise

    kept = threshold_promise(fp=14, n_normal=300, contamination=0.05)  # 4.7 % of 300
    assert kept["kept"]
    lo, hi = kept["expected_interval"]
    assert lo < 0.05 < hi
    assert hi - lo < 0.06
    high = threshold_promise(fp=56, n_normal=234, contamination=0.05)  # 24 %: a shift
    assert not high["kept"]
    assert "score higher" in high["text"]
    assert "score lower" in threshold_promise(0, 300, 0.05)["text"]
    with pytest.raises(ValueError, match="rule must be 'cross_fit' or 'chi2'"):
        threshold_promise(0, 0, 0.05, rule="none")  # the rule first, whatever the counts
    with pytest.raises(ValueError, match="n_normal must be at least 1"):
        threshold_promise(0, 0, 0.05)

    labels = np.r_[np.zeros(100), np.ones(50)]
    scores = np.r_[np.linspace(0, 1, 100), np.linspace(2, 3, 50)]
    config = {"detector": {"contamination": 0.05}}
    write_report(tmp_path / "r", labels=labels, scores=scores, threshold=0.5, config=config)
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["threshold_promise"]["false_positive_rate"] == pytest.approx(0.5)
    assert not record["threshold_promise"]["kept"]
    assert "Not kept" in (tmp_path / "r" / "report.md").read_text()
    write_report(tmp_path / "s", labels=labels, scores=scores, threshold=0.5)  # no config
    assert "threshold_promise" not in json.loads((tmp_path / "s" / "metrics.json").read_text())
    # Each rule says what its threshold is; threshold="none" promises nothing.
    chi2 = {"detector": {"contamination": 0.05, "threshold": "chi2"}}
    write_report(tmp_path / "c", labels=labels, scores=scores, threshold=0.5, config=chi2)
    text = json.loads((tmp_path / "c" / "metrics.json").read_text())["threshold_promise"]["text"]
    assert "χ² law" in text
    assert "out-of-fold" not in text
    assert "Gaussian does not describe" in text  # why a χ² promise may fail
    none = {"detector": {"contamination": 0.05, "threshold": "none"}}
    write_report(tmp_path / "n", labels=labels, scores=scores, threshold=0.5, config=none)
    assert "threshold_promise" not in json.loads((tmp_path / "n" / "metrics.json").read_text())
    # A transductive score depends on its batch, which a missed promise names too.
    paper = {"detector": {"contamination": 0.05, "mode": "transductive"}}
    write_report(tmp_path / "t", labels=labels, scores=scores, threshold=0.5, config=paper)
    text = json.loads((tmp_path / "t" / "metrics.json").read_text())["threshold_promise"]["text"]
    assert "depend on the test batch" in text
    assert "depend on the test batch" not in threshold_promise(56, 234, 0.05)["text"]


def test_a_volume_report_says_slices_are_not_independent_and_when_no_volume_threshold(tmp_path):
    """The promise's binomial interval counted 18 slices of 3 volumes as 18 independent
    normals; and the volume section described a quantile threshold beside 'not available'."""
    labels = np.r_[np.zeros(100), np.ones(50)]
    scores = np.r_[np.linspace(0, 1, 100), np.linspace(2, 3, 50)]
    config = {"detector": {"contamination": 0.05}}
    quantile = "The volume threshold is the 1 − contamination quantile"
    for name, threshold in (("none", None), ("set", 2.5)):
        volumes = {"aggregate": "mean of the top slices", "auroc": 1.0, "threshold": threshold}
        out = tmp_path / name
        write_report(
            out, labels=labels, scores=scores, threshold=0.5, config=config, volume_metrics=volumes
        )
        record = json.loads((out / "metrics.json").read_text())
        assert "slices of one volume are not independent" in record["threshold_promise"]["text"]
        report = (out / "report.md").read_text()
        assert (quantile in report) == (threshold is not None)
        assert ("There is no volume threshold" in report) == (threshold is None)


def test_report_of_odd_names_and_free_form_config(tmp_path, rng):
    labels, scores = labelled_scores(rng, n=20)
    images = [rng.random((8, 8)) for _ in range(20)]
    names = [f"scan_{i}$^$.png" for i in range(20)]  # "$" is not matplotlib's math here
    config = {
        "detector": "PatchBankDetector(k=5)",  # free-form, not evaluate()'s record
        "dataset": "data|v2",
        "a|b": 1,
    }
    write_report(
        tmp_path, labels=labels, scores=scores, threshold=2.0, images=images, names=names,
        title="brain $x_{1", config=config,
    )  # fmt: skip
    assert set(FILES) - {p.name for p in tmp_path.iterdir()} == {"overlays.png"}
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<tr><td>dataset</td><td><code>data|v2</code></td></tr>" in page  # one cell
    assert "<tr><td>a|b</td><td><code>1</code></td></tr>" in page
    assert "<h1>brain $x_{1</h1>" in page
    # Another threshold rule than the two whose promise is checked: no promise, no error.
    other = {"detector": {"contamination": 0.05, "threshold": "quantile"}}
    write_report(tmp_path / "q", labels=labels, scores=scores, threshold=2.0, config=other)
    assert "threshold_promise" not in json.loads((tmp_path / "q" / "metrics.json").read_text())


def test_the_promise_in_words_and_bold_in_the_page(tmp_path):
    from msde_jax.pipeline.evaluation import threshold_promise

    text = threshold_promise(fp=1, n_normal=200, contamination=0.005)["text"]
    assert "the 99.5 % quantile" in text
    assert "about 0.5 % of new normals" in text
    labels = np.r_[np.zeros(100), np.ones(50)]
    scores = np.r_[np.linspace(0, 1, 100), np.linspace(2, 3, 50)]
    config = {"detector": {"contamination": 0.025}}
    write_report(tmp_path, labels=labels, scores=scores, threshold=0.5, config=config)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "the 97.5 % quantile" in page
    assert "<strong>Not kept</strong>" in page
    assert "**" not in page


def test_a_report_that_fails_part_way_leaves_the_earlier_one(tmp_path, rng):
    """The earlier report's files were removed and a fresh metrics.json and three curves
    written before a grid image failed to read: a folder with no report.md at all."""
    labels, scores = labelled_scores(rng, n=20)
    write_report(tmp_path, labels=labels, scores=scores, threshold=2.0, title="first")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    images = [rng.random((8, 8)) for _ in range(20)]
    images[int(np.argmax(scores))] = np.full((8, 8), 3.0)  # shown in the grid, unreadable
    with pytest.raises(ValueError, match="must lie in"):
        write_report(
            tmp_path, labels=labels, scores=scores, threshold=1.0, images=images, title="second"
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging left


def test_tied_scores_do_not_look_separated(tmp_path, rng):
    """Ties went by position: a detector giving every image one score (AUROC 0.5) showed
    abnormal images as the most anomalous and normals as the least, normals coming first."""
    from msde_jax.pipeline.report_figures import ranked

    labels = np.r_[np.zeros(10, bool), np.ones(10, bool)]
    scores = np.ones(20)
    most, least = ranked(scores, labels, 8)
    assert not labels[most].any()
    assert labels[least].all()
    assert overlay_indices(scores, labels=labels).tolist() == [*most[:4], *least[:4]]
    # A class too small to fill its row: the rows still never share an image.
    labels = np.r_[np.zeros(3, bool), np.ones(1, bool)]
    most, least = ranked(np.ones(4), labels, 8)
    assert most.tolist() == [0, 1]
    assert least.tolist() == [3, 2]
    # The grid's captions count what the figures hold: 2 and 2 of 4 test images.
    write_report(
        tmp_path,
        labels=labels,
        scores=np.arange(4.0),
        threshold=1.0,
        images=[0.5 * np.ones((8, 8))] * 4,
    )
    assert (
        "![The 2 most and 2 least anomalous test images](grid.png)"
        in (tmp_path / "report.md").read_text()
    )


def test_the_page_shows_values_as_written(tmp_path, rng):
    """Link syntax inside a code span was taken out ("brain[2](T1)" became "brain2"); a line
    break in a value cut the table, and a line starting "![" was read as a file to embed."""
    labels, scores = labelled_scores(rng, n=10)
    config = {
        "dataset": "/data/brain[2](T1)/scans",
        "note": "site A\nsite B\u2028and C",
        "trap": "x\n![e](missing.png)",
        "ridge": 1e-05,
        "contamination": 0.05,
    }
    write_report(tmp_path, labels=labels, scores=scores, threshold=1.0, config=config)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<td>dataset</td><td><code>/data/brain[2](T1)/scans</code></td>" in page
    assert "<td>note</td><td><code>site A site B and C</code></td>" in page
    assert "<td>trap</td><td><code>x ![e](missing.png)</code></td>" in page
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| ridge | `1e-05` |" in text
    assert "| contamination | `0.05` |" in text
    assert "all numbers are also in metrics.json" in page.lower().replace("<code>", "").replace(
        "</code>", ""
    )


def test_normals_from_volumes_without_volume_metrics_say_so(tmp_path):
    """Volumes among the test normals only (abnormal 2-D images): no volume metrics, and the
    slices were counted as independent normals without a word."""
    labels = np.r_[np.zeros(100), np.ones(50)]
    scores = np.r_[np.linspace(0, 1, 100), np.linspace(2, 3, 50)]
    config = {"detector": {"contamination": 0.05}}
    for flag in (False, True):
        write_report(
            tmp_path / str(flag), labels=labels, scores=scores, threshold=0.5, config=config,
            normals_from_volumes=flag,
        )  # fmt: skip
        record = json.loads((tmp_path / str(flag) / "metrics.json").read_text())
        text = record["threshold_promise"]["text"]
        assert ("slices of one volume are not independent" in text) == flag
        assert "volume-level metrics below" not in text
