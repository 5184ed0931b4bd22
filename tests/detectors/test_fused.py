"""Fused scores: z-scores by out-of-fold statistics, their mean, the threshold, save / load."""

import json

import jax
import numpy as np
import pytest

from msde_jax import FusedDetector, MSDEDetector, NotFittedError, PatchBankDetector, load_detector
from msde_jax.core import roc_auc
from msde_jax.detectors import FusionStats, fuse_scores, fusion_stats, persistence
from msde_jax.detectors.base import Detector
from msde_jax.detectors.fitting import quantile_threshold
from msde_jax.detectors.fused import STD_FLOOR, z_scores
from msde_jax.detectors.persistence import FORMAT_VERSION, detector_class, read_npz
from msde_jax.io.datasets import Dataset
from msde_jax.pipeline.evaluation import embed_dataset, evaluate, evaluate_embeddings

N_TRAIN = 40
# Small, fast components; one configuration so the jitted parts compile once per shape.
PARAMS = {"mode": "none", "n_folds": 3, "n_components": 3}


def _components(**overrides) -> dict[str, MSDEDetector]:
    return {
        "wide": MSDEDetector(**PARAMS, **overrides),
        "narrow": MSDEDetector(**PARAMS, covariance="ledoit_wolf", **overrides),
    }


def _features(rng, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "wide": (rng.normal(size=(n, 5)) + shift).astype(np.float32),
        "narrow": (rng.normal(size=(n, 3)) * 2 + shift).astype(np.float32),
    }


@pytest.fixture
def train(rng):
    return _features(rng, N_TRAIN)


@pytest.fixture
def fitted(rng, train):
    det = FusedDetector(_components(), contamination=0.1).fit(train)
    return det, _features(rng, 12, shift=0.5)


def test_scores_are_the_mean_of_out_of_fold_z_scores(fitted):
    det, test = fitted
    oof = {name: np.asarray(c.decision_scores_, np.float64) for name, c in det.components.items()}
    mu = {name: s.mean() for name, s in oof.items()}
    sigma = {name: s.std() for name, s in oof.items()}
    z = {
        name: (np.asarray(c.score_samples(test[name]), np.float64) - mu[name]) / sigma[name]
        for name, c in det.components.items()
    }
    np.testing.assert_allclose(det.score_samples(test), (z["wide"] + z["narrow"]) / 2, rtol=1e-5)
    np.testing.assert_allclose(det.decision_function(test), det.score_samples(test))
    parts = det.component_scores(test)
    assert list(parts) == ["wide", "narrow"]
    for name in z:
        np.testing.assert_allclose(parts[name], z[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(list(det.stats_.mean.values()), list(mu.values()), rtol=1e-12)
    np.testing.assert_allclose(list(det.stats_.std.values()), list(sigma.values()), rtol=1e-12)


def test_decision_scores_are_fused_out_of_fold_and_threshold_their_quantile(fitted, train):
    det, test = fitted
    oof = {name: np.asarray(c.decision_scores_, np.float64) for name, c in det.components.items()}
    fused = np.mean([(s - s.mean()) / s.std() for s in oof.values()], axis=0)
    assert det.decision_scores_.shape == (N_TRAIN,)
    np.testing.assert_allclose(det.decision_scores_, fused, rtol=1e-5, atol=1e-6)
    assert det.threshold_ == quantile_threshold(det.decision_scores_, 0.1)
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    assert det.labels_.sum() == 3  # 40 − ⌈41 · 0.9⌉ of 40 out-of-fold scores (contamination 0.1)
    np.testing.assert_array_equal(det.predict(test), det.score_samples(test) > det.threshold_)
    # The components' out-of-fold scores, as each gives them fitted alone.
    for name, component in det.components.items():
        alone = MSDEDetector(**component.get_params()).fit(train[name])
        np.testing.assert_array_equal(component.decision_scores_, alone.decision_scores_)


def test_a_component_failing_to_refit_leaves_the_detector_unfitted(fitted, rng, tmp_path):
    """The first component refits, the second refuses: no state of the last fit may stay
    beside the refitted component (it scored, saved, and the file would not load)."""
    det, test = fitted
    det.components["narrow"].set_params(n_components=0)  # refused at fit
    with pytest.raises(ValueError, match="component 'narrow'"):
        det.fit(_features(rng, 8))
    with pytest.raises(NotFittedError):
        det.score_samples(test)
    with pytest.raises(NotFittedError):
        det.save(tmp_path / "f.npz")


def test_a_rank_refit_on_too_few_samples_changes_nothing(rng, train):
    det = FusedDetector(_components(), calibration="rank").fit(train)
    states = {name: c.state_ for name, c in det.components.items()}
    test = _features(rng, 4)
    before = det.score_samples(test)
    with pytest.raises(ValueError, match="needs at least 3 training samples"):
        det.fit(_features(rng, 2))
    assert all(c.state_ is states[name] for name, c in det.components.items())  # not refitted
    np.testing.assert_array_equal(det.score_samples(test), before)


def test_components_listed_in_another_order_save_their_own_calibration(fitted, tmp_path):
    det, test = fitted
    before = det.score_samples(test)
    det.set_params(components=dict(reversed(list(det.components.items()))))  # the same ones
    np.testing.assert_array_equal(det.score_samples(test), before)
    det.save(tmp_path / "f.npz")
    np.testing.assert_allclose(FusedDetector.load(tmp_path / "f.npz").score_samples(test), before)


def test_fit_predict_returns_labels(rng):
    det = FusedDetector(_components())
    np.testing.assert_array_equal(det.fit_predict(_features(rng, N_TRAIN)), det.labels_)


def test_fusion_ranks_better_than_the_noise_component(rng):
    def split(n_normal, n_abnormal):
        signal = np.r_[rng.normal(size=(n_normal, 4)), rng.normal(size=(n_abnormal, 4)) + 2.5]
        noise = rng.normal(size=(n_normal + n_abnormal, 4))  # says nothing about the labels
        return {"signal": signal.astype(np.float32), "noise": noise.astype(np.float32)}

    components = {"signal": MSDEDetector(**PARAMS), "noise": MSDEDetector(**PARAMS)}
    det = FusedDetector(components).fit(split(N_TRAIN, 0))
    test = split(30, 30)
    labels = np.r_[np.zeros(30), np.ones(30)]
    fused = float(roc_auc(labels, det.score_samples(test)))
    noise = float(roc_auc(labels, det.components["noise"].score_samples(test["noise"])))
    assert noise < 0.72
    assert fused > 0.9
    assert fused > noise + 0.2


def test_one_sample_alone_scores_as_in_a_batch(rng, fitted):
    """Bit for bit, as the README says: z-scores divided by σ rounded apart for one row on a
    CPU (24 of 64 rows differed by an ulp), and a score at threshold_ could change its label."""
    det, _ = fitted
    test = _features(rng, 64, shift=0.5)
    batch = det.score_samples(test)
    for i in range(64):
        alone = det.score_samples({name: x[i : i + 1] for name, x in test.items()})
        np.testing.assert_array_equal(alone, batch[i : i + 1])


def test_features_are_matched_by_name_not_order(fitted):
    det, test = fitted
    reordered = {"narrow": test["narrow"], "wide": test["wide"]}
    np.testing.assert_array_equal(det.score_samples(reordered), det.score_samples(test))


# ---------------------------------------------------------------------- the functional form
def test_fuse_scores_jit_equals_eager():
    scores = {"a": np.array([1.0, 2.0, 4.0]), "b": np.array([0.0, -1.0, 3.0])}
    stats = FusionStats({"a": 2.0, "b": 1.0}, {"a": 0.5, "b": 2.0})
    expected = ((scores["a"] - 2.0) / 0.5 + (scores["b"] - 1.0) / 2.0) / 2
    np.testing.assert_allclose(fuse_scores(scores, stats), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fuse_scores)(scores, stats), expected, rtol=1e-6)
    z = z_scores(scores, stats)
    np.testing.assert_allclose(z["b"], (scores["b"] - 1.0) / 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="scores are for components"):
        fuse_scores({"a": scores["a"]}, stats)


def test_fusion_stats_floors_the_std():
    stats = fusion_stats({"flat": np.full(5, 3.0), "zero": np.zeros(4), "var": np.arange(4.0)})
    assert stats.mean == {"flat": 3.0, "zero": 0.0, "var": 1.5}
    assert stats.std["flat"] == pytest.approx(3 * STD_FLOOR)
    assert stats.std["zero"] == STD_FLOOR
    assert stats.std["var"] == pytest.approx(np.std(np.arange(4.0)))
    with pytest.raises(ValueError, match="at least one"):
        fusion_stats({})
    with pytest.raises(ValueError, match="'bad': out-of-fold scores must be a finite 1-D"):
        fusion_stats({"bad": np.array([1.0, np.nan])})


# ---------------------------------------------------------------------- errors
def test_features_must_match_the_components(fitted, rng):
    det, test = fitted
    with pytest.raises(ValueError, match=r"missing features for 'narrow'\.$"):
        det.score_samples({"wide": test["wide"]})
    with pytest.raises(ValueError, match=r"features for unknown components 'extra'\.$"):
        det.score_samples({**test, "extra": test["wide"]})
    with pytest.raises(ValueError, match="missing features for 'narrow'; features for unknown"):
        det.score_samples({"wide": test["wide"], "other": test["wide"]})
    with pytest.raises(ValueError, match=r"same number of rows: wide: 12, narrow: 11\.$"):
        det.score_samples({"wide": test["wide"], "narrow": test["narrow"][:11]})
    with pytest.raises(TypeError, match="takes a mapping"):
        det.score_samples(test["wide"])
    with pytest.raises(ValueError, match="same number of rows"):
        FusedDetector(_components()).fit(
            {"wide": test["wide"], "narrow": _features(rng, 13)["narrow"]}
        )


@pytest.mark.parametrize("threshold", ["chi2", "none"])
def test_components_must_cross_fit(threshold):
    components = {"a": MSDEDetector(**PARAMS), "b": MSDEDetector(mode="none", threshold=threshold)}
    with pytest.raises(
        ValueError, match=rf"'b' \(MSDEDetector\) has threshold='{threshold}'.*cross"
    ):
        FusedDetector(components).fit({"a": np.zeros((10, 2)), "b": np.zeros((10, 2))})


def test_component_checks():
    x = {"a": np.zeros((10, 2)), "b": np.zeros((10, 2))}
    same = MSDEDetector(**PARAMS)
    with pytest.raises(ValueError, match="same detector object"):
        FusedDetector({"a": same, "b": same}).fit(x)
    with pytest.raises(ValueError, match="at least one component"):
        FusedDetector({}).fit({})
    with pytest.raises(ValueError, match="without '/'"):
        FusedDetector({"a/b": MSDEDetector(**PARAMS)}).fit({"a/b": x["a"]})
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0.5\]"):
        FusedDetector(_components(), contamination=0.7).fit(x)
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0.5\], got True"):
        FusedDetector(_components(), contamination=True).fit(x)
    with pytest.raises(NotFittedError, match="not fitted"):
        FusedDetector(_components()).score_samples(x)
    # components of the wrong kind: repr and get_params show them (they raised), fit refuses
    wrong = FusedDetector([MSDEDetector(**PARAMS)])
    assert repr(wrong) == f"FusedDetector([{MSDEDetector(**PARAMS)!r}])"
    assert wrong.get_params()["components"] == wrong.components
    with pytest.raises(TypeError, match="components must be a mapping"):
        wrong.fit(x)


def test_params_and_repr():
    # a NumPy float is a number (was refused, "must be in (0, 0.5], got np.float32(0.1)")
    assert FusedDetector(_components(), contamination=np.float32(0.1)).config()["contamination"] > 0
    det = FusedDetector(_components(), contamination=0.1)
    params = det.get_params()
    assert params["contamination"] == 0.1
    assert params["wide__n_folds"] == 3
    assert params["narrow__covariance"] == "ledoit_wolf"
    assert set(det.get_params(deep=False)) == {"components", "contamination", "calibration"}
    assert det.set_params(wide__ridge=0.5, contamination=0.2) is det
    assert det.components["wide"].ridge == 0.5
    assert det.contamination == 0.2
    with pytest.raises(ValueError, match="Unknown parameter 'other__k'"):
        det.set_params(other__k=3)
    with pytest.raises(ValueError, match="Unknown parameter 'k'"):
        det.set_params(k=3)
    assert repr(det).startswith("FusedDetector({'wide': MSDEDetector(")
    assert repr(det).endswith(", contamination=0.2)")
    assert "contamination" not in repr(FusedDetector({"a": MSDEDetector()}))
    # new components and their parameters in one call, as scikit-learn's Pipeline takes them
    det.set_params(components={"x": MSDEDetector(**PARAMS)}, x__k=5)
    assert list(det.components) == ["x"]
    assert det.components["x"].k == 5


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(fitted, tmp_path):
    det, test = fitted
    path = tmp_path / "fused.npz"
    det.save(path, metadata={"embedders": {"wide": "a", "narrow": "b"}})
    loaded = FusedDetector.load(path)
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
    np.testing.assert_array_equal(loaded.decision_scores_, det.decision_scores_)
    assert loaded.threshold_ == det.threshold_
    assert loaded.stats_ == det.stats_
    assert loaded.metadata_ == {"embedders": {"wide": "a", "narrow": "b"}}
    assert list(loaded.components) == ["wide", "narrow"]
    assert all(type(c) is MSDEDetector for c in loaded.components.values())
    assert loaded.get_params(deep=False)["contamination"] == 0.1
    for name in test:
        np.testing.assert_array_equal(
            loaded.component_scores(test)[name], det.component_scores(test)[name]
        )
    # One file, components' arrays prefixed by their names.
    with np.load(path) as data:
        files = set(data.files)
    assert {"meta", "fusion.mean", "fusion.std", "decision_scores_"} <= files
    assert any(f.startswith("wide/") for f in files)
    assert any(f.startswith("narrow/") for f in files)


def test_load_detector_dispatches_to_fused(fitted, tmp_path):
    det, test = fitted
    det.save(tmp_path / "fused.npz")
    loaded = load_detector(tmp_path / "fused.npz")
    assert type(loaded) is FusedDetector
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))


def test_pooled_gaussian_and_patch_bank_fuse_and_round_trip(rng, tmp_path):
    def split(n, shift=0.0):
        return {
            "pooled": (rng.normal(size=(n, 4)) + shift).astype(np.float32),
            "patches": (rng.normal(size=(n, 3, 3, 4)) + shift).astype(np.float32),
        }

    components = {
        "pooled": MSDEDetector(**PARAMS, covariance="ledoit_wolf"),
        "patches": PatchBankDetector(size=40, projection_dim=None, n_folds=3),
    }
    det = FusedDetector(components).fit(split(20))
    normal, abnormal = split(6), split(6, 3.0)
    test = {name: np.r_[normal[name], abnormal[name]] for name in normal}
    scores = det.score_samples(test)
    assert scores.shape == (12,)
    assert float(roc_auc(np.r_[np.zeros(6), np.ones(6)], scores)) > 0.9
    det.save(tmp_path / "mixed.npz")
    loaded = FusedDetector.load(tmp_path / "mixed.npz")
    assert [type(c) for c in loaded.components.values()] == [MSDEDetector, PatchBankDetector]
    np.testing.assert_array_equal(loaded.score_samples(test), scores)
    # Heatmaps: the patch component's, from the mapping or from its features alone.
    assert det.has_maps
    assert det.maps_component == "patches"
    want = det.components["patches"].score_maps(test["patches"], size=12)
    np.testing.assert_array_equal(det.score_maps(test, size=12), want)
    np.testing.assert_array_equal(loaded.score_maps(test["patches"], size=12), want)
    assert not FusedDetector({"a": MSDEDetector(**PARAMS)}).has_maps


def test_load_refuses_other_versions(fitted, tmp_path):
    det, _ = fitted
    path = tmp_path / "fused.npz"
    det.save(path)
    meta, arrays = read_npz(path)
    assert meta["format_version"] == FORMAT_VERSION
    assert "fusion_format_version" not in meta  # one version key, the detectors'
    # Every component carries its format version, checked when it is rebuilt.
    assert [r["meta"]["format_version"] for r in meta["components"]] == [FORMAT_VERSION] * 2
    old = json.loads(json.dumps(meta))
    old["components"][1]["meta"]["format_version"] = 1
    with pytest.raises(
        ValueError, match=r"component 'narrow' of the saved FusedDetector has format version 1"
    ):
        FusedDetector.from_arrays(old, arrays)
    del old["components"][1]["meta"]["format_version"]
    with pytest.raises(ValueError, match="component 'narrow' .* format version None"):
        FusedDetector.from_arrays(old, arrays)
    np.savez(path, meta=np.array(json.dumps({**meta, "format_version": 1})), **arrays)
    for load in (FusedDetector.load, load_detector):
        with pytest.raises(ValueError, match="fused.npz has format version 1"):
            load(path)


def test_load_refuses_what_is_not_a_fused_detector(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, meta=np.array(json.dumps({"class": "MSDEDetector"})))
    with pytest.raises(ValueError, match="holds a MSDEDetector, not a FusedDetector"):
        FusedDetector.load(path)
    np.savez(path, x=np.zeros(2))
    with pytest.raises(ValueError, match="no 'meta' entry"):
        FusedDetector.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a saved FusedDetector"):
        FusedDetector.load(tmp_path / "junk.npz")
    # JSON nested past Python's recursion limit: the file's error (a RecursionError before).
    np.savez(path, meta=np.array("[" * 100_000))
    with pytest.raises(ValueError, match="other.npz is not a saved FusedDetector: its 'meta' is"):
        FusedDetector.load(path)


def test_classes_are_looked_up_by_name_only(fitted, tmp_path, monkeypatch):
    det, test = fitted
    meta, arrays = det.to_arrays()
    known = r"\(known: FusedDetector, MSDEDetector, PatchBankDetector\)"
    for name in ("system", "fusion_stats", "Detector"):
        foreign = json.loads(json.dumps(meta))
        foreign["components"][0]["meta"]["detector"] = name
        foreign["components"][0]["meta"]["module"] = "os"  # never read
        with pytest.raises(
            ValueError,
            match=rf"component 'wide' of the saved FusedDetector holds a '{name}', which is not "
            rf"a detector of this msde_jax {known}",
        ):
            FusedDetector.from_arrays(foreign, arrays)
    with pytest.raises(ValueError, match="no list of {name, meta} components"):
        FusedDetector.from_arrays({**meta, "components": [{"name": "wide"}]}, arrays)
    path = tmp_path / "other.npz"
    np.savez(path, meta=np.array(json.dumps({"detector": "os", "module": "os"})))
    with pytest.raises(ValueError, match=rf"holds a 'os', which is not a detector .*{known}"):
        load_detector(path)
    # A fused file is read once: load_detector rebuilds it from the (meta, arrays) it read.
    det.save(path)
    reads = []
    real_load = persistence.load_npz
    monkeypatch.setattr(
        persistence, "load_npz", lambda *a, **k: reads.append(a) or real_load(*a, **k)
    )
    loaded = load_detector(path)
    assert len(reads) == 1
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))


def test_fused_detector_goes_through_the_detector_base(fitted):
    det, test = fitted
    assert isinstance(det, Detector)
    assert detector_class("FusedDetector", "test") is FusedDetector
    assert det.stats_ is det.state_
    assert FusedDetector.predict is Detector.predict
    assert FusedDetector.fit_predict is Detector.fit_predict
    assert FusedDetector.decision_function is Detector.decision_function
    assert FusedDetector.save is Detector.save
    assert FusedDetector.load.__func__ is Detector.load.__func__
    with pytest.raises(NotFittedError, match="This FusedDetector is not fitted yet"):
        FusedDetector(_components()).stats_  # noqa: B018
    with pytest.raises(NotFittedError, match="This FusedDetector is not fitted yet"):
        FusedDetector(_components()).to_arrays()
    meta, _ = det.to_arrays()
    assert meta["params"] == {"contamination": 0.1}
    assert [r["name"] for r in meta["components"]] == ["wide", "narrow"]
    assert meta["components"][0]["meta"]["detector"] == "MSDEDetector"


def test_predict_refuses_a_stale_threshold(fitted, tmp_path):
    det, test = fitted
    expected = det.predict(test)
    # A component's score-time parameter changed after fit: the fused stats and threshold_
    # are on the scale of its fitted score.
    det.set_params(wide__score="knn")
    with pytest.raises(
        ValueError,
        match=r"threshold_ was computed for wide__score='mahalanobis', but the detector now "
        r"scores with wide__score='knn'; refit, or set wide__score back",
    ):
        det.predict(test)
    with pytest.raises(ValueError, match=r"calibration was computed for wide__score='mahal"):
        det.score_samples(test)  # its z-scores are on the fitted score's scale too
    det.set_params(wide__score="mahalanobis", wide__batch_size=7)  # batch_size: neutral
    np.testing.assert_array_equal(det.predict(test), expected)
    det.save(tmp_path / "ok.npz")
    # Saved parameters are the fit-time ones: a changed one is refused, naming the component.
    det.set_params(narrow__ridge=0.5)
    with pytest.raises(ValueError, match=r"component 'narrow': This MSDEDetector was fitted with"):
        det.save(tmp_path / "stale.npz")
    det.set_params(narrow__ridge=1e-4, contamination=0.3)
    with pytest.raises(ValueError, match=r"fitted with contamination=0\.1, but .* now say"):
        det.to_arrays()
    det.set_params(contamination=0.1)
    det.components["wide"] = MSDEDetector(**PARAMS).fit(test["wide"])
    with pytest.raises(ValueError, match="fitted with components="):
        det.to_arrays()


def test_a_component_refitted_alone_is_refused_and_a_refit_drops_loaded_metadata(
    fitted, rng, tmp_path
):
    """The fused calibration and threshold_ are on the scores of the components as fitted
    with it: one refitted on its own would be scored on the old statistics."""
    det, test = fitted
    det.save(tmp_path / "f.npz", metadata={"embedders": "the old ones"})
    loaded = load_detector(tmp_path / "f.npz")
    np.testing.assert_allclose(loaded.score_samples(test), det.score_samples(test), rtol=1e-6)
    loaded.components["wide"].fit(test["wide"] * 10)
    for act in (loaded.score_samples, loaded.predict):
        with pytest.raises(ValueError, match=r"component 'wide' was refitted or replaced"):
            act(test)
    with pytest.raises(ValueError, match=r"component 'wide' was refitted or replaced"):
        loaded.save(tmp_path / "stale.npz")
    # replaced by an unfitted one: predict failed on its missing state_ (AttributeError)
    unfitted = load_detector(tmp_path / "f.npz")
    unfitted.set_params(components={**unfitted.components, "wide": MSDEDetector(**PARAMS)})
    for act in (unfitted.score_samples, unfitted.predict):
        with pytest.raises(ValueError, match=r"component 'wide' was refitted or replaced"):
            act(test)
    loaded.fit(_features(rng, N_TRAIN))  # the whole detector again: fine, and new
    assert not hasattr(loaded, "metadata_")
    loaded.save(tmp_path / "new.npz")
    assert load_detector(tmp_path / "new.npz").metadata_ == {}
    # "__" joins a component's name to its parameter: not in a name.
    with pytest.raises(ValueError, match="without '/' or '__'"):
        FusedDetector({"x__y": MSDEDetector(**PARAMS)}).fit({"x__y": test["wide"]})


# ---------------------------------------------------------------------- evaluation
class FakeEmbedder:
    """What the pipeline needs from an Embedder: ``config()``, ``embed(items)``, ``backbone``."""

    def __init__(self, backbone: str, columns: slice):
        self.backbone = backbone
        self.columns = columns
        self.calls: list[int] = []

    def config(self) -> dict:
        return {"backbone": self.backbone, "columns": str(self.columns)}

    def embed(self, items) -> np.ndarray:
        self.calls.append(len(items))
        return np.stack([np.asarray(item, np.float32).reshape(-1)[self.columns] for item in items])


def _dataset(rng) -> Dataset:
    images = lambda n, shift: [rng.normal(size=(2, 4)) + shift for _ in range(n)]  # noqa: E731
    return Dataset(
        name="toy",
        train_normal=images(N_TRAIN, 0.0),
        test_normal=images(10, 0.0),
        test_abnormal=images(8, 3.0),
        source="memory",
    )


def _embedders() -> dict[str, FakeEmbedder]:
    return {"wide": FakeEmbedder("first", slice(0, 5)), "narrow": FakeEmbedder("last", slice(5, 8))}


def test_evaluate_with_a_mapping_of_embedders(rng, tmp_path):
    dataset = _dataset(rng)
    embedders = _embedders()
    result = evaluate(
        dataset, embedders, FusedDetector(_components()), cache_dir=tmp_path, progress=False
    )
    assert [e.calls for e in embedders.values()] == [[N_TRAIN, 18], [N_TRAIN, 18]]
    assert result.scores.shape == (18,)
    assert result.metrics["auroc"] > 0.9
    assert result.threshold == result.detector.threshold_
    assert result.config["embedder"] == {
        "wide": {"backbone": "first", "columns": "slice(0, 5, None)"},
        "narrow": {"backbone": "last", "columns": "slice(5, 8, None)"},
    }
    assert result.config["mode"] == "fused (wide: none, narrow: none)"
    detector_config = result.config["detector"]
    assert detector_config["contamination"] == 0.05
    assert detector_config["components"]["narrow"]["class"] == "MSDEDetector"
    assert detector_config["components"]["narrow"]["covariance"] == "ledoit_wolf"
    json.dumps(result.config)
    # The same as fitting the fused detector on each embedder's features by hand.
    features = lambda items: {n: e.embed(items) for n, e in _embedders().items()}  # noqa: E731
    direct = FusedDetector(_components()).fit(features(dataset.train_normal))
    np.testing.assert_allclose(
        result.scores, direct.score_samples(features(dataset.test_items())), rtol=1e-5
    )
    # Each embedder cached under its own config: a second run embeds nothing.
    again = _embedders()
    second = evaluate(
        dataset, again, FusedDetector(_components()), cache_dir=tmp_path, progress=False
    )
    assert [e.calls for e in again.values()] == [[], []]
    np.testing.assert_array_equal(second.scores, result.scores)


def test_embed_dataset_with_a_mapping_gives_dicts(rng):
    embedded = embed_dataset(_dataset(rng), _embedders(), progress=False)
    assert list(embedded.train) == list(embedded.test) == ["wide", "narrow"]
    assert embedded.train["wide"].shape == (N_TRAIN, 5)
    assert embedded.test["narrow"].shape == (18, 3)
    with pytest.raises(ValueError, match="needs a FusedDetector"):
        evaluate_embeddings(embedded, MSDEDetector(**PARAMS))


def test_embedders_and_detector_must_pair_up_before_embedding(rng):
    dataset = _dataset(rng)
    embedders = _embedders()
    with pytest.raises(ValueError, match="a mapping of embedders needs a FusedDetector"):
        evaluate(dataset, embedders, MSDEDetector(**PARAMS), progress=False)
    with pytest.raises(ValueError, match="one embedder per component"):
        evaluate(dataset, embedders["wide"], FusedDetector(_components()), progress=False)
    components = {"wide": MSDEDetector(**PARAMS), "other": MSDEDetector(**PARAMS)}
    with pytest.raises(ValueError, match="use the same names"):
        evaluate(dataset, embedders, FusedDetector(components), progress=False)
    with pytest.raises(ValueError, match="mapping of embedders is empty"):
        evaluate(dataset, {}, FusedDetector({}), progress=False)
    assert [e.calls for e in embedders.values()] == [[], []]
