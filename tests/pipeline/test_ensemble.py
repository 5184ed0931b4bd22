"""The ensemble preset: whole-image Gaussians, cosine kNN and the patch bank, rank-fused."""

import numpy as np
import pytest

from msde_jax import FusedDetector, PatchBankDetector
from msde_jax.pipeline.presets import candidates, ensemble


def test_the_preset_is_a_rank_fused_detector_of_three_feature_sources():
    rank = ensemble(weights="random", image_size=32)
    assert isinstance(rank.detector, FusedDetector)
    assert rank.detector.calibration == "rank"
    assert list(rank.embedder) == list(rank.detector.components) == ["layers", "head", "patches"]
    patches = rank.embedder["patches"]
    assert patches.features == "patches"
    assert rank.embedder["layers"].layers == patches.layers
    assert rank.embedder["head"].layers is None
    parts = rank.detector.components
    assert isinstance(parts["patches"], PatchBankDetector)
    assert parts["layers"].get_params()["covariance"] == "ledoit_wolf"
    head = parts["head"].get_params()
    assert (head["score"], head["score_neighbors"], head["normalize"]) == ("knn", 5, "l2")
    assert head["standardize"] is False
    each = ensemble(weights="random", image_size=32, levels="each", calibration="zscore")
    assert each.detector.calibration == "zscore"
    assert list(each.embedder) == [f"layer:{x}" for x in patches.layers] + ["head", "patches"]
    assert [each.embedder[f"layer:{x}"].layers for x in patches.layers] == [
        (x,) for x in patches.layers
    ]
    with pytest.raises(ValueError, match="levels must be one of"):
        ensemble(levels="some")
    pool = candidates(weights="random", image_size=32)
    for name in ("ensemble:rank", "ensemble:rank-levels", "ensemble:zscore", "knn:head-cosine"):
        assert name in pool
    assert pool["ensemble:zscore"].detector.calibration == "zscore"


def test_the_preset_fits_and_scores_random_features(rng):
    detector = ensemble(weights="random", image_size=32).detector
    detector.components["patches"].set_params(size=40)

    def features(n, shift=0.0):
        return {
            "layers": rng.normal(shift, size=(n, 12)).astype(np.float32),
            "head": rng.normal(1 + shift, size=(n, 16)).astype(np.float32),
            "patches": rng.normal(shift, size=(n, 3, 3, 4)).astype(np.float32),
        }

    detector.fit(features(30))
    test = {
        k: np.concatenate([a, b])
        for (k, a), b in zip(features(8).items(), features(8, 3).values(), strict=True)
    }
    scores = detector.score_samples(test)
    assert scores.shape == (16,)
    assert scores[8:].min() > scores[:8].max()  # shifted images beyond every normal
    # Beyond every normal the tail keeps ranking: a larger shift scores higher.
    far = detector.score_samples(features(4, 6))
    assert far.min() > scores[8:].max()


def test_the_preset_on_images_embeds_once_and_maps_from_its_bank(rng):
    from msde_jax.embedder import share_network
    from msde_jax.pipeline.evaluation import heatmaps

    preset = ensemble(weights="random", image_size=32)
    for component in preset.detector.components.values():
        component.set_params(n_folds=2)  # fewer fold sizes to compile
    preset.detector.components["patches"].set_params(size=30)
    images = [(rng.random((40, 40)) * 255).astype(np.uint8) for _ in range(12)]
    shared = share_network(preset.embedder)
    train = {name: e.embed(images[:10]) for name, e in shared.items()}
    detector = preset.detector.fit(train)
    shown, maps = heatmaps(preset.embedder, detector, images[10:], progress=False)
    assert shown.shape == (2, 32, 32, 3)
    patches = preset.embedder["patches"].embed(images[10:])
    np.testing.assert_allclose(maps, detector.components["patches"].score_maps(patches, size=32))


def test_embedding_an_ensemble_runs_its_network_once_per_image_set(rng, monkeypatch, tmp_path):
    """`embed` of the preset's mapping, and the synthetic validation of the preset, run the
    backbone once per set of images (not once per component)."""
    import msde_jax.embedder as embedder_module
    from msde_jax.pipeline.evaluation import embed
    from msde_jax.pipeline.selection import synthetic_validation

    passes = []
    together = embedder_module.embed_together

    def counted(group, items, **kwargs):
        passes.append(len(items))
        return together(group, items, **kwargs)

    monkeypatch.setattr(embedder_module, "embed_together", counted)
    preset = ensemble(weights="random", image_size=32)
    images = [(rng.random((40, 40)) * 255).astype(np.uint8) for _ in range(12)]
    features = embed(preset.embedder, images, progress=False)
    assert passes == [12]
    assert {n: f.shape for n, f in features.items()} == {
        "layers": (12, 152),
        "head": (12, 1280),
        "patches": (12, 14, 14, 152),
    }
    # A threshold the fusion refuses: the candidate is embedded, then fails to fit at once.
    preset.detector.set_params(layers__threshold="chi2")
    result = synthetic_validation(images, {"e": preset}, progress=False)
    assert "threshold='cross_fit'" in result.scores["e"].error
    assert len(passes) == 3  # one more for the normals, one for the synthetic anomalies
    assert passes[1] == 12
    # A volume through the cache: read once, so its slices share the pass (each member read
    # it again, and the pass ran once per member).
    import nibabel as nib

    volume = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((32, 32, 4)).astype(np.float32) * 100, np.eye(4)), volume)
    cached = embed(preset.embedder, [volume], cache_dir=tmp_path / "cache", progress=False)
    assert passes[3:] == [4]  # one pass of its four slices
    assert {n: f.shape[0] for n, f in cached.items()} == {"layers": 4, "head": 4, "patches": 4}
