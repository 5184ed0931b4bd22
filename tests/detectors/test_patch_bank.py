"""PatchBankDetector and its functional core (fit_bank_detector / score_bank_detector): equal to
the memory-bank core functions, batch independence, an easy detection case, the MSDE shift,
row-order independence, persistence and load dispatch, bad input, jit."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testing import clustered

from msde_jax import MSDEDetector, NotFittedError, PatchBankDetector, load_detector
from msde_jax.core import bank_fit, image_scores, kcenter_greedy, patch_scores, roc_auc
from msde_jax.core.blocks import content_order, sample_keys
from msde_jax.detectors import (
    BankConfig,
    BankState,
    bank_coreset,
    fit_bank_detector,
    patch_bank,
    score_bank_detector,
    score_bank_patches,
)
from msde_jax.detectors.fitting import folds, quantile_threshold

G, C = 3, 4  # a 3 × 3 patch grid, channels
P = G * G


@pytest.fixture(scope="module")
def train():
    return clustered(0, 12, p=P, c=C)


@pytest.fixture(scope="module")
def test_x():
    return clustered(1, 10, n_abnormal=5, p=P, c=C)


@pytest.fixture(scope="module")
def fitted(train):
    """PatchCore's bank (``position=0``), which the core functions below reproduce."""
    params = {"size": 40, "projection_dim": 2, "score_neighbors": 2, "n_folds": 3, "position": 0}
    return PatchBankDetector(**params).fit(train)


def _core_bank(x, config, **kwargs):
    """The bank the core functions give: images in content order, then bank_fit."""
    ordered = x[content_order(x.reshape(len(x), -1))].reshape(-1, x.shape[-1])
    return bank_fit(
        ordered,
        size=config.size,
        projection_dim=config.projection(x.shape[-1]),
        key=jax.random.key(config.seed),
        **kwargs,
    )


# ---------------------------------------------------------------------------- the core
@pytest.mark.parametrize("coreset", ["two_stage", "greedy"])
def test_threshold_none_fits_the_same_bank_and_no_threshold(train, test_x, tmp_path, coreset):
    """Only the final bank is fitted (the folds still shape the two-stage chunks: 4 images =
    36 patches each, more than the 20 kept, so the first stage searches)."""
    params = {"size": 20, "projection_dim": 2, "n_folds": 3, "coreset": coreset}
    full = PatchBankDetector(**params).fit(train)
    bare = PatchBankDetector(threshold="none", **params).fit(train)
    np.testing.assert_array_equal(bare.state_.bank.indices, full.state_.bank.indices)
    np.testing.assert_array_equal(bare.score_samples(test_x), full.score_samples(test_x))
    assert math.isnan(bare.threshold_)
    assert bare.decision_scores_.shape == bare.labels_.shape == (0,)
    with pytest.raises(ValueError, match="threshold='none'.*refit with threshold='cross_fit'"):
        bare.predict(test_x)
    meta, arrays = bare.to_arrays()
    assert meta["threshold_"] is None  # JSON null, not NaN
    with pytest.raises(ValueError, match="'threshold_' must be null with threshold='none'"):
        PatchBankDetector.from_arrays({**meta, "threshold_": 1.0}, arrays)
    with pytest.raises(ValueError, match="'threshold_' must be a finite number, got None"):
        PatchBankDetector.from_arrays({**meta, "params": full.get_params()}, arrays)
    bare.save(tmp_path / "bare.npz")
    loaded = PatchBankDetector.load(tmp_path / "bare.npz")
    np.testing.assert_array_equal(loaded.score_samples(test_x), full.score_samples(test_x))
    with pytest.raises(ValueError, match="threshold='none'"):
        loaded.predict(test_x)


def test_fit_and_score_equal_the_core_functions(train, test_x, fitted):
    config = BankConfig(**fitted.get_params())
    fit = fit_bank_detector(train, config)
    bank = _core_bank(train, config)
    np.testing.assert_array_equal(fit.state.bank.bank, bank.bank)
    np.testing.assert_array_equal(fit.state.bank.density, np.ones(40))
    # The indices are rows of the training patches in the order they were given.
    np.testing.assert_array_equal(
        train.reshape(-1, C)[np.asarray(fit.state.bank.indices)], bank.bank
    )
    # The bank rows are in content order of the images, then patch position.
    rank = np.argsort(content_order(train.reshape(len(train), -1)))  # image → content rank
    given = np.asarray(fit.state.bank.indices)
    assert np.all(np.diff(rank[given // P] * P + given % P) > 0)
    assert fit.n_iter == 0
    want = image_scores(patch_scores(bank, test_x, k=2), reduce="top", q=0.1)
    np.testing.assert_allclose(score_bank_detector(fit.state, test_x), want, rtol=1e-6)
    np.testing.assert_allclose(
        score_bank_patches(fit.state, test_x), patch_scores(bank, test_x, k=2)
    )
    # The facade is the functional core.
    assert fitted.state_.config == config
    jax.tree.map(np.testing.assert_array_equal, fit.state, fitted.state_)
    np.testing.assert_array_equal(fit.decision_scores, fitted.decision_scores_)
    assert fit.threshold == fitted.threshold_
    np.testing.assert_array_equal(
        score_bank_detector(fit.state, test_x), fitted.score_samples(test_x)
    )


def test_decision_scores_are_out_of_fold(train, fitted):
    config = BankConfig(**fitted.get_params())
    order = content_order(train.reshape(len(train), -1))
    for fold in range(3):
        held = np.sort(order[fold::3])
        rest = np.setdiff1d(np.arange(len(train)), held)
        bank = _core_bank(train[rest], config)
        want = image_scores(patch_scores(bank, train[held], k=2), reduce="top", q=0.1)
        np.testing.assert_allclose(fitted.decision_scores_[held], want, rtol=1e-6)
    assert fitted.threshold_ == quantile_threshold(fitted.decision_scores_, 0.05)
    np.testing.assert_array_equal(fitted.labels_, fitted.decision_scores_ > fitted.threshold_)


# ------------------------------------------------------------------ where a patch is
@pytest.mark.parametrize("coreset", ["two_stage", "greedy"])
def test_position_is_the_bank_on_features_with_their_places(train, test_x, monkeypatch, coreset):
    """position=w is PatchCore's bank (position=0) on the features with two channels more,
    w · s × each patch's (row, column) on the grid scaled to [0, 1] (s: the training patches'
    spread √(Σ_c var_c)), in the content order of the features alone; the bank keeps the
    features and, apart, its rows' places."""
    params = {"size": 20, "projection_dim": 3, "n_folds": 3, "score_neighbors": 2}
    on_grid, test_grid = train.reshape(-1, G, G, C), test_x.reshape(-1, G, G, C)
    det = PatchBankDetector(**params, coreset=coreset, position=2.0).fit(on_grid)
    weight = det.state_.position.weight
    spread = np.sqrt(train.reshape(-1, C).astype(np.float64).var(axis=0).sum())
    np.testing.assert_allclose(weight, 2.0 * spread, rtol=1e-6)
    rows, cols = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    places = np.stack([rows, cols], axis=-1).astype(np.float32) / np.float32(G - 1)

    def placed(x):
        return np.concatenate([x, np.broadcast_to(weight * places, (*x.shape[:-1], 2))], -1)

    keys = sample_keys(on_grid)
    monkeypatch.setattr(patch_bank, "sample_keys", lambda x: keys)
    ref = PatchBankDetector(**params, coreset=coreset, position=0).fit(placed(on_grid))
    np.testing.assert_array_equal(det.state_.bank.indices, ref.state_.bank.indices)
    ref_bank = np.asarray(ref.state_.bank.bank)
    np.testing.assert_array_equal(det.state_.bank.bank, ref_bank[:, :C])
    np.testing.assert_allclose(weight * det.state_.position.bank, ref_bank[:, C:], rtol=1e-6)
    want = ref.score_samples(placed(test_grid))
    np.testing.assert_allclose(det.score_samples(test_grid), want, rtol=1e-5)
    np.testing.assert_allclose(det.decision_scores_, ref.decision_scores_, rtol=1e-5)
    # Flat patches, P = G², lie on the same grid.
    np.testing.assert_array_equal(det.score_samples(test_x), det.score_samples(test_grid))
    anywhere = PatchBankDetector(**params, coreset=coreset, position=0).fit(on_grid)
    assert not np.allclose(det.score_samples(test_grid), anywhere.score_samples(test_grid))


def test_position_with_the_shift_keeps_each_patchs_place(train, test_x):
    det = PatchBankDetector(size=60, projection_dim=None, k=10, n_folds=3, shift=True).fit(train)
    assert det.n_iter_ > 0
    rows, cols = np.divmod(np.asarray(det.state_.bank.indices) % P, G)
    np.testing.assert_array_equal(det.state_.position.bank, np.stack([rows, cols], -1) / (G - 1))
    assert det.state_.bank.bank.shape == (60, C)
    assert np.all(np.isfinite(det.score_samples(test_x)))


def test_positions_are_saved_and_checked(tmp_path, train, test_x):
    det = PatchBankDetector(size=40, projection_dim=2, n_folds=3).fit(train)
    assert det.position == 1.0  # the default
    det.save(tmp_path / "bank.npz")
    loaded = PatchBankDetector.load(tmp_path / "bank.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded.state_, det.state_)
    np.testing.assert_array_equal(loaded.score_samples(test_x), det.score_samples(test_x))
    meta, arrays = det.to_arrays()
    assert {"state.position.weight", "state.position.bank"} <= set(arrays)
    # A file from before positions has neither the parameter nor the arrays: position 0.
    plain = PatchBankDetector(size=40, projection_dim=2, n_folds=3, position=0).fit(train)
    meta0, arrays0 = plain.to_arrays()
    old = {**meta0, "params": {k: v for k, v in meta0["params"].items() if k != "position"}}
    assert PatchBankDetector.from_arrays(old, arrays0).position == 0.0
    with pytest.raises(ValueError, match="position=1.0 but the file lacks bank positions"):
        PatchBankDetector.from_arrays(
            {**meta0, "params": {**old["params"], "position": 1.0}}, arrays0
        )
    with pytest.raises(ValueError, match="position=0 but the file holds bank positions"):
        PatchBankDetector.from_arrays(meta0, arrays)
    places = arrays["state.position.bank"] + np.float32(1)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        PatchBankDetector.from_arrays(meta, {**arrays, "state.position.bank": places})
    with pytest.raises(ValueError, match="position weight -1.0"):
        PatchBankDetector.from_arrays(meta, {**arrays, "state.position.weight": np.float32(-1)})


def test_position_scores_only_on_the_training_grid(tmp_path):
    """With positions, the same patch count on another grid would give the patches other
    places: refused, after a save and load too; a file saved before the grid was kept loads."""
    x = clustered(0, 12, p=16, c=C).reshape(12, 2, 8, C)
    det = PatchBankDetector(size=40, projection_dim=2, n_folds=3).fit(x)
    assert det.patch_grid_ == (2, 8)
    q = x[:2]
    refused = r"fitted with position=1.0 on a 2 × 8 patch grid.*pass \(m, 2, 8, c\)"
    for other in (q.reshape(2, 4, 4, C), q.reshape(2, 16, C)):
        with pytest.raises(ValueError, match=refused):
            det.score_samples(other)
    det.save(tmp_path / "bank.npz")
    loaded = PatchBankDetector.load(tmp_path / "bank.npz")
    assert loaded.patch_grid_ == (2, 8)
    np.testing.assert_array_equal(loaded.score_samples(q), det.score_samples(q))
    with pytest.raises(ValueError, match=refused):
        loaded.score_patches(q.reshape(2, 16, C))
    meta, arrays = det.to_arrays()
    old = {k: v for k, v in meta.items() if k != "patch_grid_"}
    assert PatchBankDetector.from_arrays(old, arrays).patch_grid_ is None
    for bad in ([3, 5], [-2, -8], [16]):
        with pytest.raises(ValueError, match=r"patch_grid_ \[.*\] is not two positive"):
            PatchBankDetector.from_arrays({**meta, "patch_grid_": bad}, arrays)
    # Without positions a patch matches anywhere: any grid of its 16 patches scores the same.
    anywhere = PatchBankDetector(size=40, projection_dim=2, n_folds=3, position=0).fit(x)
    np.testing.assert_allclose(
        anywhere.score_samples(q.reshape(2, 16, C)), anywhere.score_samples(q), rtol=1e-6
    )


# --------------------------------------------------------------- the two-stage coreset
def test_two_stage_equals_greedy_when_every_fold_fits_the_bank(train, test_x):
    """A chunk of no more patches than the bank holds gives all its rows, so the second
    stage searches every patch, as the one greedy search does."""
    params = dict(size=40, projection_dim=2, score_neighbors=2, n_folds=3)  # folds: 36 patches
    greedy = PatchBankDetector(coreset="greedy", **params).fit(train)
    two = PatchBankDetector(coreset="two_stage", **params).fit(train)
    np.testing.assert_array_equal(greedy.state_.bank.indices, two.state_.bank.indices)
    np.testing.assert_allclose(greedy.decision_scores_, two.decision_scores_, rtol=1e-6)
    np.testing.assert_allclose(greedy.score_samples(test_x), two.score_samples(test_x), rtol=1e-6)


def test_fit_neither_changes_nor_keeps_the_training_array(train, test_x):
    """The fit reads the features without copying them whole: it must not write to them, and
    the fitted detector must not depend on them afterwards."""
    x = train.copy()
    det = PatchBankDetector(size=30, projection_dim=2, n_folds=3).fit(x)
    np.testing.assert_array_equal(x, train)
    scores = det.score_samples(test_x)
    x[:] = 0.0
    np.testing.assert_array_equal(det.score_samples(test_x), scores)


def test_two_stage_fit_memory_estimate_is_bounded_by_a_chunk():
    """The memory check's estimate of a fit: with the two-stage coreset the searches hold a
    chunk and the pool (``size`` picks per chunk), not every patch, so 10× the images costs
    less than 3× the search memory (the greedy search: 10×), and at 100,000 images a small
    part of the greedy coreset's."""
    two, greedy = PatchBankDetector(), PatchBankDetector(coreset="greedy")
    shape = (100_000, 14, 14, 152)
    small = two._memory_needed((10_000, *shape[1:]))[0]
    large, one_search = two._memory_needed(shape)[0], greedy._memory_needed(shape)[0]
    assert large["coreset search"] < 3 * small["coreset search"]
    assert large["coreset search"] < one_search["coreset search"] / 10
    assert large["patch features"] < one_search["patch features"] / 10


@pytest.mark.parametrize("chunk_patches", [54, 18])
def test_two_stage_is_greedy_over_the_folds_picks(train, chunk_patches):
    """The reference, written with the core functions: each fold's images (in content order)
    give ``size`` patches by the greedy search, in chunks of at most ``chunk_patches``
    patches; the final bank is the greedy search over all the picks, and fold f's bank, which
    scores fold f, the search over the other folds' picks. 54: one chunk per fold, searched two
    at a time (the last call padded with an empty set); 18: two images per chunk."""
    size, key = 6, jax.random.key(0)
    det = PatchBankDetector(
        size=size,
        projection_dim=2,
        n_folds=5,
        coreset="two_stage",
        chunk_patches=chunk_patches,
        position=0,
    ).fit(train)
    keys = sample_keys(train)
    rank = np.argsort(np.argsort(keys, kind="stable"))  # each image's place in content order
    flat = train.reshape(-1, C)
    held_out = folds(keys, 5)
    picks = []
    for held in held_out:
        images = held[np.argsort(rank[held])]
        chunk_images = max(1, chunk_patches // P)
        fold_picks = []
        for chunk in np.array_split(images, -(-images.size // chunk_images)):
            rows = (chunk[:, None] * P + np.arange(P)).reshape(-1)
            fold_picks.append(
                rows[np.asarray(kcenter_greedy(flat[rows], size, key=key, projection_dim=2))]
            )
        picks.append(np.concatenate(fold_picks))

    def bank_of(rows):  # the second stage on these picks, in content order
        rows = rows[np.argsort(rank[rows // P] * P + rows % P)]
        bank = bank_fit(flat[rows], size=size, projection_dim=2, key=key)
        return bank, rows[np.asarray(bank.indices)]

    bank, rows = bank_of(np.concatenate(picks))
    np.testing.assert_array_equal(np.asarray(det.state_.bank.indices), rows)
    np.testing.assert_allclose(det.state_.bank.bank, flat[rows], rtol=1e-6)
    for f, held in enumerate(held_out):
        fold_bank, _ = bank_of(np.concatenate(picks[:f] + picks[f + 1 :]))
        want = image_scores(patch_scores(fold_bank, train[held]), reduce="top", q=0.1)
        np.testing.assert_allclose(det.decision_scores_[held], want, rtol=1e-6)


def test_on_a_cpu_each_bank_is_searched_on_its_own_rows(train, test_x, monkeypatch):
    """On a CPU the final bank and each fold's are searched on their own picks
    (``bank_fit``, padded to a bucket), on an accelerator in one program
    (``bank_fit_subsets``): the same banks and scores either way."""
    calls = []
    joint = bank_coreset.bank_fit_subsets
    monkeypatch.setattr(
        bank_coreset, "bank_fit_subsets", lambda *a, **k: calls.append(1) or joint(*a, **k)
    )
    params = {"size": 6, "projection_dim": 2, "n_folds": 3, "position": 0}  # 6 < a fold's 12
    fitted = {}
    for on_cpu in (False, True):
        monkeypatch.setattr(bank_coreset, "cpu_paths", lambda on_cpu=on_cpu: on_cpu)
        fitted[on_cpu] = PatchBankDetector(**params).fit(train)
        assert len(calls) == 1  # the accelerator's fit only
    own, shared = fitted[True], fitted[False]
    np.testing.assert_array_equal(own.state_.bank.indices, shared.state_.bank.indices)
    np.testing.assert_allclose(own.decision_scores_, shared.decision_scores_, rtol=1e-6)
    np.testing.assert_allclose(own.score_samples(test_x), shared.score_samples(test_x), rtol=1e-6)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), size=st.sampled_from([1, 3, 8]))
def test_one_image_alone_scores_as_in_a_batch(fitted, test_x, seed, size):
    full = fitted.score_samples(test_x)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(test_x), size=size, replace=False)
    others = rng.normal(scale=4.0, size=(5, P, C)).astype(np.float32)
    mixed = fitted.score_samples(np.concatenate([others, test_x[rows]]))[5:]
    np.testing.assert_allclose(fitted.score_samples(test_x[rows]), full[rows], rtol=1e-6)
    np.testing.assert_allclose(mixed, full[rows], rtol=1e-6)


def test_grid_layout_scores_as_flat_patches(train, test_x, fitted):
    grid = PatchBankDetector(**fitted.get_params()).fit(train.reshape(-1, G, G, C))
    np.testing.assert_array_equal(grid.decision_scores_, fitted.decision_scores_)
    np.testing.assert_array_equal(grid.score_samples(test_x), fitted.score_samples(test_x))
    heat = grid.score_patches(test_x.reshape(-1, G, G, C))
    assert heat.shape == (10, G, G)
    np.testing.assert_array_equal(heat.reshape(10, P), fitted.score_patches(test_x))


@pytest.mark.parametrize("reduce", ["max", "top", "mean"])
def test_off_manifold_patches_rank_first(train, test_x, reduce):
    det = PatchBankDetector(size=60, projection_dim=None, reduce=reduce, q=0.25, n_folds=3)
    scores = det.fit(train).score_samples(test_x)
    labels = np.r_[np.zeros(5), np.ones(5)]
    assert float(roc_auc(labels, scores)) == 1.0
    assert det.predict(test_x)[5:].all()


def test_shift_is_the_cores_shifted_bank(train, test_x):
    params = {"size": 60, "projection_dim": None, "k": 10, "n_folds": 3, "position": 0}
    plain = PatchBankDetector(**params).fit(train)
    det = PatchBankDetector(**params, shift=True).fit(train)
    config = BankConfig(**det.get_params())
    bank = _core_bank(train, config, shift=True, k=10)
    np.testing.assert_allclose(det.state_.bank.bank, bank.bank, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(det.state_.bank.density, bank.density, rtol=1e-6)
    np.testing.assert_array_equal(det.state_.bank.indices, plain.state_.bank.indices)
    assert 1 <= det.n_iter_ <= 8
    assert det.n_iter_ == int(det.state_.bank.n_iter) == int(bank.n_iter)
    assert not np.allclose(det.state_.bank.bank, plain.state_.bank.bank)
    assert not np.allclose(det.score_samples(test_x), plain.score_samples(test_x))
    want = image_scores(patch_scores(bank, test_x), reduce="top", q=0.1)
    np.testing.assert_allclose(det.score_samples(test_x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [False, True])
def test_results_do_not_depend_on_image_order(train, test_x, shift):
    perm = np.random.default_rng(3).permutation(len(train))
    params = dict(size=30, projection_dim=2, k=10, shift=shift, n_folds=3)
    a = PatchBankDetector(**params).fit(train)
    b = PatchBankDetector(**params).fit(train[perm])
    np.testing.assert_allclose(a.decision_scores_[perm], b.decision_scores_, rtol=1e-5)
    assert a.threshold_ == pytest.approx(b.threshold_, rel=1e-5)
    np.testing.assert_allclose(a.score_samples(test_x), b.score_samples(test_x), rtol=1e-5)
    # The same bank rows, each pointing at the same training patch.
    flat_a, flat_b = train.reshape(-1, C), train[perm].reshape(-1, C)
    np.testing.assert_array_equal(
        flat_a[np.asarray(a.state_.bank.indices)], flat_b[np.asarray(b.state_.bank.indices)]
    )


def test_scoring_follows_the_current_parameters(train, test_x, fitted):
    det = PatchBankDetector(**fitted.get_params()).fit(train)
    det.set_params(reduce="max", score_neighbors=1)
    want = image_scores(patch_scores(det.state_.bank, test_x), reduce="max")
    np.testing.assert_allclose(det.score_samples(test_x), want, rtol=1e-6)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"reduce": "max"}, r"threshold_ was computed for reduce='top', but .* reduce='max'"),
        ({"q": 0.5}, r"computed for q=0\.1, .* set q back \(set_params\(q=0\.1\)\)"),
        ({"score_neighbors": 1}, "computed for score_neighbors=2"),
    ],
)
def test_predict_refuses_a_threshold_of_another_score(train, test_x, fitted, params, match):
    det = PatchBankDetector(**fitted.get_params()).fit(train)
    det.set_params(**params)
    assert det.score_samples(test_x).shape == (10,)  # scoring still follows the parameters
    with pytest.raises(ValueError, match=match):
        det.predict(test_x)
    det.set_params(**{name: fitted.get_params()[name] for name in params})
    np.testing.assert_array_equal(det.predict(test_x), fitted.predict(test_x))
    # batch_size changes no score: predicting with another one is fine.
    det.set_params(batch_size=5)
    np.testing.assert_array_equal(det.predict(test_x), fitted.predict(test_x))
    # nor does q where the image score is the maximum, which never reads it
    maximum = PatchBankDetector(**{**fitted.get_params(), "reduce": "max"}).fit(train)
    labels = maximum.predict(test_x)
    np.testing.assert_array_equal(maximum.set_params(q=0.9).predict(test_x), labels)


def test_fit_time_parameters_apply_at_the_next_fit(tmp_path, train, test_x, fitted):
    det = PatchBankDetector(**fitted.get_params()).fit(train)
    det.set_params(shift=True, k=10, size=20, seed=3)
    # Scoring uses the bank as fitted (unshifted, 40 rows) until the next fit.
    assert det.state_.config == fitted.state_.config
    np.testing.assert_array_equal(det.score_samples(test_x), fitted.score_samples(test_x))
    np.testing.assert_array_equal(det.predict(test_x), fitted.predict(test_x))
    with pytest.raises(ValueError, match=r"fitted with size=40, shift=False, seed=0, k=50, but"):
        det.save(tmp_path / "bank.npz")
    det.fit(train)
    assert det.state_.config.shift
    assert det.state_.bank.bank.shape == (20, C)
    det.save(tmp_path / "bank.npz")
    assert PatchBankDetector.load(tmp_path / "bank.npz").get_params()["shift"] is True


def test_score_bank_detector_jits_without_retracing(train, test_x, fitted):
    state = fitted.state_
    traces = []

    @jax.jit
    def score(state, x):
        traces.append(None)  # runs once per trace
        return score_bank_detector(state, x)

    np.testing.assert_allclose(score(state, test_x), score_bank_detector(state, test_x), rtol=1e-6)
    other = test_x[::-1] + np.float32(0.5)  # new data, same shape
    np.testing.assert_allclose(score(state, other), score_bank_detector(state, other), rtol=1e-6)
    config = BankConfig(**fitted.get_params())
    refitted = fit_bank_detector(train[::-1] * np.float32(1.1), config).state  # same shapes
    np.testing.assert_allclose(score(refitted, test_x), score_bank_detector(refitted, test_x))
    assert len(traces) == 1
    assert isinstance(refitted, BankState)


# ---------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path, train, test_x):
    for det in (
        PatchBankDetector(size=40, projection_dim=2, n_folds=3, reduce="mean").fit(train),
        PatchBankDetector(size=40, projection_dim=None, n_folds=3, shift=True, k=10).fit(train),
    ):
        path = tmp_path / "bank.npz"
        det.save(path, metadata={"backbone": "resnet18", "features": "patches"})
        for loaded in (PatchBankDetector.load(path), load_detector(path)):
            assert type(loaded) is PatchBankDetector
            assert loaded.metadata_ == {"backbone": "resnet18", "features": "patches"}
            assert loaded.get_params() == det.get_params()
            assert (loaded.threshold_, loaded.n_patches_, loaded.n_iter_) == (
                det.threshold_,
                P,
                det.n_iter_,
            )
            jax.tree.map(np.testing.assert_array_equal, loaded.state_, det.state_)
            np.testing.assert_array_equal(loaded.decision_scores_, det.decision_scores_)
            np.testing.assert_array_equal(loaded.labels_, det.labels_)
            np.testing.assert_array_equal(loaded.score_samples(test_x), det.score_samples(test_x))
            np.testing.assert_array_equal(loaded.score_patches(test_x), det.score_patches(test_x))


def test_to_arrays_from_arrays_is_the_identity(fitted, test_x):
    meta, arrays = fitted.to_arrays()
    assert meta["detector"] == "PatchBankDetector"
    assert meta["params"] == fitted.get_params()
    assert set(arrays) == {"decision_scores_", "state.bank.bank", "state.bank.density",
                           "state.bank.indices", "state.bank.n_iter"}  # fmt: skip
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    again = PatchBankDetector.from_arrays(meta, arrays)
    np.testing.assert_array_equal(again.score_samples(test_x), fitted.score_samples(test_x))
    with pytest.raises(ValueError, match="holds a PatchBankDetector, not a MSDEDetector"):
        MSDEDetector.from_arrays(meta, arrays)
    with pytest.raises(ValueError, match="'state.bank.density' is missing"):
        PatchBankDetector.from_arrays(meta, {k: v for k, v in arrays.items() if "density" not in k})


def test_load_refuses_other_classes_and_dispatches(tmp_path, fitted):
    bank_path, msde_path = tmp_path / "bank.npz", tmp_path / "msde.npz"
    fitted.save(bank_path)
    normals = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    msde = MSDEDetector(mode="none", n_folds=2).fit(normals)
    msde.save(msde_path)
    with pytest.raises(
        ValueError, match=r"msde\.npz holds a MSDEDetector, not a PatchBankDetector"
    ):
        PatchBankDetector.load(msde_path)
    with pytest.raises(
        ValueError, match=r"bank\.npz holds a PatchBankDetector, not a MSDEDetector"
    ):
        MSDEDetector.load(bank_path)
    loaded = load_detector(msde_path)
    assert type(loaded) is MSDEDetector
    np.testing.assert_array_equal(loaded.score_samples(normals), msde.score_samples(normals))
    assert type(load_detector(bank_path)) is PatchBankDetector
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a saved PatchBankDetector"):
        PatchBankDetector.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="not a saved detector"):
        load_detector(tmp_path / "junk.npz")


# ---------------------------------------------------------------------------- bad input
def test_bad_input(fitted, train, test_x):
    with pytest.raises(NotFittedError, match="This PatchBankDetector is not fitted yet"):
        PatchBankDetector().score_samples(test_x)
    with pytest.raises(ValueError, match=r"must be patch features of shape .* pooled embeddings"):
        PatchBankDetector(n_folds=2).fit(train.reshape(len(train), -1))
    with pytest.raises(ValueError, match="must be patch features"):
        fitted.score_samples(test_x[0])
    bad = train.copy()
    bad[3, 1, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"NaN or infinite values in 1 image\(s\) \(first: \[3\]\)"
    ):
        PatchBankDetector(n_folds=2).fit(bad)
    with pytest.raises(ValueError, match="at least n_folds=5 training images .* got 4"):
        PatchBankDetector().fit(train[:4])
    with pytest.raises(ValueError, match="fewer than the 50 that k=50 needs"):
        PatchBankDetector(shift=True, n_folds=2).fit(train[:4])
    with pytest.raises(
        ValueError, match="has 3 channels per patch but the detector was fitted on 4"
    ):
        fitted.score_samples(test_x[..., :3])
    with pytest.raises(
        ValueError, match="has 4 patches per image but the detector was fitted on 9"
    ):
        fitted.score_patches(test_x[:, :4])
    with pytest.raises(ValueError, match="no images"):
        fitted.score_samples(np.zeros((0, P, C)))
    with pytest.raises(ValueError, match="position > 0 needs patches on a grid: 5 patches"):
        PatchBankDetector(n_folds=2).fit(train[:, :5])
    with pytest.raises(ValueError, match="must hold numbers"):
        fitted.score_samples(np.full((1, P, C), "a"))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"threshold": "chi2"}, "does not apply to a memory bank"),
        ({"threshold": "quantile"}, "threshold='quantile' is not valid"),
        ({"reduce": "median"}, "reduce='median' is not valid"),
        ({"density": "knn"}, "density='knn' is not valid"),
        ({"size": 0}, "size must be a positive int"),
        ({"n_folds": 1}, "n_folds must be an int >= 2"),
        ({"q": 0.0}, "q must be in"),
        ({"projection_dim": 0}, "projection_dim must be a positive int"),
        ({"contamination": 0.7}, "contamination"),
        ({"shift": "yes"}, "shift must be True or False"),
        ({"coreset": "random"}, "coreset='random' is not valid"),
        ({"chunk_patches": 0}, "chunk_patches must be a positive int"),
        ({"position": -1.0}, "position must be a finite number >= 0, got -1.0"),
        ({"seed": 2**32}, "seed must be an int >= 0 and <= 4294967295"),  # drew what 0 draws
        ({"position": float("nan")}, "position must be a finite number >= 0"),
        ({"position": True}, "position must be a finite number >= 0, got True"),
        ({"q": True}, "q must be in"),
        ({"q": "0.1"}, r"q must be in \(0, 1\], got '0.1'"),
    ],
)
def test_bad_parameters(train, params, match):
    with pytest.raises(ValueError, match=match):
        PatchBankDetector(**params).fit(train)


def test_params():
    det = PatchBankDetector(size=7)
    assert PatchBankDetector(**det.get_params()).get_params() == det.get_params()
    assert det.get_params() == dataclasses.asdict(BankConfig(size=7))
    assert det.set_params(shift=True, reduce="max") is det
    assert repr(det) == "PatchBankDetector(size=7, shift=True, reduce='max')"
    with pytest.raises(ValueError, match="Unknown parameter 'kk' for PatchBankDetector"):
        det.set_params(kk=1)
    with pytest.raises(TypeError):
        PatchBankDetector(50)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        BankConfig().size = 3  # type: ignore[misc]


def test_fit_predict(train):
    det = PatchBankDetector(size=40, projection_dim=2, n_folds=3, contamination=0.25)
    np.testing.assert_array_equal(det.fit_predict(train), det.labels_)
    assert det.decision_function(train[:2]).shape == (2,)


# ---------------------------------------------------------------------- heatmaps
def test_map_argmax_falls_inside_a_pasted_patch():
    # Normal images: 8 × 8 grids of patches on three clusters. The test image has a 2 × 2 block
    # of patches far from every cluster, at grid rows 5-6, columns 1-2.
    train = clustered(0, 30, p=64).reshape(30, 8, 8, 8)
    detector = PatchBankDetector(size=300, n_folds=2).fit(train)
    test = clustered(1, 1, p=64).reshape(1, 8, 8, 8)
    test[0, 5:7, 1:3] = 6.0
    (amap,) = detector.score_maps(test, size=64)
    assert amap.shape == (64, 64)
    row, col = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert 40 <= row < 56  # grid rows 5-6 cover pixels 40-55 at 64 px
    assert 8 <= col < 24
    # In the units of the scores: the map's peak is near the worst patch score.
    worst = float(detector.score_patches(test).max())
    assert 0.5 * worst < amap.max() <= worst + 1e-5


def test_maps_alone_equal_maps_in_a_batch(fitted, test_x):
    grid = test_x.reshape(test_x.shape[0], G, G, C)
    batch = fitted.score_maps(grid, size=48)
    assert batch.shape == (test_x.shape[0], 48, 48)
    for i in (0, 3):
        np.testing.assert_allclose(
            fitted.score_maps(grid[i : i + 1], size=48)[0], batch[i], rtol=1e-5, atol=1e-6
        )
    # Flat (m, P, c) features with P = g × g give the same maps; sigma=0 is no blur.
    np.testing.assert_allclose(fitted.score_maps(test_x, size=48), batch, rtol=1e-6)
    sharp = fitted.score_maps(grid[:1], size=48, sigma=0)
    assert sharp.max() >= batch[0].max() - 1e-6
    assert not np.allclose(sharp, batch[:1])  # the default blurs
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        fitted.score_maps(grid, sigma=-1.0)


def test_detectors_without_maps_say_so(rng):
    det = MSDEDetector(mode="none", n_components=3).fit(rng.normal(size=(30, 4)))
    assert not det.has_maps
    assert PatchBankDetector.has_maps
    with pytest.raises(ValueError, match="no spatial resolution, so there are no heatmaps"):
        det.score_maps(rng.normal(size=(2, 4)))
