"""The detectors inside scikit-learn: Pipeline, clone, GridSearchCV and cross_val_score with
one-class folds, tags, and which of check_estimator's checks pass (README "scikit-learn")."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import make_scorer, roc_auc_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_estimator

from msde_jax import FusedDetector, MSDEDetector, PatchBankDetector
from msde_jax.detectors import one_class_splits

AUROC = make_scorer(roc_auc_score, response_method="decision_function")


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = np.zeros(90, int)
    y[::9] = 1
    x[y == 1] += 3.0
    return x, y


def test_pipeline_fits_and_scores(labelled):
    x, y = labelled
    pipe = make_pipeline(StandardScaler(), MSDEDetector(mode="none", covariance="oas"))
    pipe.fit(x[y == 0])
    alone = MSDEDetector(mode="none", covariance="oas").fit(
        StandardScaler().fit_transform(x[y == 0])
    )
    scaled = StandardScaler().fit(x[y == 0]).transform(x)
    np.testing.assert_allclose(pipe.score_samples(x), alone.score_samples(scaled), rtol=1e-5)
    assert roc_auc_score(y, pipe.decision_function(x)) > 0.9
    assert set(np.unique(pipe.predict(x))) <= {0, 1}


def test_one_class_splits_fit_normals_only_and_test_both_classes(labelled):
    _, y = labelled
    splits = one_class_splits(y, 3, seed=1)
    assert len(splits) == 3
    held = np.concatenate([test for _, test in splits])
    np.testing.assert_array_equal(np.sort(held), np.arange(y.size))  # every row tested once
    for train, test in splits:
        assert (y[train] == 0).all()
        assert set(y[test]) == {0, 1}
        assert not np.intersect1d(train, test).size
    with pytest.raises(ValueError, match="at least n_splits=3 normals"):
        one_class_splits(np.ones(10), 3)
    # a NumPy integer (a count from an array) is an int; a bool is not
    for (a, b), (c, d) in zip(one_class_splits(y, np.int64(3), seed=1), splits, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    with pytest.raises(ValueError, match="must be an int >= 2"):
        one_class_splits(y, True)


def test_the_readme_search_fits_its_best_detector_on_the_normals(labelled):
    """README's recipe: with scikit-learn's default refit, `best_estimator_` is fitted on the
    anomalies too (`fit` ignores y); refit=False and a fit on the normals keep them out."""
    x, y = labelled
    grid = dict(param_grid={"k": [5, 10]}, scoring=AUROC, cv=one_class_splits(y, 3))
    default = GridSearchCV(MSDEDetector(max_iter=2), **grid).fit(x, y)
    assert default.best_estimator_.decision_scores_.size == y.size  # anomalies included
    search = GridSearchCV(MSDEDetector(max_iter=2), **grid, refit=False).fit(x, y)
    best = MSDEDetector(max_iter=2, **search.best_params_).fit(x[y == 0])
    assert best.decision_scores_.size == (y == 0).sum()
    assert roc_auc_score(y, best.decision_function(x)) > 0.9


def test_grid_search_and_cross_val_score(labelled):
    x, y = labelled
    search = GridSearchCV(
        MSDEDetector(mode="none", covariance="ledoit_wolf"),
        {"n_components": [2, 5]},
        scoring=AUROC,
        cv=one_class_splits(y, 3),
    ).fit(x, y)
    assert search.best_params_["n_components"] in (2, 5)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_score_ > 0.9
    det = MSDEDetector(k=10, max_iter=2)
    scores = cross_val_score(det, x, y, scoring=AUROC, cv=one_class_splits(y, 2))
    assert scores.shape == (2,)
    assert (scores > 0.8).all()


def test_clone_and_tags():
    det = PatchBankDetector(size=30, reduce="max")
    copy = clone(det)
    assert copy is not det
    assert copy.get_params() == det.get_params()
    assert get_tags(MSDEDetector()).estimator_type == "outlier_detector"
    assert get_tags(MSDEDetector()).target_tags.required is False
    assert get_tags(PatchBankDetector()).input_tags.two_d_array is False
    assert get_tags(PatchBankDetector()).input_tags.three_d_array is True
    assert get_tags(FusedDetector({"a": MSDEDetector()})).input_tags.dict is True


# The checks that pass with MSDEDetector(mode="none", k=2, n_folds=2) (scikit-learn 1.9); the
# README lists the others and why. A check that starts failing, or one more that passes, is
# news: update the README's list with this one.
EXPECTED_FAILURES = {
    "check_fit_score_takes_y",  # `score` is a parameter here, the name of sklearn's method
    "check_pipeline_consistency",  # the same
    "check_estimators_unfitted",  # our NotFittedError is not sklearn's class
    "check_n_features_in_after_fitting",  # message wording
    "check_dtype_object",  # object arrays are refused, not converted
    "check_estimators_empty_data_messages",  # message wording
    "check_outliers_fit_predict",  # predict gives 0 / 1 (PyOD), not 1 / −1
    "check_outliers_train",
    "check_classifier_data_not_an_array",  # fit reads np.shape of the raw input
    "check_non_transformer_estimators_n_iter",  # n_iter_ is 0 without a shift
    "check_fit2d_1sample",  # message wording
    "check_fit2d_predict1d",  # message wording
}


@pytest.mark.filterwarnings("ignore")
def test_check_estimator_results_match_the_readme():
    results = check_estimator(MSDEDetector(mode="none", k=2, n_folds=2), on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    failed.discard("check_array_api_input")  # needs SCIPY_ARRAY_API; fails before any check
    assert failed == EXPECTED_FAILURES
    assert sum(r["status"] == "passed" for r in results) >= 33
