"""Anomaly maps: upsampling and blurring patch scores (reference: SciPy's gaussian_filter)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from msde_jax.core.anomaly_maps import DEFAULT_SIGMA, gaussian_blur, sigma_for, upsample_maps


def test_blur_matches_scipy_with_replicated_borders(rng):
    x = rng.random((3, 40, 50)).astype(np.float32)
    ours = np.asarray(gaussian_blur(x, 2.0))
    ref = np.stack([gaussian_filter(a, 2.0, mode="nearest", truncate=4.0) for a in x])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(gaussian_blur(x, 0.0)), x)
    # A σ far below a pixel is no blur, however small (one that underflows float32 gave NaN).
    for tiny in (0.005, 1e-30, 1e-50):
        np.testing.assert_array_equal(np.asarray(gaussian_blur(x, tiny)), x)
    np.testing.assert_allclose(np.asarray(gaussian_blur(x, 0.02)), x, rtol=1e-6)


def test_upsample_shapes_units_and_sigma(rng):
    patches = rng.random((2, 14, 14)).astype(np.float32)
    maps = np.asarray(upsample_maps(patches, 224))
    assert maps.shape == (2, 224, 224)
    assert maps.dtype == np.float32
    assert sigma_for(224) == DEFAULT_SIGMA
    assert sigma_for(112) == DEFAULT_SIGMA / 2
    # A constant score map stays that constant: the units are the patch scores'.
    np.testing.assert_allclose(
        np.asarray(upsample_maps(np.full((1, 14, 14), 3.0), 64)), 3.0, rtol=1e-6
    )
    # The blur keeps the mean (up to the border) and lowers the peak.
    spike = np.zeros((1, 14, 14), np.float32)
    spike[0, 7, 7] = 1.0
    sharp, smooth = upsample_maps(spike, 224, 0.0), upsample_maps(spike, 224)
    assert float(smooth.max()) < float(sharp.max())
    np.testing.assert_allclose(float(smooth.mean()), float(sharp.mean()), rtol=1e-3)
    peak = np.unravel_index(int(np.argmax(smooth[0])), (224, 224))
    assert all(abs(p - 7.5 * 16) <= 8 for p in peak)  # patch (7, 7) covers pixels 112-127
    with pytest.raises(ValueError, match=r"\(m, g, g\)"):
        upsample_maps(np.zeros((14, 14)), 32)
