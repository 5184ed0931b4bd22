"""Saved models written before the package's modules moved (issue 20) load and score as they
did: fixture files from commit 95506b0 (tests/fixtures/saved_models/make.py).

Bit-identical until scoring became one jitted program per chunk (issue 21): XLA now fuses the
whole score, so it may round differently in the last float32 bits; the scores must agree
within float32 rounding of the score's scale, and every prediction not within that rounding
of the threshold must be the same."""

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
def test_saved_model_from_before_the_move_scores_the_same(expected, stem, cls, which):
    detector = msde_jax.load_detector(HERE / f"{stem}.npz")
    assert type(detector).__name__ == cls
    assert detector.metadata_ == {"fixture": stem}
    if cls == "PatchBankDetector":  # saved before the two-stage coreset, fitted without it
        assert detector.coreset == "greedy"
    if which == "both":
        x = {"pooled": expected["test"], "patches": expected["test_patches"]}
    else:
        x = expected["test" if which == "pooled" else "test_patches"]
    scores, want = detector.score_samples(x), expected[f"{stem}.scores"]
    rounding = 1e-6 * np.abs(want).max()
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=rounding)
    assert detector.threshold_ == float(expected[f"{stem}.threshold"])
    clear = np.abs(want - detector.threshold_) > 10 * rounding
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(
        detector.predict(x)[clear], (want > detector.threshold_).astype(int)[clear]
    )
    # The class's own load gives the same detector.
    again = type(detector).load(HERE / f"{stem}.npz")
    np.testing.assert_array_equal(again.score_samples(x), scores)
