"""CutPaste / AnatPaste augmentations: invariants, blend identity, Otsu against scikit-image."""

from functools import partial

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage
from skimage.filters import threshold_otsu

from msde_jax.ssl.augment import (
    TASKS,
    Augmented,
    anatomy_mask,
    anatpaste,
    color_jitter,
    cutpaste,
    cutpaste_scar,
    make_views,
    otsu_threshold,
)

# Every (size, channels) compiles each function once: a few buckets cover 1 and 3 channels.
SHAPES = st.sampled_from([(28, 1), (32, 3), (64, 3)])
SEEDS = st.integers(0, 2**31 - 1)
FEW = settings(max_examples=12, deadline=None)

# jitter is a traced number: always passing it keeps one compilation per shape for both the
# jittered calls and the exact copies (jitter 0) that the content tests locate in the image.
_CUTPASTE, _SCAR, _ANATPASTE = jax.jit(cutpaste), jax.jit(cutpaste_scar), jax.jit(anatpaste)
ANATOMY = jax.jit(anatomy_mask)
MAKE_VIEWS = jax.jit(make_views, static_argnames="task")
OTSU = jax.jit(otsu_threshold, static_argnames="nbins")
COLOR_JITTER = jax.jit(color_jitter)


def cut(key, image, jitter=0.1):
    return _CUTPASTE(key, image, jitter=jnp.float32(jitter))


def scar(key, image, jitter=0.1):
    return _SCAR(key, image, jitter=jnp.float32(jitter))


def anat(key, image, other, jitter=0.1):
    return _ANATPASTE(key, image, other, jitter=jnp.float32(jitter))


def _image(seed: int, size: int, channels: int) -> np.ndarray:
    """A bright noisy ellipse ("anatomy") on a dark noisy background, (size, size, C) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    ry, rx = rng.uniform(0.2, 0.35, 2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    gray = np.where(inside, rng.uniform(0.5, 0.9), rng.uniform(0.0, 0.2))
    image = gray[..., None] + rng.normal(0.0, 0.05, (size, size, channels))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _distinct(seed: int, size: int, channels: int) -> np.ndarray:
    """An image whose pixels are all different, so that a copied pixel can be traced back."""
    values = np.random.default_rng(seed).permutation(size * size) / (size * size)
    return np.repeat(values.reshape(size, size, 1), channels, axis=2).astype(np.float32)


def _check_blend(out: Augmented, image: np.ndarray):
    """Shapes, dtypes, ranges; pixels with mask 0 are exactly the original ones."""
    h, w, c = image.shape
    assert out.image.shape == (h, w, c)
    assert out.mask.shape == (h, w)
    assert out.image.dtype == jnp.float32
    assert out.mask.dtype == jnp.float32
    result, mask = np.asarray(out.image), np.asarray(out.mask)
    assert np.all((result >= 0) & (result <= 1))
    assert np.all((mask >= 0) & (mask <= 1))
    untouched = mask == 0
    np.testing.assert_array_equal(result[untouched], image[untouched])
    return result, mask


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


@FEW
@given(shape=SHAPES, seed=SEEDS)
def test_cutpaste_rectangle(shape, seed):
    size, channels = shape
    image = _image(seed, size, channels)
    result, mask = _check_blend(cut(jax.random.key(seed), image), image)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    rows, cols = _box(mask)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    # A filled axis-aligned rectangle whose area ratio is in range up to rounding of its sides.
    assert mask.sum() == height * width
    slack = height + width
    assert 0.02 * size * size - slack <= height * width <= 0.15 * size * size + slack


@FEW
@given(shape=SHAPES, seed=SEEDS)
def test_cutpaste_content_is_a_patch_of_the_image(shape, seed):
    size, channels = shape
    image = _distinct(seed, size, channels)
    result, mask = _check_blend(cut(jax.random.key(seed), image, jitter=0), image)
    pasted = result[_box(mask)]
    windows = sliding_window_view(image, pasted.shape)
    assert np.all(windows == pasted, axis=(-3, -2, -1)).any()


@FEW
@given(shape=SHAPES, seed=SEEDS)
def test_cutpaste_scar(shape, seed):
    size, channels = shape
    image = _distinct(seed, size, channels)
    result, mask = _check_blend(scar(jax.random.key(seed), image, jitter=0), image)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.sum() >= 1
    # Thin: within the largest scar (16 x 25 px at 256 px), plus a pixel of rounding per side.
    width, length = max(16 / 256 * size, 1) + 1, max(25 / 256 * size, 1) + 1
    assert mask.sum() <= width * length
    rows, cols = _box(mask)
    assert max(rows.stop - rows.start, cols.stop - cols.start) <= np.hypot(width, length)
    # Nearest-neighbour content: every pasted pixel is a pixel of the image.
    assert np.isin(result[mask == 1], image).all()


@FEW
@given(shape=SHAPES, seed=SEEDS)
def test_anatpaste_stays_in_the_anatomy(shape, seed):
    size, channels = shape
    image = _image(seed, size, channels)
    other = _image(seed + 1, size, channels)
    result, mask = _check_blend(anat(jax.random.key(seed), image, other), image)
    anatomy = np.asarray(ANATOMY(image))
    assert anatomy.any()
    assert np.all(mask[~anatomy] == 0)
    # The centre pixel is in the anatomy and in the shape, so something is always pasted.
    assert 0 < mask.max() <= 1.0


@FEW
@given(shape=SHAPES, seed=SEEDS, value=st.floats(0.0, 1.0, width=32))
def test_anatpaste_blend_identity(shape, seed, value):
    size, channels = shape
    image = _image(seed, size, channels)
    # A constant `other` and no jitter make the pasted content known: the constant itself.
    other = np.full_like(image, value)
    result, mask = _check_blend(anat(jax.random.key(seed), image, other, jitter=0), image)
    expected = (1 - mask[..., None]) * image + mask[..., None] * value
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_anatpaste_without_blur_or_anatomy():
    image = _image(0, 32, 3)
    sharp = jax.jit(partial(anatpaste, blur=(0.0, 0.0), alpha=(0.7, 0.7)))
    mask = np.asarray(sharp(jax.random.key(0), image, image[::-1]).mask)
    # sigma 0 is the identity kernel: the mask is the opaque shape and nothing else.
    np.testing.assert_allclose(np.unique(mask), [0.0, 0.7], rtol=1e-6)
    # A black image has no anatomy: it is pasted into anyway, anywhere.
    black = np.zeros_like(image)
    assert not np.asarray(ANATOMY(black)).any()
    masks = [np.asarray(anat(jax.random.key(k), black, image).mask) for k in range(2)]
    assert all(0 < mask.max() <= 1 for mask in masks)
    assert not np.array_equal(*(np.unravel_index(m.argmax(), m.shape) for m in masks))


AUGMENTATIONS = {
    "cutpaste": cut,
    "cutpaste_scar": scar,
    "anatpaste": lambda key, x: anat(key, x, x[::-1]),
}


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_deterministic_per_key(name):
    augment = AUGMENTATIONS[name]
    image = _image(1, 32, 3)
    first, second = augment(jax.random.key(3), image), augment(jax.random.key(3), image)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.mask, second.mask)
    masks = {np.asarray(augment(jax.random.key(k), image).mask).tobytes() for k in range(6)}
    assert len(masks) >= 5


def test_jit_matches_eager():
    # Eager mode compiles every primitive on its own (~0.05 s each, ~170 of them here), so one
    # small size and AnatPaste alone: it goes through every helper but the scar's rotated frame.
    image = _image(2, 28, 1)
    key = jax.random.key(5)
    eager, jitted = anatpaste(key, image, image[::-1]), anat(key, image, image[::-1])
    np.testing.assert_allclose(eager.mask, jitted.mask, atol=1e-6)
    np.testing.assert_allclose(eager.image, jitted.image, atol=1e-6)


def test_float32_under_x64(x64):
    image = _image(3, 28, 1)
    key = jax.random.key(0)
    # AnatPaste goes through nearly every helper.
    out = jax.jit(anatpaste)(key, image, image[::-1])
    assert out.image.dtype == jnp.float32
    assert out.mask.dtype == jnp.float32


@pytest.mark.parametrize(("task", "shape"), [("cutpaste", (28, 1)), ("anatpaste", (32, 3))])
def test_make_views_is_the_vmapped_loop(task, shape):
    size, channels = shape
    batch = 3
    images = np.stack([_image(seed, size, channels) for seed in range(batch)])
    key = jax.random.key(0)
    views, labels = MAKE_VIEWS(key, images, task=task)
    n_views = TASKS[task]
    assert views.shape == (n_views * batch, size, size, channels)
    assert views.dtype == jnp.float32
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, np.repeat(np.arange(n_views), batch))
    np.testing.assert_array_equal(views[:batch], images)
    # View kind k of image i is the per-image function with key split(key, (2, B))[k - 1, i];
    # AnatPaste takes its patch from the next image of the batch.
    keys = jax.random.split(key, (2, batch))
    for i in range(batch):
        if task == "cutpaste":
            expected = [cut(keys[0, i], images[i]), scar(keys[1, i], images[i])]
        else:
            expected = [anat(keys[0, i], images[i], images[(i + 1) % batch])]
        for kind, single in enumerate(expected, start=1):
            np.testing.assert_allclose(views[kind * batch + i], single.image, atol=1e-6)
    if task == "anatpaste":  # the images given as others, as training gives them
        others = images[[2, 2, 0]]
        views, _ = jax.jit(make_views, static_argnames="task")(key, images, task, others=others)
        for i in range(batch):
            expected = anat(keys[0, i], images[i], others[i]).image
            np.testing.assert_allclose(views[batch + i], expected, atol=1e-6)


def test_unknown_task_raises():
    images = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match="anatpaste.*cutpaste"):
        make_views(jax.random.key(0), images, "rotation")
    with pytest.raises(ValueError, match="unknown task 'rotation'"):
        MAKE_VIEWS(jax.random.key(0), images, task="rotation")


@settings(max_examples=15, deadline=None)
@given(
    seed=SEEDS,
    nbins=st.sampled_from([32, 256]),
    means=st.tuples(st.floats(0.1, 0.4), st.floats(0.6, 0.9)),
    fraction=st.floats(0.2, 0.8),
)
def test_otsu_matches_skimage(seed, nbins, means, fraction):
    rng = np.random.default_rng(seed)
    dark = rng.random((32, 32)) < fraction
    gray = np.where(dark, means[0], means[1]) + rng.normal(0.0, 0.08, (32, 32))
    # 0 and 1 present: skimage's bins on [min, max] are then the same as ours on [0, 1].
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32)
    gray[0, 0], gray[-1, -1] = 0.0, 1.0
    ours = float(OTSU(gray, nbins=nbins))
    assert abs(ours - threshold_otsu(gray, nbins=nbins)) <= 1 / nbins + 1e-6
    counts, _ = np.histogram(gray, bins=nbins, range=(0.0, 1.0))
    centres = (np.arange(nbins) + 0.5) / nbins
    assert abs(ours - threshold_otsu(hist=(counts, centres))) <= 1 / nbins + 1e-6


def test_otsu_with_empty_bins():
    # Two spikes: most bins (the first and last included) are empty, no NaN may win.
    gray = np.where(np.arange(64 * 64).reshape(64, 64) % 3 == 0, 0.25, 0.7).astype(np.float32)
    threshold = float(OTSU(gray))
    assert 0.25 <= threshold < 0.7


def test_anatomy_mask_recovers_a_disc():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 <= 18**2
    gray = np.where(disc, 0.75, 0.15) + rng.normal(0.0, 0.08, (64, 64))
    # Isolated bright specks outside the disc are removed by the opening.
    specks = ~disc & (rng.random((64, 64)) < 0.01)
    gray = np.clip(np.where(specks, 1.0, gray), 0.0, 1.0).astype(np.float32)
    image = np.repeat(gray[..., None], 3, axis=2)
    mask = np.asarray(ANATOMY(image))
    assert mask.dtype == bool
    assert mask.shape == (64, 64)
    assert (mask & disc).sum() / (mask | disc).sum() > 0.9
    assert not np.any(mask & specks)


@FEW
@given(shape=SHAPES, seed=SEEDS)
def test_anatomy_mask_matches_scipy_opening(shape, seed):
    size, channels = shape
    image = _image(seed, size, channels)
    gray = jnp.mean(image, axis=-1)  # the same float32 rounding as anatomy_mask's
    foreground = np.asarray(gray > OTSU(gray))
    # Erosion treats the outside as foreground: anatomy touching the border is kept there.
    square = np.ones((3, 3), bool)
    eroded = ndimage.binary_erosion(foreground, square, border_value=1)
    expected = ndimage.binary_dilation(eroded, square, border_value=0)
    np.testing.assert_array_equal(ANATOMY(image), expected)


@FEW
@given(
    seed=SEEDS,
    strength=st.floats(0.0, 0.5),
    value=st.floats(0.05, 0.9),
)
def test_color_jitter(seed, strength, value):
    patch = np.full((8, 8, 3), value, np.float32)
    out = np.asarray(COLOR_JITTER(jax.random.key(seed), patch, strength=strength))
    assert out.shape == patch.shape
    assert out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    # A flat patch is its own contrast pivot: only the brightness factor in [1 - s, 1 + s] acts.
    low, high = (1 - strength) * value - 1e-6, min((1 + strength) * value, 1.0) + 1e-6
    assert np.all((out >= low) & (out <= high))
    image = _image(seed, 28, 3)
    np.testing.assert_allclose(COLOR_JITTER(jax.random.key(seed), image, strength=0.0), image)


def test_dark_anatomy_is_the_other_side_and_anatpaste_stays_in_it():
    yy, xx = np.mgrid[:64, :64]
    lungs = ((yy - 32) ** 2 + (xx - 18) ** 2 <= 12**2) | ((yy - 32) ** 2 + (xx - 46) ** 2 <= 12**2)
    gray = np.where(lungs, 0.2, 0.8).astype(np.float32)
    image = np.repeat(gray[..., None], 3, axis=2)
    dark = np.asarray(anatomy_mask(image, anatomy="dark"))
    assert (dark & lungs).sum() / (dark | lungs).sum() > 0.9
    paste = jax.jit(partial(anatpaste, anatomy="dark"))
    for seed in range(4):
        out = paste(jax.random.key(seed), image, np.zeros_like(image))
        assert np.asarray(out.mask)[~dark].max() == 0
        assert np.asarray(out.mask).max() > 0
    views_fn = jax.jit(make_views, static_argnames=("task", "anatomy"))
    views, _ = views_fn(jax.random.key(0), image[None].repeat(2, 0), "anatpaste", anatomy="dark")
    assert np.all(np.asarray(views)[2:][:, ~dark] == image[~dark])
    with pytest.raises(ValueError, match="anatomy must be one of"):
        anatomy_mask(image, anatomy="lungs")


def test_a_scar_that_would_change_nothing_is_drawn_again():
    from msde_jax.ssl.augment import _Drawn

    image = np.zeros((32, 32, 1), np.float32)
    image[:, 16:] = 0.8  # black background on the left, "tissue" on the right
    # Uniforms: width, length, angle, source (row, col), destination (row, col), jitter (2).
    invisible = [0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5]  # black cut, pasted on black
    visible = [0.5, 0.5, 0.5, 0.1, 0.9, 0.1, 0.1, 0.5, 0.5]  # cut from the right

    def make(values):
        return cutpaste_scar(_Drawn(jnp.asarray(values, jnp.float32)), image, jitter=0.0)

    alone = make(invisible + invisible)
    np.testing.assert_array_equal(alone.image, image)  # both invisible: the second is kept
    drawn_again = make(invisible + visible)
    np.testing.assert_array_equal(drawn_again.image, make(visible + invisible).image)
    assert np.abs(np.asarray(drawn_again.image) - image).max() >= 1 / 255
    # A visible first scar is the one kept, whatever the second.
    np.testing.assert_array_equal(make(visible + visible).image, make(visible + invisible).image)
