"""Label-free configuration choice: the validation split, synthetic AUROC, selection, defaults."""

import importlib.resources

import numpy as np
import pytest

from msde_jax import FusedDetector, MSDEDetector, PatchBankDetector
from msde_jax.core import roc_auc
from msde_jax.pipeline.presets import RECOMMENDED, Candidate, candidates, recommended
from msde_jax.pipeline.selection import select, synthetic_validation, validation_set
from msde_jax.ssl.synthetic import KINDS

SIZE = 16  # the side the fake embedders read (the synthesis works at it too)


@pytest.fixture(scope="module")
def normals():
    path = importlib.resources.files("msde_jax") / "data/pneumoniamnist.npz"
    with np.load(path) as z:
        return list(z["train_normal"][:40])


class PixelEmbedder:
    """Images as their pixels, average-pooled: 4 × 4 patches of 3 channels (``patches``) or
    the 48 values in one row (pooled). Enough for a real fit, with no backbone."""

    def __init__(self, patches: bool):
        self.patches, self.image_size, self.calls = patches, SIZE, []

    def config(self) -> dict:
        return {"backbone": "pixels", "patches": self.patches, "image_size": SIZE}

    def embed(self, items) -> np.ndarray:
        from msde_jax.io.images import prepare

        self.calls.append(len(items))
        x = np.stack([prepare(item, SIZE) for item in items])  # (n, 16, 16, 3)
        x = x.reshape(len(items), 4, 4, 4, 4, 3).mean(axis=(2, 4))  # (n, 4, 4, 3)
        return x if self.patches else x.reshape(len(items), -1)


def test_validation_set_splits_by_content(normals):
    v = validation_set(normals)
    assert (len(v.fit), len(v.normals), len(v.sources)) == (32, 4, 4)
    assert sorted(np.r_[v.fit, v.normals, v.sources].tolist()) == list(range(40))
    assert v.anomalies.shape == (8, 28, 28, 1)  # the normals' own resolution (28 px, gray)
    assert v.anomalies.dtype == np.uint8
    # Normals of different sizes (or image_size=): resized to one side for the synthesis.
    mixed = [n if i % 2 else n[2:-2, 2:-2] for i, n in enumerate(normals)]
    assert validation_set(mixed, fallback_size=SIZE).anomalies.shape == (8, SIZE, SIZE, 3)
    assert set(v.kinds.tolist()) <= set(KINDS)
    # 4 anomalies a half: local and global kinds in turn (the first four kinds were all local)
    assert v.kinds.tolist() == ["anatpaste", "gamma", "cutpaste", "blur"] * 2
    # The split follows the images, not their positions; the anomalies are reproducible.
    reverse = validation_set(normals[::-1])
    assert sorted(39 - reverse.fit) == sorted(v.fit)
    assert sorted(39 - reverse.normals) == sorted(v.normals)
    np.testing.assert_array_equal(validation_set(normals).anomalies, v.anomalies)
    # ... and so do the anomalies (made from the sources in content order).
    np.testing.assert_array_equal(reverse.anomalies, v.anomalies)
    other = validation_set(normals, seed=1)
    same = (other.anomalies[:, None] == v.anomalies[None]).all(axis=(2, 3, 4))
    assert not same.any()  # another seed: none of the same anomalies
    with pytest.raises(ValueError, match="at least 10 training normals"):
        validation_set(normals[:9])
    with pytest.raises(ValueError, match=r"held_out must be in \(0, 0.5\]"):
        validation_set(normals, held_out=0.7)


def test_too_few_groups_or_images_to_hold_out_whole_ones_say_so(normals, capsys):
    """Twelve copies of one image, two images, or two volumes: the split falls back to one by
    one, so held-out normals have a copy (or their volume) in the fitting part, and the
    synthetic AUROC was 1.000 without a word. Whole groups are split without a note."""
    for twelve, groups in (
        ([normals[0]] * 12, None),
        ([normals[i % 2] for i in range(12)], None),
        (normals[:12], np.repeat([0, 1], 6)),
    ):
        validation_set(twelve, groups=groups)
        err = capsys.readouterr().err
        assert "note: synthetic validation: the 12 training normals hold " in err
        assert "so the synthetic-validation AUROC is optimistic" in err
    validation_set(normals[:12], groups=np.repeat([0, 1, 2, 3], 3))
    validation_set(normals[:12])
    assert "note:" not in capsys.readouterr().err


def test_validation_set_refuses_bad_groups_and_counts(normals):
    with pytest.raises(ValueError, match=r"groups must hold one id per sample \(12\)"):
        validation_set(normals[:12], groups=np.arange(5))
    for count in (0, -1, 1.5):
        with pytest.raises(ValueError, match="anomalies_per_normal must be an integer of at"):
            validation_set(normals[:12], anomalies_per_normal=count)


def test_copies_and_groups_stay_in_one_part_of_the_split(normals):
    """Copies of an image (each stored twice) fall in one part: a held-out normal with its
    copy in the fitting part scored 0 against its twin and flattered the validation. Whole
    volumes stay whole even when a 2-D image beside them is a group of its own."""
    from msde_jax.pipeline.selection import _split

    twice = [image for image in normals[:20] for _ in range(2)]
    v = validation_set(twice, held_out=0.225)  # 9 held out: an odd cut fell between copies
    key = lambda i: twice[i].tobytes()  # noqa: E731
    fitted = {key(i) for i in v.fit}
    assert not fitted & {key(i) for i in np.r_[v.normals, v.sources]}
    assert min(len(v.normals), len(v.sources)) >= 2
    # 3 volumes of 10 slices and 4 images; the image of the highest key alone would be a
    # held-out half of 1 (which fell back to slice by slice): more is held out instead.
    keys = np.r_[100:110, 200:210, 300:310, 50, 60, 70, 1000].astype(np.uint64)
    groups = np.r_[np.repeat([0, 1, 2], 10), [3, 4, 5, 6]]
    fit, val, sources = _split(keys, 7, groups)
    assert min(len(val), len(sources)) >= 2
    held = set(groups[np.r_[val, sources]].tolist())
    assert not held & set(groups[fit].tolist())


def test_a_candidate_with_non_finite_scores_is_not_measured_nor_chosen(normals):
    class Broken(MSDEDetector):
        def score_samples(self, x):
            return np.full(len(x), np.nan, np.float32)

    pooled = PixelEmbedder(False)
    pool = {
        "broken": Candidate(pooled, Broken(mode="none", n_components=8)),
        "gaussian": Candidate(pooled, MSDEDetector(mode="none", n_components=8)),
    }
    chosen = select(normals, pool, progress=False)
    broken = chosen.validation.scores["broken"]
    assert np.isnan(broken.auroc)
    assert broken.error == "12 of its 12 scores are not finite"
    assert chosen.name == "gaussian"


def test_synthetic_auroc_is_the_fitted_copy_on_held_out_images(normals):
    pooled, patches = PixelEmbedder(False), PixelEmbedder(True)
    gaussian = MSDEDetector(mode="none", n_components=8)
    bank_top = PatchBankDetector(size=100, n_folds=2)
    bank_max = PatchBankDetector(size=100, n_folds=2, reduce="max")
    # The two-stage coreset's folds shape its bank (chunks of 10–11 images, 160+ patches):
    # the validation's copy (threshold="none") keeps its three folds.
    bank_3 = PatchBankDetector(size=100, n_folds=3)
    pool = {
        "gaussian": Candidate(pooled, gaussian),
        "top": Candidate(patches, bank_top),
        "max": Candidate(patches, bank_max),
        "folds": Candidate(patches, bank_3),
    }
    result = synthetic_validation(normals, pool, progress=False)
    assert list(result.scores) == ["gaussian", "top", "max", "folds"]
    assert result.summary() == "4 held-out normals vs 8 synthetic anomalies, few: a rough AUROC"
    assert patches.calls == [40, 8]  # one embedding per embedder, shared by both banks
    assert result.scores["max"].fit_s == 0.0  # differs only in reduce: shares the fit
    for template in (gaussian, bank_top, bank_max, bank_3):
        assert not hasattr(template, "state_")  # templates stay unfitted
    v = result.validation
    labels = np.r_[np.zeros(4), np.ones(8)]
    for name, (embedder, template) in pool.items():
        x = embedder.embed(normals)
        fitted = type(template)(**template.get_params()).fit(x[v.fit])
        scores = fitted.score_samples(np.concatenate([x[v.normals], embedder.embed(v.anomalies)]))
        got = result.scores[name]
        np.testing.assert_allclose(got.auroc, float(roc_auc(labels, scores)), rtol=1e-6)
        assert set(got.auroc_by_kind) == set(v.kinds.tolist())
    with pytest.raises(ValueError, match="no candidates"):
        synthetic_validation(normals, {})


def test_synthetic_validation_takes_a_fused_candidate(normals):
    pooled, patches = PixelEmbedder(False), PixelEmbedder(True)
    fused = FusedDetector(
        {
            "pooled": MSDEDetector(mode="none", n_components=8, n_folds=2),
            "patches": PatchBankDetector(size=100, n_folds=2),
        },
        calibration="rank",
    )
    pool = {
        "bank": Candidate(patches, PatchBankDetector(size=100, n_folds=2)),
        "fused": Candidate({"pooled": pooled, "patches": patches}, fused),
    }
    result = synthetic_validation(normals, pool, progress=False)
    assert patches.calls == [40, 8]  # the fused candidate shares the bank's embeddings
    assert pooled.calls == [40, 8]
    score = result.scores["fused"]
    assert score.error is None
    assert 0 <= score.auroc <= 1
    assert not hasattr(fused, "state_")
    v = result.validation
    x = {"pooled": pooled.embed(normals), "patches": patches.embed(normals)}
    syn = {"pooled": pooled.embed(v.anomalies), "patches": patches.embed(v.anomalies)}
    refit = FusedDetector(
        {
            "pooled": MSDEDetector(**fused.components["pooled"].get_params()),
            "patches": PatchBankDetector(**fused.components["patches"].get_params()),
        },
        calibration="rank",
    ).fit({k: a[v.fit] for k, a in x.items()})
    s = refit.score_samples({k: np.concatenate([x[k][v.normals], syn[k]]) for k in x})
    labels = np.r_[np.zeros(len(v.normals)), np.ones(len(v.anomalies))]
    assert score.auroc == pytest.approx(float(roc_auc(labels, s)), rel=1e-6)


def test_a_candidate_that_cannot_fit_is_recorded_and_not_selected(normals):
    pool = {
        "needs 50": Candidate(PixelEmbedder(False), MSDEDetector(k=50)),  # 32 fitting normals
        "fits": Candidate(PixelEmbedder(False), MSDEDetector(mode="none", n_components=8)),
    }
    chosen = select(normals, pool, progress=False)
    failed = chosen.validation.scores["needs 50"]
    assert np.isnan(failed.auroc)
    assert "at least 50 training samples" in failed.error
    assert chosen.name == "fits"
    assert chosen.validation.scores["fits"].error is None
    with pytest.raises(ValueError, match="no candidate could be fitted.*needs 50: Fitting needs"):
        select(normals, {"needs 50": pool["needs 50"]}, progress=False)


def test_select_takes_the_best_and_the_first_of_equals(normals):
    same = PatchBankDetector(size=100, n_folds=2)
    pool = {
        "a": Candidate(PixelEmbedder(True), same),
        "b": Candidate(PixelEmbedder(True), PatchBankDetector(size=100, n_folds=2)),
        "c": Candidate(PixelEmbedder(False), MSDEDetector(mode="none", n_components=8)),
    }
    chosen = select(normals, pool, progress=False)
    aurocs = {n: s.auroc for n, s in chosen.validation.scores.items()}
    assert aurocs["a"] == aurocs["b"]  # the same configuration twice
    best = max(aurocs.values())
    assert chosen.auroc == best
    assert chosen.name == next(n for n in pool if aurocs[n] == best)
    assert chosen.candidate is pool[chosen.name]


def test_recommended_is_the_first_candidate():
    rule = recommended(weights="random", image_size=32)
    assert rule.embedder.features == "patches"
    assert isinstance(rule.detector, PatchBankDetector)
    assert rule.detector.get_params() == PatchBankDetector().get_params()
    pool = candidates(weights="random", image_size=32)
    assert next(iter(pool)) == RECOMMENDED
    assert pool[RECOMMENDED].embedder.config() == rule.embedder.config()
    assert pool[RECOMMENDED].detector.get_params() == rule.detector.get_params()
    assert pool["lw:patch-layers"].embedder.layers == rule.embedder.layers
    embedders = [
        e
        for c in pool.values()
        for e in (c.embedder.values() if isinstance(c.embedder, dict) else [c.embedder])
    ]
    assert {e.image_size for e in embedders} == {32}


def test_the_validation_split_keeps_a_volumes_slices_together():
    """Neighbouring slices of a volume look alike: one held out while its neighbour is fitted
    on would flatter the validation (its split was slice by slice)."""
    from msde_jax.pipeline.selection import _split

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 60, dtype=np.uint64)
    volumes = np.repeat(np.arange(8), [5, 9, 6, 8, 7, 10, 8, 7])
    fit, val, sources = _split(keys, 12, volumes)
    assert sorted(np.r_[fit, val, sources].tolist()) == list(range(60))
    parts = [set(volumes[part].tolist()) for part in (fit, val, sources)]
    assert all(parts)
    assert sum(map(len, parts)) == len(set.union(*parts))  # no volume in two parts
    assert len(val) + len(sources) >= 12
    # The same split for the same content in any listing order.
    shuffle = rng.permutation(60)
    again = _split(keys[shuffle], 12, volumes[shuffle])
    for a, b in zip((fit, val, sources), again, strict=True):
        np.testing.assert_array_equal(np.sort(shuffle[b]), a)
    # Images (no groups), or fewer than 3 volumes: one by one, as before.
    alone = _split(keys, 12, None)
    assert [len(part) for part in alone] == [48, 6, 6]
    np.testing.assert_array_equal(_split(keys, 12, volumes % 2)[1], alone[1])
