"""What every detector promises through the shared base (detectors/base.py): saving what was
loaded, saving parameters that came from NumPy, refusing float64 without 64-bit JAX, and the
package's own message for a ragged list."""

import jax
import numpy as np
import pytest

from msde_jax import MSDEDetector, PatchBankDetector


@pytest.fixture(scope="module")
def rows():
    return np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)


def test_a_loaded_detector_saved_again_keeps_its_metadata_until_refitted(rows, tmp_path):
    det = MSDEDetector(mode="none").fit(rows)
    det.save(tmp_path / "a.npz", metadata={"embedder": {"backbone": "resnet18"}})
    loaded = MSDEDetector.load(tmp_path / "a.npz")
    loaded.save(tmp_path / "b.npz")  # e.g. after set_params(batch_size=...)
    assert MSDEDetector.load(tmp_path / "b.npz").metadata_ == {"embedder": {"backbone": "resnet18"}}
    loaded.save(tmp_path / "c.npz", metadata={"note": 1})  # given: replaces them
    assert MSDEDetector.load(tmp_path / "c.npz").metadata_ == {"note": 1}
    loaded.fit(rows[:30])  # a new fit is no longer what the file described
    assert loaded.to_arrays()[0]["metadata"] == {}


def test_parameters_given_as_numpy_scalars_are_saved(rows, tmp_path):
    """A grid search over np.arange hands NumPy scalars to set_params."""
    det = MSDEDetector(mode="none", n_components=np.int64(3), ridge=np.float32(1e-3))
    det.fit(rows).save(tmp_path / "d.npz")
    loaded = MSDEDetector.load(tmp_path / "d.npz")
    assert loaded.n_components == 3
    np.testing.assert_array_equal(loaded.score_samples(rows), det.score_samples(rows))


def test_float64_without_64_bit_jax_is_refused_with_the_fix(rows):
    assert not jax.config.jax_enable_x64
    for det, x in (
        (MSDEDetector(mode="none", dtype="float64"), rows),
        (PatchBankDetector(dtype="float64"), rows.reshape(10, 2, 2, 4)),
    ):
        with pytest.raises(ValueError, match="jax_enable_x64"):
            det.fit(x)


def test_a_float64_model_is_refused_at_load_without_64_bit_jax(rows, tmp_path):
    """Loaded without x64 its arrays became float32 and stayed so once x64 was turned on:
    float32 scores from a float64 model, without a word."""
    from msde_jax import load_detector

    with jax.enable_x64(True):
        MSDEDetector(mode="none", dtype="float64").fit(rows).save(tmp_path / "f64.npz")
        assert load_detector(tmp_path / "f64.npz").state_.center.dtype == np.float64
    with pytest.raises(ValueError, match="f64.npz: saved with dtype='float64'.*before loading"):
        load_detector(tmp_path / "f64.npz")


def test_a_ragged_list_gets_the_packages_message():
    with pytest.raises(ValueError, match="rows of equal length"):
        MSDEDetector(mode="none").fit([[1.0, 2.0], [3.0]])


def test_uneven_group_folds_too_small_for_the_neighbours_are_refused(rows):
    """One volume of 30 slices and ten of one: the fold that holds out the big volume trains
    on 9 rows (it holds out another volume too), fewer than score_neighbors (padding rows were
    used as neighbours)."""
    groups = np.r_[np.zeros(30, int), np.arange(1, 11)]
    det = MSDEDetector(mode="none", score="knn", score_neighbors=15)
    det.fit(rows)  # equal folds: 32 training rows each
    with pytest.raises(ValueError, match=r"as few as 9 of the 40 .*the folds are uneven"):
        det.fit(rows, groups=groups)
    bank = PatchBankDetector(score_neighbors=15, n_folds=2)
    patches = rows.reshape(10, 2, 2, 4)
    with pytest.raises(ValueError, match="the folds are uneven"):
        bank.fit(patches, groups=np.r_[np.zeros(8, int), 1, 2])  # a fold of 2 images


def test_copies_of_one_sample_make_uneven_folds_the_size_check_sees(rows):
    """Copies share a fold: 32 copies of one row among 40 left a fold model 7 rows, which the
    check (⌈40 / 5⌉ held out) did not see: the kNN score averaged padding rows in, and the
    bank failed deep inside with the core's message about k."""
    copies = np.r_[np.repeat(rows[:1], 32, axis=0), rows[1:9]]
    det = MSDEDetector(mode="none", score="knn", score_neighbors=20)
    with pytest.raises(ValueError, match=r"as few as \d of the 40 .*copies of one sample"):
        det.fit(copies)
    with pytest.raises(ValueError, match=r"as few as \d of the 40 .*copies of one sample"):
        MSDEDetector(k=20).fit(copies)
    bank = PatchBankDetector(score_neighbors=20)
    patches = copies.reshape(40, 1, 1, -1)
    with pytest.raises(ValueError, match=r"smallest cross-fit bank .*copies of one sample"):
        bank.fit(patches)


def test_score_neighbors_beyond_the_training_rows_is_refused_not_padded(rows):
    """37 rows are fitted padded to 40: asking for 38 neighbours must not reach the padding."""
    det = MSDEDetector(mode="none").fit(rows[:37])
    assert det.state_.train.shape[0] == 40
    det.set_params(score="knn", score_neighbors=37)
    assert np.isfinite(det.score_samples(rows[37:])).all()
    det.set_params(score_neighbors=38)
    with pytest.raises(ValueError, match="fitted on 37; set a smaller score_neighbors"):
        det.score_samples(rows[37:])


def test_fit_predict_without_a_threshold_says_so_and_takes_groups(rows):
    """scikit-learn's fit_predict: labels, or predict's error when there is no threshold
    (it returned an empty array), and the groups fit takes."""
    with pytest.raises(ValueError, match="threshold='none': it ranks samples"):
        MSDEDetector(mode="none", threshold="none").fit_predict(rows)
    groups = np.repeat(np.arange(10), 4)
    det = MSDEDetector(mode="none")
    labels = det.fit_predict(rows, groups=groups)
    np.testing.assert_array_equal(
        labels, MSDEDetector(mode="none").fit(rows, groups=groups).labels_
    )


def test_a_fit_on_constant_rows_saves_a_file_that_loads(tmp_path):
    """Constant training rows (a blank channel, a test pattern): the PCA explains no variance
    (its ratios were 0/0 = NaN) and the bank's position weight is 0; both files load."""
    msde = MSDEDetector(mode="none", n_components=3).fit(np.ones((30, 4), np.float32))
    assert np.isfinite(np.asarray(msde.state_.pca.explained_variance_ratio)).all()
    msde.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(
        MSDEDetector.load(tmp_path / "m.npz").score_samples(np.ones((2, 4))),
        msde.score_samples(np.ones((2, 4))),
    )
    bank = PatchBankDetector(size=20, position=1.0).fit(np.ones((10, 16, 4), np.float32))
    bank.save(tmp_path / "b.npz")
    assert PatchBankDetector.load(tmp_path / "b.npz").threshold_ == bank.threshold_


def test_metadata_that_would_not_load_is_refused_at_save(rows, tmp_path):
    """save(metadata=[...]) wrote a file that every loader refused."""
    det = MSDEDetector(mode="none").fit(rows)
    for bad in (["efficientnet_lite0"], "resnet18", {1: (2, 3)}):
        with pytest.raises(TypeError, match="metadata must be a dict with string keys"):
            det.save(tmp_path / "m.npz", metadata=bad)
    assert not (tmp_path / "m.npz").exists()


def test_a_missing_threshold_entry_is_a_message_not_a_key_error(rows):
    for threshold in ("none", "cross_fit"):
        meta, arrays = MSDEDetector(mode="none", threshold=threshold).fit(rows).to_arrays()
        del meta["threshold_"]
        if threshold == "none":  # it is null there anyway
            assert np.isnan(MSDEDetector.from_arrays(meta, arrays).threshold_)
        else:
            with pytest.raises(ValueError, match="threshold_"):
                MSDEDetector.from_arrays(meta, arrays)


def test_arrays_given_and_taken_are_copies(rows):
    """Editing to_arrays()'s scores zeroed the detector's decision_scores_ (labels_ kept the
    old count), and from_arrays kept the caller's array."""
    det = MSDEDetector(mode="none").fit(rows)
    kept = det.decision_scores_.copy()
    meta, arrays = det.to_arrays()
    arrays["decision_scores_"][:] = 0
    np.testing.assert_array_equal(det.decision_scores_, kept)
    given = det.to_arrays()[1]
    loaded = MSDEDetector.from_arrays(meta, given)
    given["decision_scores_"][:] = 7
    np.testing.assert_array_equal(loaded.decision_scores_, kept)


def test_a_save_interrupted_part_way_leaves_the_earlier_file(rows, tmp_path, monkeypatch):
    """Saving goes through a temporary file renamed into place: a save that fails while
    writing leaves the earlier model whole and no temporary file beside it."""
    from msde_jax.detectors import persistence

    path = tmp_path / "model.npz"
    det = MSDEDetector(mode="none").fit(rows)
    det.save(path)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(persistence.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        MSDEDetector(mode="none", k=7).fit(rows).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
