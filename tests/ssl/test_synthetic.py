"""Synthetic anomalies: ranges, masks, strengths within their documented ranges, the set.

Compilation dominates on CPU: the whole family is compiled once at (28, 28, 1) with 4 normals
and 11 anomalies (``N``, ``SIZE``, ``N_ANOMALIES``), other paths with a few kinds only, and
the per-kind checks pass their strength ranges as traced numbers (one compilation per kind).
"""

import re
from functools import partial

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from scipy import ndimage

from msde_jax.ssl import augment, synthetic
from msde_jax.ssl.synthetic import (
    KINDS,
    LOCAL_KINDS,
    body_mask,
    elastic_deform,
    gamma_contrast,
    gaussian_blur,
    mix_normals,
    opacity,
    synthesize,
    synthesize_one,
    texture_noise,
)

N, SIZE, N_ANOMALIES = 4, 28, 11
SEEDS = st.integers(0, 2**31 - 1)
FEW = settings(max_examples=10, deadline=None)

GAMMA, MIX, OPACITY = jax.jit(gamma_contrast), jax.jit(mix_normals), jax.jit(opacity)
TEXTURE, ELASTIC = jax.jit(texture_noise), jax.jit(elastic_deform)
BLUR = jax.jit(gaussian_blur, static_argnames=("sigma", "min_sigma"))
BODY = jax.jit(body_mask, static_argnames="anatomy")


def f32(*values):
    """A range as traced float32 scalars: sweeping it never recompiles."""
    return tuple(jnp.float32(v) for v in values)


def _image(seed: int, size: int = SIZE, channels: int = 1) -> np.ndarray:
    """A bright noisy ellipse ("anatomy") on a dark noisy background, (size, size, C) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    ry, rx = rng.uniform(0.25, 0.4, 2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    gray = np.where(inside, rng.uniform(0.4, 0.8), rng.uniform(0.0, 0.15))
    image = gray[..., None] + rng.normal(0.0, 0.08, (size, size, 1))
    return np.clip(np.repeat(image, channels, axis=2), 0.0, 1.0).astype(np.float32)


def _normals(seed: int, count: int = N, size: int = SIZE, channels: int = 1) -> np.ndarray:
    return np.stack([_image(seed + i, size, channels) for i in range(count)])


def _check_set(out, normals, n, kinds=KINDS):
    """Shapes, dtypes, ranges, kinds cycling, sources, and pixels outside the masks unchanged."""
    count, h, w, c = normals.shape
    assert out.images.shape == (n, h, w, c)
    assert out.masks.shape == (n, h, w)
    assert out.kinds.shape == (n,)
    assert out.sources.shape == (n, 2)
    assert out.images.dtype == out.masks.dtype == jnp.float32
    assert out.kinds.dtype == out.sources.dtype == jnp.int32
    images, masks = np.asarray(out.images), np.asarray(out.masks)
    sources = np.asarray(out.sources)
    assert np.all((images >= 0) & (images <= 1))
    assert np.all((masks >= 0) & (masks <= 1))
    expected = [KINDS.index(kinds[i % len(kinds)]) for i in range(n)]
    np.testing.assert_array_equal(out.kinds, expected)
    assert np.all((sources >= 0) & (sources < count))
    assert np.all(sources[:, 0] != sources[:, 1])
    base = normals[sources[:, 0]]
    untouched = masks == 0
    np.testing.assert_array_equal(images[untouched], base[untouched])
    for i, kind in enumerate(np.asarray(out.kinds)):
        if KINDS[kind] not in LOCAL_KINDS + ("texture",):
            assert np.all(masks[i] == 1), KINDS[kind]
        else:
            assert masks[i].max() > 0, KINDS[kind]
    return images, masks, sources


@FEW
@given(seed=SEEDS)
def test_synthesize_every_kind(seed):
    normals = _normals(seed)
    out = synthesize(jax.random.key(seed), normals, N_ANOMALIES)
    images, masks, sources = _check_set(out, normals, N_ANOMALIES)
    # Every kind changes its image (at 28 px a scar may be a single pixel).
    changed = np.abs(images - normals[sources[:, 0]]).max(axis=(1, 2, 3))
    assert np.all(changed > 0)


def test_synthesize_is_the_loop_of_synthesize_one():
    normals = _normals(0)
    key = jax.random.key(7)
    out = synthesize(key, normals, N_ANOMALIES)
    keys = jax.random.split(jax.random.split(key)[1], N_ANOMALIES)
    sources = np.asarray(out.sources)
    one = jax.jit(synthesize_one, static_argnames=("kind", "anatomy"))
    for i in range(N_ANOMALIES):
        single = one(keys[i], *normals[sources[i]], kind=KINDS[i % len(KINDS)])
        # vmapped and single programs fuse differently: float32 rounding apart.
        np.testing.assert_allclose(out.images[i], single.image, atol=1e-5)
        np.testing.assert_allclose(out.masks[i], single.mask, atol=1e-5)


def _threefries(normals, n, kinds):
    """How often the synthesizer's program calls threefry (each call a program to compile)."""
    fun = jax.jit(partial(synthetic._synthesize, n=n, kinds=kinds, batch_size=None))
    text = fun.lower(jax.random.key(0), normals, np.asarray(True)).as_text()
    return len(re.findall(r"call @threefry2x32", text))


def test_the_kinds_share_one_draw():
    """The kinds that draw a few uniforms share one draw for every anomaly (JAX's default
    partitionable threefry: a wider draw begins with the narrower one), ``texture`` draws its
    own; the set is still the loop of ``synthesize_one`` (above). With partitionable threefry
    off, each kind draws its own, and the set is that loop too."""
    normals = _normals(2)
    alone = _threefries(normals, N_ANOMALIES, ("gamma",))
    assert _threefries(normals, N_ANOMALIES, KINDS) == alone + 1  # and texture's
    kinds = ("gamma", "texture", "cutpaste")
    with jax.threefry_partitionable(False):
        assert _threefries(normals, N_ANOMALIES, KINDS) > alone + len(KINDS) // 2
        key = jax.random.key(9)
        out = synthesize(key, normals, 6, kinds=kinds)
        keys = jax.random.split(jax.random.split(key)[1], 6)
        one = jax.jit(synthesize_one, static_argnames=("kind", "anatomy"))
        for i, source in enumerate(np.asarray(out.sources)):
            single = one(keys[i], *normals[source], kind=kinds[i % len(kinds)])
            np.testing.assert_allclose(out.images[i], single.image, atol=1e-5)
            np.testing.assert_allclose(out.masks[i], single.mask, atol=1e-5)


def test_a_kind_given_fewer_uniforms_than_it_draws_is_refused(monkeypatch):
    monkeypatch.setitem(synthetic._DRAWS, "texture", lambda h, w: 70)  # its own draw, too short
    fun = partial(synthetic._synthesize, n=3, kinds=("texture", "gamma"), batch_size=None)
    normals = jax.ShapeDtypeStruct((4, 100, 100, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"10002 uniforms are needed, \(70,\) were drawn"):
        jax.eval_shape(fun, jax.random.key(0), normals, np.asarray(True))


def test_synthesize_deterministic_and_compiled_once():
    normals = _normals(1)
    first = synthesize(jax.random.key(3), normals, N_ANOMALIES)
    program = synthetic._synthesizer(N_ANOMALIES, KINDS, None).fun
    cached = program._cache_size()
    assert cached >= 1
    second = synthesize(jax.random.key(3), normals, N_ANOMALIES)
    other = synthesize(jax.random.key(4), normals + 0.0, N_ANOMALIES)
    assert program._cache_size() == cached
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.images, other.images)


def test_synthesize_on_constant_images():
    levels = (0.0, 0.5, 1.0, 0.3)
    normals = np.stack([np.full((SIZE, SIZE, 1), v, np.float32) for v in levels])
    out = synthesize(jax.random.key(0), normals, N_ANOMALIES)
    _check_set(out, normals, N_ANOMALIES)
    assert np.all(np.isfinite(out.images))


def test_three_channels_dark_anatomy_and_batches():
    # A few kinds only (each compiles into the program): the body-masked ones and a global one.
    kinds = ("opacity", "texture", "elastic", "mixture")
    normals = _normals(2, count=3, size=32, channels=3)
    key = jax.random.key(1)
    out = synthesize(key, normals, 7, kinds=kinds, anatomy="dark")
    images, _, _ = _check_set(out, normals, 7, kinds)
    # Every kind draws one field for all channels: replicated grey stays grey.
    np.testing.assert_array_equal(images[..., 1:], np.repeat(images[..., :1], 2, axis=-1))
    counts = np.bincount(np.asarray(out.kinds), minlength=len(KINDS))
    assert sorted(counts[counts > 0].tolist()) == [1, 2, 2, 2]
    # batch_size 2 does not divide the groups of 2 and 1: the same set.
    batched = synthesize(key, normals, 7, kinds=kinds, anatomy="dark", batch_size=2)
    for a, b in zip(out, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_synthesize_validates():
    normals = _normals(0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="kinds must be"):
        synthesize(key, normals, 4, kinds=("blur", "rotation"))
    with pytest.raises(ValueError, match="kinds must be"):
        synthesize(key, normals, 4, kinds=())
    with pytest.raises(ValueError, match="anatomy must be"):
        synthesize(key, normals, 4, anatomy="lungs")
    with pytest.raises(ValueError, match="N >= 2"):
        synthesize(key, normals[:1], 4)
    with pytest.raises(ValueError, match="N >= 2"):
        synthesize(key, normals[0], 4)
    with pytest.raises(ValueError, match="n must be"):
        synthesize(key, normals, 0)
    with pytest.raises(ValueError, match="batch_size must be"):
        synthesize(key, normals, 4, batch_size=0)
    with pytest.raises(ValueError, match="kinds must be"):
        synthesize_one(key, normals[0], normals[1], kind="rotation")
    # uint8 pixels (0-255) would saturate every kind: refused with what to do.
    pixels = (normals * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="floats in \\[0, 1\\], got uint8 pixels: divide"):
        synthesize(key, pixels, 4)
    with pytest.raises(ValueError, match="got uint8 pixels"):
        synthesize_one(key, pixels[0], normals[1], kind="blur")
    # ... and so would floats on that scale (99 % of such anomalies came out white), or NaN.
    scaled = pixels.astype(np.float32)
    with pytest.raises(ValueError, match="got values from 0 to 2[0-9][0-9]: divide 0-255"):
        synthesize(key, scaled, 4)
    with pytest.raises(ValueError, match="got values from"):
        synthesize_one(key, normals[0], scaled[1], kind="blur")
    with pytest.raises(ValueError, match="got values from"):
        synthesize(key, np.where(normals > 0.5, np.nan, normals), 4)
    overshoot = np.clip(normals * 1.05 - 0.02, -0.02, 1.03)  # a resampled image: accepted
    assert synthesize(key, overshoot, 4).images.shape[0] == 4


@FEW
@given(seed=SEEDS, gamma=st.floats(1.05, 2.5))
def test_gamma_is_a_power_within_its_range(seed, gamma):
    image = _image(seed)
    out = np.asarray(GAMMA(jax.random.key(seed), image, gamma=f32(gamma, gamma)).image)
    candidates = [np.float32(image) ** np.float32(g) for g in (gamma, 1 / gamma)]
    assert min(np.abs(out - c).max() for c in candidates) <= 1e-5
    # |x^g - x| grows with |log g| pixel by pixel: the default range bounds the change.
    default = np.asarray(GAMMA(jax.random.key(seed), image, gamma=f32(1.3, 1.8)).image)
    change = np.abs(default - image).mean()
    low = min(np.abs(image**g - image).mean() for g in (1.3, 1 / 1.3))
    high = max(np.abs(image**g - image).mean() for g in (1.8, 1 / 1.8))
    assert low - 1e-6 <= change <= high + 1e-6


@pytest.mark.parametrize("sigma", [0.7, 1.6])
def test_blur_matches_scipy_inside(sigma):
    image = _image(3)
    fraction = (sigma / SIZE, sigma / SIZE)
    out = BLUR(jax.random.key(0), image, sigma=fraction, min_sigma=(0.0, 0.0)).image
    radius = int(np.ceil(3 * sigma))
    expected = ndimage.gaussian_filter(image[..., 0], sigma, truncate=radius / sigma)
    inner = slice(radius, SIZE - radius)
    np.testing.assert_allclose(out[inner, inner, 0], expected[inner, inner], atol=1e-5)


def test_blur_strength_and_constant_image():
    image = _image(4)
    # At 28 px the defaults are sigma in [0.5, 1.0] px (the floor): the change lies between.
    change = [np.abs(BLUR(jax.random.key(k), image).image - image).mean() for k in range(4)]
    ends = [
        np.abs(ndimage.gaussian_filter(image[..., 0], s, mode="nearest") - image[..., 0])
        for s in (0.5, 1.0)
    ]
    low, high = (e.mean() for e in ends)
    assert all(0.9 * low <= c <= 1.1 * high for c in change)
    flat = np.full_like(image, 0.4)
    np.testing.assert_allclose(BLUR(jax.random.key(0), flat).image, flat, atol=1e-6)


@FEW
@given(seed=SEEDS, amplitude=st.floats(0.01, 0.1))
def test_texture_noise_has_its_amplitude(seed, amplitude):
    flat = np.full((SIZE, SIZE, 1), 0.5, np.float32)  # all body, no clipping
    out = TEXTURE(jax.random.key(seed), flat, amplitude=f32(amplitude, amplitude))
    added = np.asarray(out.image) - flat
    np.testing.assert_array_equal(out.mask, np.ones((SIZE, SIZE)))
    np.testing.assert_allclose(added.std(), amplitude, rtol=1e-3)
    assert abs(added.mean()) <= 1e-5
    # The noise is smooth (band-limited): neighbours are positively correlated.
    assert np.corrcoef(added[1:].ravel(), added[:-1].ravel())[0, 1] > 0.1
    default = np.asarray(TEXTURE(jax.random.key(seed), flat, amplitude=f32(0.025, 0.06)).image)
    assert 0.025 - 1e-4 <= (default - flat).std() <= 0.06 + 1e-4


def test_elastic_identity_and_displacement():
    image = _image(5)
    key = jax.random.key(2)
    np.testing.assert_array_equal(ELASTIC(key, image, amplitude=f32(0.0, 0.0)).image, image)
    # A ramp in x (channel 0) and in y (channel 1): the change is the displacement itself.
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)
    ramps = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None]), axis=-1)
    amplitude = 0.03
    for seed in range(4):
        out = ELASTIC(jax.random.key(seed), ramps, amplitude=f32(amplitude, amplitude)).image
        shift = np.abs(np.asarray(out) - ramps).sum(axis=-1).mean() * (SIZE - 1)
        # mean(|dx| + |dy|) <= sqrt(2) RMS |d|, and clamping at the borders only lowers it.
        assert 0.3 * amplitude * SIZE <= shift <= np.sqrt(2) * amplitude * SIZE + 1e-4
    u = jax.random.uniform(key, (32,))
    field = np.asarray(synthetic._displacement(u, (SIZE, 20), jnp.float32(1.5), 4))
    np.testing.assert_allclose(np.sqrt((field**2).sum(-1).mean()), 1.5, rtol=1e-5)
    np.testing.assert_allclose(field.mean(axis=(0, 1)), 0.0, atol=1e-5)


@FEW
@given(seed=SEEDS, alpha=st.tuples(st.floats(0.0, 0.5), st.floats(0.5, 1.0)))
def test_mixture_is_a_convex_combination(seed, alpha):
    image, other = _image(seed), _image(seed + 1)
    out = np.asarray(MIX(jax.random.key(seed), image, other, alpha=f32(*alpha)).image)
    difference = (other - image).ravel()
    weight = float((out - image).ravel() @ difference / (difference @ difference))
    assert alpha[0] - 1e-5 <= weight <= alpha[1] + 1e-5
    np.testing.assert_allclose(out, (1 - weight) * image + weight * other, atol=1e-5)


def test_opacity_peak_change_and_region():
    flat = np.full((SIZE, SIZE, 1), 0.5, np.float32)
    for seed in range(4):
        out = OPACITY(jax.random.key(seed), flat, weight=f32(0.4, 0.4))
        change = np.abs(np.asarray(out.image) - flat)
        # The centre pixel has profile 1: it moves by weight * |target - 0.5| = 0.2.
        np.testing.assert_allclose(change.max(), 0.2, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out.mask).max(), 1.0, atol=1e-6)
        default = OPACITY(jax.random.key(seed), flat, weight=f32(0.3, 0.6)).image
        assert 0.15 - 1e-6 <= np.abs(np.asarray(default) - flat).max() <= 0.3 + 1e-6


def test_body_mask():
    image = _image(6)
    body = np.asarray(BODY(image))
    assert body.dtype == np.float32
    assert set(np.unique(body)) <= {0.0, 1.0}
    # Everything above half the Otsu threshold: it holds anatomy_mask and a dimmer rim.
    anatomy = np.asarray(jax.jit(augment.anatomy_mask)(image))
    assert np.all(body[anatomy])
    assert body.sum() > anatomy.sum()
    # No anatomy at all: all body, as AnatPaste treats a black image.
    np.testing.assert_array_equal(BODY(np.zeros_like(image)), np.ones((SIZE, SIZE)))
    # "dark": the dark side of the Otsu threshold away from a border band of 6 % (2 px here).
    dark = np.asarray(BODY(image, anatomy="dark"))
    side = np.asarray(
        jax.jit(augment.anatomy_mask, static_argnames="anatomy")(image, anatomy="dark")
    )
    np.testing.assert_array_equal(dark[2:-2, 2:-2], side[2:-2, 2:-2])
    assert dark[2:-2, 2:-2].any()
    border = np.ones_like(dark, bool)
    border[2:-2, 2:-2] = False
    assert not dark[border].any()
    # The anatomy as a traced flag (the synthesizer's one program for both) picks the same.
    flagged_body = jax.jit(lambda x, flag: body_mask(x, anatomy=augment._Bright(flag)))
    flagged_side = jax.jit(lambda x, flag: augment.anatomy_mask(x, anatomy=augment._Bright(flag)))
    for flag, named_body, named_side in ((True, body, anatomy), (False, dark, side)):
        np.testing.assert_array_equal(flagged_body(image, flag), named_body)
        np.testing.assert_array_equal(flagged_side(image, flag), named_side)


def test_jit_matches_eager():
    # Eager mode compiles every primitive on its own: two small kinds with the new helpers
    # (displacement, bilinear sampling, renormalised smoothing).
    image = _image(7)
    key = jax.random.key(5)
    amplitude = f32(0.015, 0.035)  # traced, as in the other elastic tests: one compilation
    pairs = (
        (lambda k, x: elastic_deform(k, x, amplitude=amplitude), ELASTIC),
        (gaussian_blur, BLUR),
    )
    for fn, jitted in pairs:
        kwargs = {"amplitude": amplitude} if jitted is ELASTIC else {}
        eager, compiled = fn(key, image), jitted(key, image, **kwargs)
        np.testing.assert_allclose(eager.image, compiled.image, atol=1e-6)
        np.testing.assert_allclose(eager.mask, compiled.mask, atol=1e-6)


def test_both_anatomies_share_one_compiled_program():
    from msde_jax._compilation import CompileCounter

    rng = np.random.default_rng(11)
    normals = rng.random((5, 24, 24, 1)).astype(np.float32)
    bright = synthesize(jax.random.key(0), normals, 10, anatomy="bright")
    with CompileCounter() as count:
        dark = synthesize(jax.random.key(0), normals, 10, anatomy="dark")
    assert count.requested == 0  # the anatomy is traced, not a static argument
    assert not np.array_equal(np.asarray(bright.masks), np.asarray(dark.masks))


def test_an_opacity_that_would_change_nothing_takes_the_other_target():
    from msde_jax.ssl.augment import _Drawn

    towards_black = jnp.asarray([0.5, 0.5, 0.5, 0.0, 0.9, 0.5], jnp.float32)  # u[4] >= 0.5
    black = np.zeros((SIZE, SIZE, 1), np.float32)
    out = opacity(_Drawn(towards_black), black)
    assert np.asarray(out.image).max() > 0.1  # blended towards white instead
    grey = np.full((SIZE, SIZE, 1), 0.5, np.float32)
    darker = np.asarray(opacity(_Drawn(towards_black), grey).image)
    assert darker.max() <= 0.5
    assert darker.min() < 0.4
