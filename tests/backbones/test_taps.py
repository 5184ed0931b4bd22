"""Named layers (taps) of every backbone, and the pure functions that turn them into features:
PatchCore's neighbourhood average and the bilinear grid resize against NumPy and torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the test extra pins the local CPU build; an oracle only

from msde_jax.backbones.registry import BACKBONES, backbone_spec
from msde_jax.backbones.taps import (
    bilinear_matrix,
    local_average,
    patch_features,
    pooled_layers,
    resize_bilinear,
)
from msde_jax.backbones.variables import abstract_variables

# The maps each network already returned as ``stages`` (pinned by the torch-reference and
# ImageNet tests), by the name the taps give them.
STAGE_NAMES = {
    "mobilenet_v2": ["features.1", "features.3", "features.6", "features.13", "features.18"],
    "efficientnet_lite0": ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_conv_head"],
    "efficientnet_lite1": ["_blocks.0", "_blocks.3", "_blocks.6", "_blocks.14", "_conv_head"],
    "efficientnet_lite2": ["_blocks.0", "_blocks.3", "_blocks.6", "_blocks.14", "_conv_head"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "resnet34": ["layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["layer1", "layer2", "layer3", "layer4"],
    "dinov2_vits14": ["blocks.2", "blocks.5", "blocks.8", "blocks.11"],
    "dinov2_vitb14": ["blocks.2", "blocks.5", "blocks.8", "blocks.11"],
    "dinov2_vits14_focus": ["blocks.2", "blocks.5", "blocks.8", "blocks.11"],
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_taps_have_the_documented_names_and_shapes(backbone):
    spec = backbone_spec(backbone)
    module = spec.build(0)
    size = 70 if spec.patch > 1 else 72  # not a multiple of 32: sizes round up
    variables = abstract_variables(module, size)
    found = {}

    def forward(variables, x):
        out = module.apply(variables, x)
        # Inside the trace the taps and stages are the same tracers when they are one array.
        found["stages"] = [
            next((k for k, t in out.taps.items() if t is s), None) for s in out.stages
        ]
        return out

    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    out = jax.eval_shape(forward, variables, x)
    got = {name: tap.shape for name, tap in out.taps.items()}
    want = {name: (2, -(-size // s), -(-size // s), c) for name, (s, c) in spec.layers.items()}
    assert got == want
    assert found["stages"] == STAGE_NAMES[backbone]
    assert set(spec.patch_layers) <= set(spec.layers)
    strides = [s for s, _ in spec.layers.values()]
    assert strides == sorted(strides)  # listed shallow to deep


def test_torchvision_indices_of_mobilenet_v2():
    layers = backbone_spec("mobilenet_v2").layers
    assert list(layers) == [f"features.{i}" for i in range(19)]
    assert layers["features.13"] == (16, 96)  # the last 96-channel block
    assert layers["features.16"] == (32, 160)  # the last 160-channel block
    assert layers["features.17"] == (32, 320)
    assert layers["features.18"] == (32, 1280)  # the 1×1 head
    assert layers["features.6"] == (8, 32)


# --------------------------------------------------------------------------- NumPy oracles


def local_average_reference(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over size×size windows with zeros beyond the border, always divided by size²."""
    p = size // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros(x.shape, np.float64)
    for dy in range(size):
        for dx in range(size):
            out += padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
    return out / size**2


def bilinear_matrix_reference(n_in: int, n_out: int) -> np.ndarray:
    """torch's 1-d bilinear map (align_corners=False): half-pixel centres, edges clamped."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        left = min(int(np.floor(src)), n_in - 1)
        right = min(left + 1, n_in - 1)
        t = src - left
        matrix[i, left] += 1 - t
        matrix[i, right] += t
    return matrix


def resize_reference(x: np.ndarray, size: int) -> np.ndarray:
    rows = bilinear_matrix_reference(x.shape[1], size)
    cols = bilinear_matrix_reference(x.shape[2], size)
    return np.einsum("ia,jb,nabc->nijc", rows, cols, x.astype(np.float64))


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def from_torch(t: torch.Tensor) -> np.ndarray:
    return t.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("hw", [(7, 7), (4, 6), (1, 1), (2, 3)])
def test_local_average_matches_numpy_and_anomalib(size, hw):
    x = np.random.default_rng(size).normal(size=(2, *hw, 3)).astype(np.float32)
    got = np.asarray(jax.jit(local_average, static_argnums=1)(jnp.asarray(x), size))
    np.testing.assert_allclose(got, local_average_reference(x, size), rtol=1e-5, atol=1e-6)
    # anomalib's PatchCore: torch.nn.AvgPool2d(3, 1, 1), count_include_pad=True.
    pool = torch.nn.AvgPool2d(size, 1, size // 2)
    np.testing.assert_allclose(got, from_torch(pool(to_torch(x))), rtol=1e-5, atol=1e-6)


def test_local_average_borders_count_the_zero_padding():
    x = np.ones((1, 4, 4, 1), np.float32)
    got = np.asarray(local_average(jnp.asarray(x), 3))[0, :, :, 0]
    assert got[0, 0] == pytest.approx(4 / 9)  # a corner sees 4 of 9 pixels
    assert got[0, 1] == pytest.approx(6 / 9)
    assert got[1, 1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(7, 14), (28, 14), (16, 14), (13, 14), (1, 14), (2, 3), (5, 3)]
)
def test_resize_bilinear_matches_numpy_torch_and_jax_image(n_in, n_out):
    x = np.random.default_rng(n_in).normal(size=(2, n_in, n_in, 3)).astype(np.float32)
    got = np.asarray(jax.jit(resize_bilinear, static_argnums=1)(jnp.asarray(x), n_out))
    assert got.shape == (2, n_out, n_out, 3)
    np.testing.assert_allclose(got, resize_reference(x, n_out), rtol=1e-6, atol=1e-6)
    torch_out = torch.nn.functional.interpolate(
        to_torch(x), size=(n_out, n_out), mode="bilinear", align_corners=False
    )
    # torch and jax.image.resize compute the same map with float32 sample positions (~3e-6).
    np.testing.assert_allclose(got, from_torch(torch_out), rtol=1e-5, atol=1e-5)
    ours = jax.image.resize(x, (2, n_out, n_out, 3), "linear", antialias=False)
    np.testing.assert_allclose(got, np.asarray(ours), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        bilinear_matrix(n_in, n_out), bilinear_matrix_reference(n_in, n_out), atol=1e-7
    )


def test_resize_keeps_a_map_of_the_grid_size_and_halving_is_a_block_mean():
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(resize_bilinear(jnp.asarray(x), 8)), x)
    half = np.asarray(resize_bilinear(jnp.asarray(x), 4))
    blocks = x.reshape(1, 4, 2, 4, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(half, blocks, rtol=1e-5, atol=1e-6)


def test_patch_features_and_pooled_layers():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    b = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
    maps = [jnp.asarray(a), jnp.asarray(b).astype(jnp.bfloat16)]
    got = jax.jit(patch_features, static_argnames=("grid", "aggregate"))(maps, grid=5, aggregate=3)
    assert got.shape == (2, 5, 5, 10)
    assert got.dtype == jnp.float32
    b16 = np.asarray(maps[1].astype(jnp.float32))
    want = np.concatenate(
        [
            resize_reference(local_average_reference(a, 3), 5),
            resize_reference(local_average_reference(b16, 3), 5),
        ],
        axis=-1,
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    eager = patch_features(maps, grid=5, aggregate=3)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(got), rtol=1e-6, atol=1e-6)
    pooled = pooled_layers(maps)
    assert pooled.shape == (2, 10)
    assert pooled.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(pooled),
        np.concatenate([a.mean(axis=(1, 2)), b16.mean(axis=(1, 2))], axis=-1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_abstract_variables_are_traced_once_per_network_and_size(monkeypatch):
    """Every random or adapted Embedder needs its network's variable shapes; equal networks
    at one image size trace the initialisation once, and each caller gets its own tree."""
    from msde_jax.backbones import variables as module_variables

    traced = []
    eval_shape = jax.eval_shape

    def counting(fun, *args):
        traced.append(args[-1].shape)
        return eval_shape(fun, *args)

    monkeypatch.setattr(module_variables.jax, "eval_shape", counting)
    spec = backbone_spec("resnet18")
    first = abstract_variables(spec.build(0), 41)  # a size no other test asks for
    first["params"].clear()  # the caller's own containers
    again = abstract_variables(spec.build(0), 41)
    assert traced == [(1, 41, 41, 3)]
    assert again["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    abstract_variables(spec.build(0), 43)
    assert traced == [(1, 41, 41, 3), (1, 43, 43, 3)]
