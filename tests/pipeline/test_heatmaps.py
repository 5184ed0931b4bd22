"""Heatmap pictures and the heatmaps() API: inputs checked, volumes read as embed reads them."""

import numpy as np
import pytest

from msde_jax.pipeline.heatmaps import write_heatmaps


class PatchEmbedder:
    """A patch embedder for heatmaps(): 4 × 4 patches of 3 channels, the image's block means."""

    backbone, image_size, output_shape = "fake", 8, (4, 4, 3)

    def __init__(self):
        self.calls: list[int] = []

    def config(self) -> dict:
        return {"backbone": self.backbone}

    def preprocess(self, item, name=None):
        img = np.asarray(item, np.float32)
        img = img / max(float(img.max()), 1.0)
        return np.repeat(img[:8, :8, None], 3, axis=-1)

    def embed(self, items) -> np.ndarray:
        self.calls.append(len(items))
        pics = np.stack([self.preprocess(i) for i in items])
        return pics.reshape(len(items), 4, 2, 4, 2, 3).mean(axis=(2, 4))


def test_overlay_inputs_are_checked_and_grey_or_integer_images_read():
    """Maps of another size than the images were drawn in a corner, grey (n, H, W) images
    in false colour and uint8 ones clipped to white; no image gave NumPy's reduction error."""
    from msde_jax.pipeline.heatmaps import overlay_inputs

    maps = np.zeros((2, 4, 4), np.float32)
    gray = np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 4, 4)
    images, _ = overlay_inputs(gray, maps)
    assert images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(images[..., 2], gray)
    u8 = (gray * 255).astype(np.uint8)
    images, _ = overlay_inputs(u8[..., None], maps)
    np.testing.assert_allclose(images[..., 0], u8 / 255, atol=1e-7)
    for bad_images, bad_maps, match in (
        (np.zeros((2, 32, 32, 3)), maps, r"maps of shape \(2, 4, 4\) for images of shape"),
        (gray * 2, maps, r"must lie in \[0, 1\]"),
        (np.zeros((0, 4, 4, 3)), np.zeros((0, 4, 4)), "n ≥ 1"),
        (np.zeros((2, 4, 4, 2)), maps, "pass \\(n, H, W, 3\\)"),
        (gray, maps + np.nan, "NaN or infinite"),
    ):
        with pytest.raises(ValueError, match=match):
            overlay_inputs(bad_images, bad_maps)


def test_write_heatmaps_refuses_maps_of_another_size(tmp_path):
    with pytest.raises(ValueError, match="one map of the image's height and width"):
        write_heatmaps(
            tmp_path, np.zeros((1, 32, 32, 3)), np.zeros((1, 224, 224)), names=["a.png"],
            scores=np.zeros(1), threshold=0.5,
        )  # fmt: skip
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="n ≥ 1"):
        write_heatmaps(tmp_path, np.zeros((0, 4, 4, 3)), np.zeros((0, 4, 4)), names=[],
                       scores=np.zeros(0), threshold=0.5)  # fmt: skip


def test_gaussian_blur_of_integer_maps_is_that_of_their_floats():
    """The kernel was cast to the maps' integer type: every weight 0, every map 0."""
    from msde_jax.core.anomaly_maps import gaussian_blur

    maps = np.full((1, 4, 4), 5, np.int32)
    maps[0, 1, 2] = 200
    want = np.asarray(gaussian_blur(maps.astype(np.float32), 1.0))
    np.testing.assert_allclose(np.asarray(gaussian_blur(maps, 1.0)), want, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(gaussian_blur(maps.astype(np.uint8), 1.0)), want, rtol=1e-6
    )


def test_heatmaps_of_a_volume_path_are_its_slices(tmp_path, rng):
    """A volume's path was embedded as its slices, then read as one picture: an error after
    every slice was embedded and scored."""
    from testing import write_nifti

    from msde_jax import PatchBankDetector
    from msde_jax.io.inputs import expand_volumes
    from msde_jax.pipeline.evaluation import heatmaps

    embedder = PatchEmbedder()
    train = embedder.embed(list(rng.random((8, 8, 8))))
    detector = PatchBankDetector(size=20, n_folds=2).fit(train)
    volume = write_nifti(tmp_path / "v.nii.gz", rng.integers(0, 400, (5, 8, 8)).astype(np.int16))
    images, maps = heatmaps(embedder, detector, [volume], progress=False)
    slices = expand_volumes([volume]).items
    assert images.shape == (len(slices), 8, 8, 3)
    assert maps.shape == (len(slices), 8, 8)
    alone, _ = heatmaps(embedder, detector, slices, progress=False)
    np.testing.assert_array_equal(images, alone)
