"""The evaluation pipeline (embed → fit → score → metrics) with a fake embedder on tiny arrays."""

import dataclasses

import jax
import numpy as np
import pytest

from msde_jax import MSDEDetector
from msde_jax._platform import cpu_paths
from msde_jax.core import average_precision, roc_auc
from msde_jax.core.metrics import evaluation_metrics
from msde_jax.io.datasets import Dataset
from msde_jax.pipeline.evaluation import (
    TrainingCopiesWarning,
    embed,
    embed_dataset,
    evaluate,
    evaluate_embeddings,
    limit_dataset,
    training_copies,
)

DIM = 6
# One detector configuration for every test, so the jitted fit and score compile once per shape.
PARAMS = {"k": 5, "n_neighbors": 5}


class FakeEmbedder:
    """What the pipeline needs from an Embedder: ``config()``, ``embed(items)``, ``dim``."""

    backbone = "fake"
    dim = DIM

    def __init__(self):
        self.calls: list[int] = []

    def config(self) -> dict:
        return {"backbone": self.backbone, "dim": self.dim}

    def embed(self, items) -> np.ndarray:
        self.calls.append(len(items))
        return np.stack([np.asarray(item, np.float32).reshape(DIM) for item in items])


def _dataset(rng, n_train=30, n_normal=20, n_abnormal=12) -> Dataset:
    """Normal images near 0, abnormal ones shifted: 2 × 3 arrays, embedded as their pixels."""
    images = lambda n, shift: [rng.normal(size=(2, 3)) + shift for _ in range(n)]  # noqa: E731
    return Dataset(
        name="toy",
        train_normal=images(n_train, 0.0),
        test_normal=images(n_normal, 0.0),
        test_abnormal=images(n_abnormal, 4.0),
        source="memory",
    )


def test_metrics_are_those_of_the_returned_scores(rng):
    dataset = _dataset(rng)
    embedder = FakeEmbedder()
    result = evaluate(dataset, embedder, MSDEDetector(**PARAMS), progress=False)

    np.testing.assert_array_equal(result.labels, np.r_[np.zeros(20, int), np.ones(12, int)])
    assert result.scores.shape == (32,)
    assert result.threshold == result.detector.threshold_
    np.testing.assert_allclose(
        result.metrics["auroc"], float(roc_auc(result.labels, result.scores)), rtol=1e-6
    )
    np.testing.assert_allclose(
        result.metrics["average_precision"],
        float(average_precision(result.labels, result.scores)),
        rtol=1e-6,
    )
    assert result.metrics == evaluation_metrics(result.labels, result.scores, result.threshold)
    assert result.metrics["auroc"] > 0.8  # the shift is easy to see
    # The scores are the fitted detector's on the test images, normals first.
    expected = MSDEDetector(**PARAMS).fit(embedder.embed(dataset.train_normal))
    np.testing.assert_allclose(
        result.scores, expected.score_samples(embedder.embed(dataset.test_items())), rtol=1e-5
    )
    assert embedder.calls[:2] == [30, 32]  # one call for the train split, one for the test set
    assert list(result.timings) == ["embed_s", "fit_s", "score_s"]
    environment = result.config.pop("environment")  # where it ran (msde_jax._platform)
    assert environment["versions"]["jax"] == jax.__version__
    assert environment["devices"] == jax.device_count()
    assert environment["code_paths"] == ("cpu" if cpu_paths() else "accelerator")
    assert environment["host"]["cores"] >= 1
    assert result.config == {
        "dataset": "memory",
        "train_normal": 30,
        "test_normal": 20,
        "test_abnormal": 12,
        "embedder": {"backbone": "fake", "dim": DIM},
        "detector": result.detector.get_params(),
        "mode": "inductive",
        "test_mix": "38% abnormal, scored as one batch",
        "test_copies_of_training": 0,
    }
    labelled = evaluate(
        dataset, FakeEmbedder(), MSDEDetector(**PARAMS), progress=False, mode_label="custom"
    )
    assert labelled.config["mode"] == "custom"


def test_test_images_that_are_training_images_are_counted_and_warned_about(rng):
    dataset = _dataset(rng)
    leaked = dataclasses.replace(
        dataset,
        test_normal=[*dataset.test_normal[:-2], dataset.train_normal[3].copy()],
        test_abnormal=[dataset.train_normal[7], *dataset.test_abnormal[1:]],
    )
    np.testing.assert_array_equal(training_copies(leaked), [18, 19])
    assert training_copies(dataset).size == 0
    with pytest.warns(TrainingCopiesWarning, match="2 of the 31 test images are copies"):
        result = evaluate(leaked, FakeEmbedder(), MSDEDetector(**PARAMS), progress=False)
    assert result.config["test_copies_of_training"] == 2


def test_limit_applies_per_class(rng):
    dataset = _dataset(rng, n_train=30, n_normal=20, n_abnormal=8)
    embedder = FakeEmbedder()
    result = evaluate(dataset, embedder, MSDEDetector(**PARAMS), limit=10, progress=False)
    assert (result.config["train_normal"], result.config["test_normal"]) == (10, 10)
    assert result.config["test_abnormal"] == 8  # fewer than the limit: all of them
    assert embedder.calls == [10, 18]
    assert len(result.dataset.test_items()) == result.scores.size == 18
    # The first images of each class, in order.
    limited = limit_dataset(dataset, limit=10)
    assert limited.train_normal == dataset.train_normal[:10]
    assert limited.test_normal == dataset.test_normal[:10]
    assert limit_dataset(dataset) is dataset
    assert limit_dataset(dataset, limit=np.int64(10)) == limited  # NumPy's integers too


@pytest.mark.parametrize(
    ("field", "what"),
    [
        ("train_normal", "train normal"),
        ("test_normal", "test normal"),
        ("test_abnormal", "test abnormal"),
    ],
)
def test_empty_class_raises_before_embedding(rng, field, what):
    dataset = dataclasses.replace(_dataset(rng, 6, 6, 6), **{field: []})
    embedder = FakeEmbedder()
    with pytest.raises(ValueError, match=f"^toy: the {what} class is empty.$"):
        evaluate(dataset, embedder, MSDEDetector(**PARAMS), progress=False)
    with pytest.raises(ValueError, match=f"the {what} class is empty"):
        limit_dataset(dataset)
    assert embedder.calls == []


def test_embed_refuses_no_images():
    with pytest.raises(ValueError, match=r"^no images in test\.$"):
        embed(FakeEmbedder(), [], what="test")


def test_cache_dir_is_reused(tmp_path, rng, capsys):
    dataset = _dataset(rng)
    first_embedder, second_embedder = FakeEmbedder(), FakeEmbedder()
    first = evaluate(dataset, first_embedder, MSDEDetector(**PARAMS), cache_dir=tmp_path)
    assert first_embedder.calls == [30, 32]
    second = evaluate(dataset, second_embedder, MSDEDetector(**PARAMS), cache_dir=tmp_path)
    assert second_embedder.calls == []  # everything came from the cache
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.metrics == second.metrics
    err = capsys.readouterr().err
    assert "30/30 cached" in err
    assert "embedded 32 test images" in err


def test_progress_false_prints_nothing(tmp_path, rng, capsys):
    evaluate(_dataset(rng), FakeEmbedder(), MSDEDetector(**PARAMS), progress=False)
    evaluate(
        _dataset(rng), FakeEmbedder(), MSDEDetector(**PARAMS), cache_dir=tmp_path, progress=False
    )
    assert capsys.readouterr() == ("", "")


def test_one_embedding_serves_several_detectors(rng):
    dataset = _dataset(rng)
    embedder = FakeEmbedder()
    embedded = embed_dataset(dataset, embedder, progress=False)
    assert embedded.train.shape == (30, DIM)
    assert embedded.test.shape == (32, DIM)
    np.testing.assert_array_equal(embedded.labels, dataset.test_labels())
    inductive = evaluate_embeddings(embedded, MSDEDetector(**PARAMS))
    paper = evaluate_embeddings(embedded, MSDEDetector.paper(**PARAMS), mode_label="paper")
    assert embedder.calls == [30, 32]
    assert inductive.timings["embed_s"] == paper.timings["embed_s"] == embedded.embed_s
    assert paper.config["mode"] == "paper"
    assert paper.config["detector"]["mode"] == "transductive"
    direct = evaluate(dataset, FakeEmbedder(), MSDEDetector(**PARAMS), progress=False)
    np.testing.assert_array_equal(inductive.scores, direct.scores)
    # A detector without a threshold is refused with what to use ("threshold is NaN" before).
    with pytest.raises(ValueError, match="threshold='none' fits none: use threshold='cross_fit'"):
        evaluate_embeddings(embedded, MSDEDetector(**PARAMS, threshold="none"))
    counting = FakeEmbedder()  # ... and by evaluate(), before any image is embedded
    with pytest.raises(ValueError, match="threshold='none' fits none"):
        evaluate(dataset, counting, MSDEDetector(**PARAMS, threshold="none"), progress=False)
    assert counting.calls == []


def test_heatmaps_refuse_a_detector_without_maps_before_embedding(rng):
    from msde_jax.pipeline.evaluation import heatmaps

    embedder = FakeEmbedder()
    detector = MSDEDetector(**PARAMS).fit(rng.normal(size=(30, DIM)))
    with pytest.raises(ValueError, match="no spatial resolution"):
        heatmaps(embedder, detector, [np.zeros((2, 3))])
    assert embedder.calls == []


def test_heatmaps_refuse_features_of_other_items(rng):
    """Features of 3 images beside 1 item gave 1 picture and 3 maps, unnoticed until a
    report's generic count error."""
    from msde_jax import PatchBankDetector
    from msde_jax.pipeline.evaluation import heatmaps

    embedder = FakeEmbedder()
    detector = PatchBankDetector(size=20, n_folds=2).fit(rng.normal(size=(8, 4, 4, 3)))
    with pytest.raises(ValueError, match="features hold 3 rows for 1 items"):
        heatmaps(embedder, detector, [np.zeros((8, 8))], features=rng.normal(size=(3, 4, 4, 3)))
    assert embedder.calls == []


def test_evaluate_says_when_it_fits(rng, capsys):
    """Stderr stayed silent through the fit and its cross-fit folds (a minute on real data)."""
    evaluate(_dataset(rng), FakeEmbedder(), MSDEDetector(**PARAMS), progress=True)
    assert "fitting and scoring MSDEDetector(" in capsys.readouterr().err
    evaluate(_dataset(rng), FakeEmbedder(), MSDEDetector(**PARAMS), progress=False)
    assert capsys.readouterr().err == ""
