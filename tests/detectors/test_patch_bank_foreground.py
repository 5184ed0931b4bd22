"""PatchBankDetector(foreground="pca"): the fitted rule, the score over foreground patches only
(equal to a NumPy reduction of score_patches under foreground_patches), q composed with the
mask, batch independence, jit, save / load, and files without a rule."""

import jax
import numpy as np
import pytest

from msde_jax import FusedDetector, MSDEDetector, PatchBankDetector, load_detector
from msde_jax.core import foreground_fit
from msde_jax.detectors import (
    BankConfig,
    fit_bank_detector,
    score_bank_detector,
    score_bank_flipped,
)

G, C = 6, 5


def heads(seed, n, *, n_abnormal=0):
    """(n, G, G, C) patch grids: near-zero background outside a central disc of two tissues;
    the last ``n_abnormal`` images have one odd patch inside the disc."""
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[:G, :G]
    disc = (i - 2.5) ** 2 + (j - 2.5) ** 2 <= 2.3**2
    tissues = np.random.default_rng(99).normal(size=(2, C)) + 3.0
    body = tissues[rng.integers(0, 2, (n, G, G))] + rng.normal(scale=0.3, size=(n, G, G, C))
    air = rng.normal(scale=0.05, size=(n, G, G, C))
    x = np.where(disc[None, :, :, None], body, air)
    x[n - n_abnormal :, 2, 3] = -3.0  # far from both tissues and from the air
    return x.astype(np.float32), disc


@pytest.fixture(scope="module")
def data():
    train, disc = heads(0, 16)
    test, _ = heads(1, 8, n_abnormal=4)
    return train, test, disc


@pytest.fixture(scope="module")
def fitted(data):
    train = data[0]
    return PatchBankDetector(size=60, projection_dim=None, n_folds=3, foreground="pca").fit(train)


def reference(patch_scores, mask, q):
    """The top-q mean of each image's foreground patch scores (all patches where none), NumPy."""
    out = []
    for s, keep in zip(
        patch_scores.reshape(len(mask), -1), mask.reshape(len(mask), -1), strict=True
    ):
        v = np.sort(s[keep] if keep.any() else s)[::-1]
        out.append(v[: min(max(int(np.ceil(q * v.size - 1e-9)), 1), v.size)].mean())
    return np.array(out)


def test_the_rule_is_fitted_and_masks_the_background(data, fitted):
    train, test, disc = data
    fg = fitted.state_.foreground
    assert bool(fg.active)
    mask = fitted.foreground_patches(test)
    np.testing.assert_array_equal(mask, np.broadcast_to(disc, mask.shape))
    assert PatchBankDetector().foreground is None  # the default has no rule:
    plain = PatchBankDetector(size=60, projection_dim=None, n_folds=3).fit(train)
    assert plain.state_.foreground is None
    assert plain.foreground_patches(test).all()
    # The bank is the same: the rule only changes the reduction.
    jax.tree.map(np.testing.assert_array_equal, plain.state_.bank, fitted.state_.bank)


def test_the_maps_leave_out_the_background_as_the_score_does(data, fitted):
    """A very odd patch in the air would be the map's hottest spot while the image score
    ignores it: the map draws the patches the score leaves out at 0."""
    _, test, disc = data
    v = np.asarray(fitted.state_.foreground.direction)
    away = np.random.default_rng(5).normal(size=C)
    away -= (away @ v) / (v @ v) * v  # across the rule's direction: still in the air's band
    odd = test[:2].copy()
    odd[:, 0, 0] += (4.0 * away / np.linalg.norm(away)).astype(np.float32)  # a corner of air
    fg = fitted.foreground_patches(odd)
    assert not fg[:, 0, 0].any()
    maps = fitted.score_maps(odd, size=G, sigma=0)  # the patch grid itself: patch scores
    patches = fitted.score_patches(odd).reshape(maps.shape)
    np.testing.assert_array_equal(maps, np.where(fg, patches, 0))
    assert (patches[:, 0, 0] > patches.reshape(2, -1)[:, 1:].max(axis=1)).all()  # the hottest
    reduced = [m[f].max() for m, f in zip(maps, fg, strict=True)]
    saved = fitted.get_params()  # the shared fixture, as it was
    fitted.set_params(reduce="max")
    try:
        np.testing.assert_allclose(fitted.score_samples(odd), reduced, rtol=1e-6)
    finally:
        fitted.set_params(**saved)


@pytest.mark.parametrize("q", [0.01, 0.05, 0.1, 0.5, 1.0])
def test_score_is_the_top_q_of_the_foreground_patches(data, fitted, q):
    test = data[1]
    saved = fitted.get_params()
    fitted.set_params(q=q)
    try:
        expected = reference(fitted.score_patches(test), fitted.foreground_patches(test), q)
        np.testing.assert_allclose(fitted.score_samples(test), expected, rtol=1e-6)
    finally:
        fitted.set_params(**saved)


def test_the_mask_raises_the_share_of_an_odd_patch(data, fitted):
    """With reduce="mean" the odd patch's weight is 1/|disc| instead of 1/G²: masked scores of
    the abnormal images exceed the unmasked ones by more than the normals' do."""
    train, test, _ = data
    plain = PatchBankDetector(size=60, projection_dim=None, n_folds=3, reduce="mean").fit(train)
    saved = fitted.get_params()
    fitted.set_params(reduce="mean")
    try:
        masked = fitted.score_samples(test)
    finally:
        fitted.set_params(**saved)
    gap_masked = masked[4:].min() - masked[:4].max()
    unmasked = plain.score_samples(test)
    gap_plain = unmasked[4:].min() - unmasked[:4].max()
    assert gap_masked > 0
    assert gap_masked > gap_plain


def test_scores_are_batch_independent_and_jit(data, fitted):
    test = data[1]
    batch = fitted.score_samples(test)
    alone = np.concatenate([fitted.score_samples(test[i : i + 1]) for i in range(len(test))])
    np.testing.assert_array_equal(alone, batch)
    flat = fitted.score_samples(test.reshape(len(test), G * G, C))
    np.testing.assert_allclose(flat, batch, rtol=1e-6)
    jitted = jax.jit(score_bank_detector)(fitted.state_, test)
    np.testing.assert_allclose(np.asarray(jitted), batch, rtol=1e-6)


def test_fit_state_holds_the_rule_of_the_content_ordered_patches(data):
    train = data[0]
    config = BankConfig(size=60, projection_dim=None, n_folds=3, foreground="pca")
    fit = fit_bank_detector(train[::-1], config)  # order does not matter
    again = fit_bank_detector(train, config)
    jax.tree.map(np.testing.assert_array_equal, fit.state.foreground, again.state.foreground)
    core = foreground_fit(train)
    np.testing.assert_allclose(fit.state.foreground.direction, core.direction, atol=1e-5)
    np.testing.assert_allclose(fit.state.foreground.threshold, core.threshold, atol=1e-4)
    np.testing.assert_array_equal(fit.decision_scores[::-1], again.decision_scores)


def test_all_foreground_images_keep_every_patch():
    rng = np.random.default_rng(3)
    tissues = rng.normal(size=(2, C)) * 3.0
    train = tissues[rng.integers(0, 2, (12, G, G))] + rng.normal(scale=0.3, size=(12, G, G, C))
    train = train.astype(np.float32)
    det = PatchBankDetector(size=60, projection_dim=None, n_folds=3, foreground="pca").fit(train)
    plain = PatchBankDetector(size=60, projection_dim=None, n_folds=3).fit(train)
    assert not bool(det.state_.foreground.active)
    assert det.foreground_patches(train).all()
    np.testing.assert_allclose(det.score_samples(train), plain.score_samples(train), rtol=1e-6)


def test_save_load_round_trip(tmp_path, data, fitted):
    test = data[1]
    path = tmp_path / "bank.npz"
    fitted.save(path)
    meta, arrays = fitted.to_arrays()
    assert {k for k in arrays if k.startswith("state.foreground.")} == {
        "state.foreground.direction",
        "state.foreground.center",
        "state.foreground.threshold",
        "state.foreground.floor",
        "state.foreground.active",
    }
    for loaded in (PatchBankDetector.load(path), load_detector(path)):
        assert loaded.foreground == "pca"
        jax.tree.map(np.testing.assert_array_equal, loaded.state_, fitted.state_)
        np.testing.assert_array_equal(loaded.score_samples(test), fitted.score_samples(test))
        np.testing.assert_array_equal(
            loaded.foreground_patches(test), fitted.foreground_patches(test)
        )
    # The parameter and the arrays must agree.
    without = {k: v for k, v in arrays.items() if not k.startswith("state.foreground.")}
    with pytest.raises(ValueError, match="lacks a foreground rule"):
        PatchBankDetector.from_arrays(meta, without)
    with pytest.raises(ValueError, match="holds a foreground rule"):
        PatchBankDetector.from_arrays(
            {**meta, "params": {**meta["params"], "foreground": None}}, arrays
        )
    partial = {k: v for k, v in arrays.items() if k != "state.foreground.active"}
    with pytest.raises(ValueError, match="'state.foreground.active' is missing"):
        PatchBankDetector.from_arrays(meta, partial)


def test_bad_foreground(data):
    train = data[0]
    with pytest.raises(ValueError, match="foreground='mask' is not valid"):
        PatchBankDetector(foreground="mask").fit(train)
    flat = np.concatenate([train.reshape(len(train), G * G, C)] * 2, axis=1)[:, :70]
    with pytest.raises(ValueError, match="70 patches per image is not g × g"):
        PatchBankDetector(size=60, n_folds=3, foreground="pca").fit(flat)


# ---------------------------------------------------------------- test-time flips
def test_flipped_scores_average_the_mirrored_maps(data, fitted):
    test = data[1]
    mirror = test[:, :, ::-1]  # the mirrors' patch features, as a flip=True embedder gives
    maps = fitted.score_patches(test)
    back = fitted.score_patches(mirror)[:, :, ::-1]
    expected = reference((maps + back) / 2, fitted.foreground_patches(test), 0.1)
    got = fitted.score_samples(test, flipped=mirror)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Without positions, a mirror of features is exactly its own image's map flipped: flips
    # change nothing then. With them (the default) the mirrored patches sit elsewhere.
    anywhere = PatchBankDetector(**{**fitted.get_params(), "position": 0}).fit(data[0])
    np.testing.assert_allclose(
        anywhere.score_samples(test, flipped=mirror), anywhere.score_samples(test), rtol=1e-6
    )
    assert not np.allclose(got, fitted.score_samples(test), rtol=1e-3)
    alone = [fitted.score_samples(test[i : i + 1], flipped=mirror[i : i + 1])[0] for i in range(8)]
    np.testing.assert_array_equal(alone, got)
    jitted = jax.jit(score_bank_flipped)(fitted.state_, test, mirror)
    np.testing.assert_allclose(np.asarray(jitted), got, rtol=1e-6)
    # Mirrors that differ from the images (another "view") do change the score.
    other = heads(5, 8)[0]
    expected = reference((maps + fitted.score_patches(other)[:, :, ::-1]) / 2,
                         fitted.foreground_patches(test), 0.1)  # fmt: skip
    np.testing.assert_allclose(fitted.score_samples(test, flipped=other), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="flipped must have the shape of X"):
        fitted.score_samples(test, flipped=test[:3])


def test_a_fused_detector_saves_a_foreground_bank(tmp_path, data, fitted):
    train, test, _ = data
    pooled = {"x": train.mean(axis=(1, 2)), "y": test.mean(axis=(1, 2))}
    parts = {
        "bank": PatchBankDetector(size=60, projection_dim=None, n_folds=3, foreground="pca"),
        "gauss": MSDEDetector(mode="none", n_folds=3, n_components=2),
    }
    det = FusedDetector(parts).fit({"bank": train, "gauss": pooled["x"]})
    x = {"bank": test, "gauss": pooled["y"]}
    det.save(tmp_path / "fused.npz")
    loaded = load_detector(tmp_path / "fused.npz")
    assert loaded.components["bank"].state_.foreground is not None
    np.testing.assert_array_equal(loaded.score_samples(x), det.score_samples(x))
