"""The CPU depthwise convolution equals XLA's grouped convolution."""

import numpy as np
import pytest
from jax import lax

from msde_jax.backbones._layers import depthwise_conv


@pytest.mark.parametrize(
    ("k", "stride", "pad"),
    [(3, 1, (1, 1)), (3, 2, (0, 1)), (5, 2, (1, 2)), (5, 1, (2, 2)), (3, 2, (1, 1))],
)
@pytest.mark.parametrize("size", [7, 8])
def test_depthwise_matches_grouped_conv(k, stride, pad, size):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.normal(size=(2, size, size + 1, 6)).astype(np.float32)
    w = rng.normal(size=(k, k, 1, 6)).astype(np.float32)
    padding = (pad, pad)
    want = lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=6,
    )
    got = depthwise_conv(x, w, stride, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_random_vit_variables_let_the_image_through():
    # Layer scales drawn as 0 made every block the identity: one embedding for every image.
    import jax

    from msde_jax.backbones.variables import random_variables
    from msde_jax.backbones.vit import ViT

    vit = ViT(dim=16, depth=1, heads=2, pos_grid=2)
    variables = random_variables(vit, 28)
    np.testing.assert_array_equal(variables["params"]["layer_0"]["layer_scale1"], np.ones(16))
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
    pooled = np.asarray(jax.jit(vit.apply)(variables, x).pooled)
    assert np.abs(pooled[0] - pooled[1]).max() > 1e-3
