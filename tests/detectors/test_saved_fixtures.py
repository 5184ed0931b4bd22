"""Saved models written before the package's modules moved (issue 20) load and score
bit-identically: fixture files from commit 95506b0 (tests/fixtures/saved_models/make.py)."""

from pathlib import Path

import numpy as np
import pytest

import msde_jax

HERE = Path(__file__).parents[1] / "fixtures" / "saved_models"
STEMS = [
    ("msde_inductive", "MSDEDetector", "pooled"),
    ("msde_paper", "MSDEDetector", "pooled"),
    ("msde_none_ledoit_wolf", "MSDEDetector", "pooled"),
    ("msde_knn", "MSDEDetector", "pooled"),
    ("msde_chi2", "MSDEDetector", "pooled"),
    ("bank_default", "PatchBankDetector", "patches"),
    ("bank_shift", "PatchBankDetector", "patches"),
    ("fused", "FusedDetector", "both"),
]


@pytest.fixture(scope="module")
def expected():
    with np.load(HERE / "expected.npz") as data:
        return dict(data)


@pytest.mark.parametrize(("stem", "cls", "which"), STEMS)
def test_saved_model_from_before_the_move_scores_bit_identically(expected, stem, cls, which):
    detector = msde_jax.load_detector(HERE / f"{stem}.npz")
    assert type(detector).__name__ == cls
    assert detector.metadata_ == {"fixture": stem}
    if which == "both":
        x = {"pooled": expected["test"], "patches": expected["test_patches"]}
    else:
        x = expected["test" if which == "pooled" else "test_patches"]
    scores = detector.score_samples(x)
    np.testing.assert_array_equal(scores, expected[f"{stem}.scores"])
    assert detector.threshold_ == float(expected[f"{stem}.threshold"])
    np.testing.assert_array_equal(
        detector.predict(x), (expected[f"{stem}.scores"] > detector.threshold_).astype(int)
    )
    # The class's own load gives the same detector.
    again = type(detector).load(HERE / f"{stem}.npz")
    np.testing.assert_array_equal(again.score_samples(x), scores)
