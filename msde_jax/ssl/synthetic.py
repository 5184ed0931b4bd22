"""Synthetic anomalies made from held-out normal images, to choose a detector without labels.

A detector's configuration (layers, scorer, fusion) can be chosen by how well it separates
held-out normal images from anomalies synthesised out of other held-out normals. Pasted local
defects alone reward local scorers, while real findings are often diffuse (opacities, texture,
shape), so the family mixes local and global changes:

==============  ======  ==================================================================
kind            mask    change
==============  ======  ==================================================================
``anatpaste``   region  a soft patch of a *second* normal blended into the anatomy
``cutpaste``    region  a jittered rectangle of the image pasted elsewhere
``scar``        region  a thin rotated jittered rectangle of the image pasted elsewhere
``opacity``     region  a large soft blob blended towards white or black (an opacity)
``gamma``       ones    a global gamma (contrast) change
``blur``        ones    a global Gaussian blur
``texture``     body    band-limited noise added over the body (a texture change)
``elastic``     ones    a smooth random displacement field, bilinear resampling
``mixture``     ones    an alpha blend of the image and a second normal
==============  ======  ==================================================================

Every kind is a pure function ``(key, image (H, W, C) in [0, 1], ...) -> Augmented(image,
mask)`` with static shapes, deterministic from the key, jittable and vmappable. The mask is
(H, W) float32 in [0, 1] and marks the changed pixels: the soft blend weight of a pasted patch
(the blob's profile for ``opacity``), the body (:func:`body_mask`) for ``texture``, and all
ones for the other global kinds, which change every pixel. Neither the body nor all ones
localises a finding: ``LOCAL_KINDS`` are the kinds whose mask is a region, for pixel-level
metrics (binarise with ``mask > 0``), and ``texture`` is one of ``GLOBAL_KINDS``. Pixels
where a mask is 0 are exactly the input's.

Strengths are drawn uniformly from documented ranges, in units one can check on a picture:
intensities on [0, 1], lengths as fractions of the short image side, so a range means the
same at 28 px and at 224 px; only the sigmas of ``blur`` and of the ``texture`` grain have a
floor in pixels (a blur or grain under about half a pixel is invisible). The rule for every
range: at its weak end the change can just be seen with the source image beside it; at its
strong end the image is still a plausible image (no large saturated areas, no tearing, no
seams). The ranges were set by looking at anomalies made from normal training images only
(16 brain MRIs at 224 px, 16 PneumoniaMNIST images at 28 px), never at abnormal ones; the
median mean absolute change per image there was, MRI / PneumoniaMNIST: opacity 0.014 / 0.010,
gamma 0.083 / 0.105, blur 0.036 / 0.024, texture 0.016 / 0.008, elastic 0.092 / 0.036,
mixture 0.077 / 0.051 (CutPaste 0.019 / 0.014, AnatPaste 0.005 / 0.004, scar 0.0003 /
0.0003). The local kinds keep the published CutPaste / AnatPaste ranges
(``msde_jax.ssl.augment``).

:func:`synthesize` makes a whole set on the device. The normals it is given must be held out
of fitting the detector: an anomaly made from a fitted normal is partly memorised.
"""

import math
from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from msde_jax._exported import Exported
from msde_jax.ssl.augment import (
    ANATOMY,
    Augmented,
    _Bright,
    _Drawn,
    _first_visible,
    _grid,
    _lerp,
    _opening3x3,
    _uniform,
    anatomy_mask,
    anatpaste,
    cutpaste,
    cutpaste_scar,
    otsu_threshold,
)

__all__ = [
    "GLOBAL_KINDS",
    "KINDS",
    "LOCAL_KINDS",
    "SyntheticSet",
    "body_mask",
    "elastic_deform",
    "gamma_contrast",
    "gaussian_blur",
    "mix_normals",
    "opacity",
    "synthesize",
    "synthesize_one",
    "texture_noise",
]

KINDS = (
    "anatpaste",
    "cutpaste",
    "scar",
    "opacity",
    "gamma",
    "blur",
    "texture",
    "elastic",
    "mixture",
)
# Kinds whose mask is a region (for pixel-level metrics); the others change the whole image or
# the whole body.
LOCAL_KINDS = ("anatpaste", "cutpaste", "scar", "opacity")
GLOBAL_KINDS = tuple(kind for kind in KINDS if kind not in LOCAL_KINDS)

_HIGHEST = lax.Precision.HIGHEST  # TF32 matmuls would blur values to ~1e-3.


class SyntheticSet(NamedTuple):
    """A set of synthetic anomalies made by :func:`synthesize`.

    Attributes:
        images: (n, H, W, C) float32 in [0, 1].
        masks: (n, H, W) float32 in [0, 1], the changed pixels (see the module docstring).
        kinds: (n,) int32, ``KINDS[kinds[i]]`` is the kind of anomaly ``i``.
        sources: (n, 2) int32, the index in ``normals`` of the image that was changed and of
            the second normal (used by ``anatpaste`` and ``mixture``; always a different one).
    """

    images: jax.Array
    masks: jax.Array
    kinds: jax.Array
    sources: jax.Array


def _radius(sigma_max: float, n: int) -> int:
    """Static kernel radius for sigmas up to ``sigma_max`` px: 3 sigma, within the image."""
    return max(0, min(math.ceil(3 * sigma_max), n - 1))


def _smoothing_matrix(n: int, sigma: jax.Array, radius: int) -> jax.Array:
    """(n, n) banded Gaussian weights, each row renormalised over the taps inside the image."""
    rows, cols = _grid(n, n)
    offset = rows - cols
    weight = jnp.exp(-0.5 * offset**2 / jnp.maximum(sigma**2, 1e-12))
    weight = jnp.where(jnp.abs(offset) <= radius, weight, 0.0)
    return weight / jnp.sum(weight, axis=1, keepdims=True)


def _smooth(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian smoothing of (H, W, C) ``x``; ``sigma == 0`` is the identity.

    Unlike ``augment._gaussian_blur`` (zero padding, for masks), the kernel is renormalised
    over the taps inside the image, so a constant image stays constant and borders do not
    darken: inside the image (``radius`` px from the border) it is the plain truncated Gaussian.
    """
    along_rows = _smoothing_matrix(x.shape[0], sigma, radius)
    along_cols = _smoothing_matrix(x.shape[1], sigma, radius)
    x = jnp.einsum("ij,jkc->ikc", along_rows, x, precision=_HIGHEST)
    return jnp.einsum("lk,ikc->ilc", along_cols, x, precision=_HIGHEST)


def body_mask(image: ArrayLike, *, anatomy: str = "bright") -> jax.Array:
    """Where the diffuse kinds (``opacity``, ``texture``) act: the body or the lungs.

    ``"bright"``: ``opening3x3(gray > t / 2)`` with ``t`` the Otsu threshold, the whole body
    against a dark background; half the threshold keeps tissue darker than it (T1 grey
    matter, which ``anatomy_mask`` can lose to the skull). ``"dark"``: ``anatomy_mask(image,
    anatomy="dark")``, the lung fields of a chest X-ray, less a band of 6 % of the side along
    the image border (the dark background outside the chest, which the AnatPaste reference
    code removes as components touching the border). An image without any is all body.

    Args:
        image: (H, W, C) in [0, 1].
        anatomy: ``"bright"`` or ``"dark"`` (static).

    Returns:
        (H, W) float32 in {0, 1}.
    """
    image = jnp.asarray(image, jnp.float32)
    if isinstance(anatomy, _Bright):
        both = body_mask(image, anatomy="bright"), body_mask(image, anatomy="dark")
        return jnp.where(anatomy.value, *both)
    if anatomy == "bright":
        gray = jnp.mean(image, axis=-1)
        inside = _opening3x3(gray > otsu_threshold(gray) / 2)
    else:
        h, w = image.shape[:2]
        band = round(0.06 * min(h, w))
        rows, cols = _grid(h, w)
        inner = (rows >= band) & (rows < h - band) & (cols >= band) & (cols < w - band)
        inside = anatomy_mask(image, anatomy=anatomy) & inner
    return jnp.where(jnp.any(inside), inside, True).astype(jnp.float32)


def _ones(image: jax.Array) -> jax.Array:
    return jnp.ones(image.shape[:2], jnp.float32)


def opacity(
    key: jax.Array,
    image: ArrayLike,
    *,
    radius: tuple[float, float] = (0.12, 0.3),
    weight: tuple[float, float] = (0.3, 0.6),
    anatomy: str = "bright",
) -> Augmented:
    """A large soft blob blended towards white or black: a diffuse opacity or lucency.

    The blob is an ellipse with semi-axes ``radius`` (fractions of the short side, uniform and
    independent) and a uniform rotation, with the profile ``max(0, 1 - r^4)^2`` (``r`` the
    elliptic radius: flat near the centre, smooth to 0 at the rim), cut softly to the body:
    times ``s = min(1, 2 smooth(body_mask))`` with a Gaussian of sigma 6 % of the side, which
    fills the gaps of an Otsu mask smaller than that and fades out at its edge. The centre is
    drawn with weights ``s^4``, away from thin parts such as a skull's rim. The image is
    blended towards ``t`` (white or black, 50/50) with peak weight ``a ~ U(weight)``:
    ``(1 - a p) x + a p t`` with ``p`` the cut profile; where that would change no pixel by
    one grey level (1/255) or more (a blob over black background blended towards black), ``t``
    is the other one. At the defaults a mid-grey pixel at the centre moves by 0.15 to 0.3.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        radius: range of each semi-axis, as a fraction of the short image side.
        weight: range of the peak blend weight ``a`` (may be traced).
        anatomy: where the blob may lie, ``"bright"`` or ``"dark"`` (see :func:`body_mask`).

    Returns:
        ``Augmented`` with the cut profile ``p`` (1 at the centre of a blob inside the body) as
        mask.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    side = min(h, w)
    u = _uniform(key, (6,))
    soft_sigma = 0.06 * side
    inside = body_mask(image, anatomy=anatomy)[..., None]
    soft = _smooth(inside, jnp.float32(soft_sigma), _radius(soft_sigma, max(h, w)))[..., 0]
    soft = jnp.minimum(2.0 * soft, 1.0)
    # Inverse-CDF sampling of a centre (a categorical would draw H * W Gumbels).
    cdf = jnp.cumsum((soft**4).reshape(-1))
    index = jnp.minimum(jnp.sum(cdf <= u[0] * cdf[-1]), h * w - 1)
    centre = jnp.stack(jnp.divmod(index, w)).astype(jnp.float32)
    semi = jnp.maximum(_lerp(u[1:3], radius) * side, 0.5)
    cos, sin = jnp.cos(u[3] * jnp.pi), jnp.sin(u[3] * jnp.pi)
    rows, cols = _grid(h, w)
    dy, dx = rows - centre[0], cols - centre[1]
    r2 = ((cos * dy + sin * dx) / semi[0]) ** 2 + ((cos * dx - sin * dy) / semi[1]) ** 2
    profile = jnp.maximum(1.0 - r2**2, 0.0) ** 2 * soft
    target = (u[4] < 0.5).astype(jnp.float32)
    blend = (_lerp(u[5], weight) * profile)[..., None]
    first, second = (
        Augmented(jnp.clip((1.0 - blend) * image + blend * t, 0.0, 1.0), profile)
        for t in (target, 1.0 - target)
    )
    return _first_visible(image, first, second)


def gamma_contrast(
    key: jax.Array, image: ArrayLike, *, gamma: tuple[float, float] = (1.3, 1.8)
) -> Augmented:
    """A global gamma change ``x ** g``: darker mid-tones (``g > 1``) or brighter (``g < 1``).

    ``g`` is log-uniform in ``gamma`` or in its reciprocal range (50/50). Black and white stay
    put; a mid-grey 0.5 moves by 0.09 to 0.21 (to 0.41–0.29 or 0.59–0.68).

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        gamma: range of the exponent above 1 (may be traced).

    Returns:
        ``Augmented`` with an all-ones mask.
    """
    image = jnp.clip(jnp.asarray(image, jnp.float32), 0.0, 1.0)
    u = _uniform(key, (2,))
    log_gamma = _lerp(u[0], (jnp.log(gamma[0]), jnp.log(gamma[1])))
    exponent = jnp.exp(jnp.where(u[1] < 0.5, log_gamma, -log_gamma))
    return Augmented(jnp.power(image, exponent), _ones(image))


def _pixels(fraction: tuple[float, float], floor: tuple[float, float], side: int):
    """A range given as fractions of ``side``, raised to at least ``floor`` px (Python floats)."""
    return max(fraction[0] * side, floor[0]), max(fraction[1] * side, floor[1])


def gaussian_blur(
    key: jax.Array,
    image: ArrayLike,
    *,
    sigma: tuple[float, float] = (1 / 224, 1 / 90),
    min_sigma: tuple[float, float] = (0.5, 1.0),
) -> Augmented:
    """A global Gaussian blur with a sigma uniform in ``sigma`` times the short side.

    Each end of the range is raised to at least ``min_sigma`` px: a blur below half a pixel is
    invisible, and low-resolution images are already at their blur limit. At the defaults
    sigma is 1–2.5 px at 224 px and 0.5–1 px at 28 px. The kernel has a static radius of 3
    sigma (the ranges must be Python floats) and is renormalised at the borders, so a constant
    image is unchanged.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        sigma: range of the blur's sigma, as a fraction of the short image side.
        min_sigma: the least sigma, in pixels, of each end of the range.

    Returns:
        ``Augmented`` with an all-ones mask.
    """
    image = jnp.asarray(image, jnp.float32)
    bounds = _pixels(sigma, min_sigma, min(image.shape[:2]))
    radius = _radius(bounds[1], max(image.shape[:2]))
    std = _lerp(_uniform(key, ()), bounds)
    return Augmented(jnp.clip(_smooth(image, std, radius), 0.0, 1.0), _ones(image))


def texture_noise(
    key: jax.Array,
    image: ArrayLike,
    *,
    amplitude: tuple[float, float] = (0.025, 0.06),
    grain: tuple[float, float] = (1 / 224, 1 / 75),
    min_grain: tuple[float, float] = (0.6, 0.8),
    anatomy: str = "bright",
) -> Augmented:
    """Band-limited noise added over the body (:func:`body_mask`): a change of texture.

    White noise smoothed with a Gaussian whose sigma (the grain size) is uniform in ``grain``
    times the short side, each end raised to at least ``min_grain`` px (finer noise is pixel
    salt-and-pepper rather than texture): 1–3 px at 224 px, 0.6–0.8 px at 28 px. The noise is
    standardised to zero mean and unit standard deviation over the image, scaled by
    ``U(amplitude)`` (its standard deviation in intensity units) and added where
    ``body_mask`` is 1; clipped to [0, 1]. The same field goes into every channel.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        amplitude: range of the noise's standard deviation (may be traced).
        grain: range of the smoothing sigma, as a fraction of the short side (Python floats).
        min_grain: the least sigma, in pixels, of each end of ``grain``.
        anatomy: where the texture changes, ``"bright"`` or ``"dark"`` (see :func:`body_mask`).

    Returns:
        ``Augmented`` with the body mask as mask.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    side = min(h, w)
    # One draw: the smoothed sum of uniforms is close to Gaussian, and one threefry compiles.
    u = _uniform(key, (h * w + 2,))
    bounds = _pixels(grain, min_grain, side)
    noise = _smooth(
        u[2:].reshape(h, w, 1) - 0.5, _lerp(u[0], bounds), _radius(bounds[1], max(h, w))
    )
    noise = (noise - jnp.mean(noise)) / jnp.maximum(jnp.std(noise), 1e-6)
    inside = body_mask(image, anatomy=anatomy)
    added = _lerp(u[1], amplitude) * noise * inside[..., None]
    return Augmented(jnp.clip(image + added, 0.0, 1.0), inside)


def _displacement(u: jax.Array, shape: tuple[int, int], rms: jax.Array, knots: int):
    """A smooth (H, W, 2) displacement field with zero mean and RMS length ``rms`` px.

    Uniform values on a ``knots x knots`` grid, cubic-interpolated to the image.
    """
    field = jax.image.resize(u.reshape(knots, knots, 2) - 0.5, (*shape, 2), "cubic")
    field = field - jnp.mean(field, axis=(0, 1), keepdims=True)
    norm = jnp.sqrt(jnp.mean(jnp.sum(field**2, axis=-1)))
    return field * (rms / jnp.maximum(norm, 1e-12))


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``image`` (H, W, C) sampled bilinearly at (H, W) coordinates clamped to the image."""
    h, w = image.shape[:2]
    rows, cols = jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    r1, c1 = jnp.minimum(r0 + 1, h - 1), jnp.minimum(c0 + 1, w - 1)
    top = (1 - fc) * image[r0, c0] + fc * image[r0, c1]
    bottom = (1 - fc) * image[r1, c0] + fc * image[r1, c1]
    return (1 - fr) * top + fr * bottom


def elastic_deform(
    key: jax.Array,
    image: ArrayLike,
    *,
    amplitude: tuple[float, float] = (0.015, 0.035),
    knots: int = 4,
) -> Augmented:
    """A smooth random elastic deformation, resampled bilinearly (a change of shape).

    The displacement field is cubic-interpolated from uniform values on a ``knots x knots``
    grid (so it varies over about a third of the image at 4 knots: a change of shape rather
    than a wobble), has zero mean (no global shift) and an RMS length of ``U(amplitude)``
    times the short side: 3.4–7.8 px at 224 px, 0.42–0.98 px at 28 px. Coordinates are
    clamped to the image. Amplitude 0 is the identity.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        amplitude: range of the RMS displacement, as a fraction of the short side (may be
            traced).
        knots: control points per side (static).

    Returns:
        ``Augmented`` with an all-ones mask.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    u = _uniform(key, (2 * knots * knots + 1,))
    field = _displacement(u[1:], (h, w), _lerp(u[0], amplitude) * min(h, w), knots)
    rows, cols = _grid(h, w)
    warped = _bilinear(image, rows + field[..., 0], cols + field[..., 1])
    return Augmented(jnp.clip(warped, 0.0, 1.0), _ones(image))


def mix_normals(
    key: jax.Array,
    image: ArrayLike,
    other: ArrayLike,
    *,
    alpha: tuple[float, float] = (0.25, 0.5),
) -> Augmented:
    """A mixture of two normals: ``(1 - a) image + a other`` with ``a ~ U(alpha)``.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        other: (H, W, C) in [0, 1], a different normal image.
        alpha: range of the weight of ``other`` (may be traced).

    Returns:
        ``Augmented`` with an all-ones mask.
    """
    image = jnp.asarray(image, jnp.float32)
    other = jnp.asarray(other, jnp.float32)
    a = _lerp(_uniform(key, ()), alpha)
    return Augmented(jnp.clip((1.0 - a) * image + a * other, 0.0, 1.0), _ones(image))


_MAKERS = {
    "anatpaste": lambda key, x, other, anatomy: anatpaste(key, x, other, anatomy=anatomy),
    "cutpaste": lambda key, x, other, anatomy: cutpaste(key, x),
    "scar": lambda key, x, other, anatomy: cutpaste_scar(key, x),
    "opacity": lambda key, x, other, anatomy: opacity(key, x, anatomy=anatomy),
    "gamma": lambda key, x, other, anatomy: gamma_contrast(key, x),
    "blur": lambda key, x, other, anatomy: gaussian_blur(key, x),
    "texture": lambda key, x, other, anatomy: texture_noise(key, x, anatomy=anatomy),
    "elastic": lambda key, x, other, anatomy: elastic_deform(key, x),
    "mixture": lambda key, x, other, anatomy: mix_normals(key, x, other),
}
assert tuple(_MAKERS) == KINDS


def _check(kinds, anatomy: str) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty selection of {KINDS}, got {kinds!r}.")
    if anatomy not in ANATOMY:
        raise ValueError(f"anatomy must be one of {ANATOMY}, got {anatomy!r}.")
    return kinds


def _check_float(*images: ArrayLike) -> None:
    """Images in [0, 1] are floats: integer pixels (uint8 0-255) would saturate every kind,
    and so would floats on that scale, refused where the values are known (not under a
    trace): above 2 or below −1 (a resampled image may overshoot [0, 1] a little), or not
    finite."""
    for image in images:
        dtype = jnp.result_type(image)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"images must be floats in [0, 1], got {dtype} pixels: divide uint8 images by "
                "255 (msde_jax.io.images.to_float reads any image as floats in [0, 1])."
            )
        if isinstance(image, jax.core.Tracer) or not jnp.size(image):
            continue
        xp = jnp if isinstance(image, jax.Array) else np  # NumPy's compile no program
        lo, hi = (float(v) for v in jax.device_get((xp.min(image), xp.max(image))))
        if not (-1.0 <= lo and hi <= 2.0):  # NaN fails too
            raise ValueError(
                f"images must be floats in [0, 1], got values from {lo:.4g} to {hi:.4g}: "
                "divide 0-255 images by 255 (msde_jax.io.images.to_float reads any image as "
                "floats in [0, 1])."
            )


def synthesize_one(
    key: jax.Array, image: ArrayLike, other: ArrayLike, *, kind: str, anatomy: str = "bright"
) -> Augmented:
    """One synthetic anomaly of ``kind`` at its default strengths (jit with ``kind`` static).

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1], the normal image to change.
        other: (H, W, C) in [0, 1], a different normal (used by ``anatpaste`` and ``mixture``).
        kind: one of ``KINDS``.
        anatomy: ``"bright"`` (tissue on a dark background: MRI, CT) or ``"dark"`` (the lung
            fields of a chest X-ray), for ``anatpaste``, ``opacity`` and ``texture``.

    Returns:
        ``Augmented(image, mask)``, see the module docstring for the masks.
    """
    (kind,) = _check((kind,), anatomy)
    _check_float(image, other)
    return _MAKERS[kind](key, image, other, anatomy)


def synthesize(
    key: jax.Array,
    normals: ArrayLike,
    n: int,
    *,
    kinds: tuple[str, ...] = KINDS,
    anatomy: str = "bright",
    batch_size: int | None = None,
) -> SyntheticSet:
    """``n`` synthetic anomalies from held-out normal images, made on the device.

    Anomaly ``i`` is of kind ``kinds[i % len(kinds)]`` (so every kind is made equally often,
    the first ``n % len(kinds)`` once more), changes normal ``sources[i, 0]`` (uniform) and
    takes its second image from ``sources[i, 1]``, a uniform *different* normal. With
    ``source_key, make_key = jax.random.split(key)`` and ``keys = jax.random.split(make_key,
    n)``, anomaly ``i`` is ``synthesize_one(keys[i], normals[sources[i, 0]],
    normals[sources[i, 1]], kind=kinds[i % len(kinds)], anatomy=anatomy)``. Each kind is
    vmapped over its own anomalies only (no wasted branches), in one jitted program.

    ``normals`` must be held out of fitting the detector that the set is used to choose: an
    anomaly made from a normal the detector was fitted on is partly memorised and scores low.

    Args:
        key: PRNG key.
        normals: (N, H, W, C) float in [0, 1], N >= 2 held-out normal images.
        n: number of anomalies (static).
        kinds: the kinds to cycle through, a selection of ``KINDS`` (static).
        anatomy: ``"bright"`` or ``"dark"``, see :func:`synthesize_one` (traced: both share one
            compiled program).
        batch_size: if given, anomalies are made ``batch_size`` at a time per kind
            (``jax.lax.map``), bounding the memory of intermediates; the result is the same.

    Returns:
        ``SyntheticSet(images, masks, kinds, sources)``.

    Raises:
        ValueError: for unknown kinds or anatomy, ``n < 1``, ``batch_size < 1``, or
            ``normals`` not (N, H, W, C) floats with N >= 2.
    """
    kinds = _check(kinds, anatomy)
    shape = jnp.shape(normals)
    if len(shape) != 4 or shape[0] < 2:
        raise ValueError(f"normals must be (N, H, W, C) with N >= 2, got shape {shape}.")
    _check_float(normals)
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1 or None, got {batch_size}.")
    normals = jnp.asarray(normals, jnp.float32)
    bright = np.asarray(anatomy == "bright")  # traced: both anatomies share one program
    return SyntheticSet(*_synthesizer(int(n), kinds, batch_size)(key, normals, bright))


# How many uniforms each kind draws from its key at its defaults, for an (H, W) image (its one
# draw; ``_uniform`` refuses a maker that asks for more than it was given).
_DRAWS = {
    "anatpaste": lambda h, w: 10,
    "cutpaste": lambda h, w: 8,
    "scar": lambda h, w: 18,  # a second scar where the first is invisible
    "opacity": lambda h, w: 6,
    "gamma": lambda h, w: 2,
    "blur": lambda h, w: 1,
    "texture": lambda h, w: h * w + 2,
    "elastic": lambda h, w: 2 * 4 * 4 + 1,
    "mixture": lambda h, w: 1,
}
assert tuple(_DRAWS) == KINDS
# The kinds that draw at most this many share one draw for every anomaly, as wide as the
# widest of them; a kind that draws more draws its own for its anomalies.
_SHARED_DRAW = 64


@lru_cache(maxsize=8)
def _synthesizer(n: int, kinds: tuple[str, ...], batch_size: int | None) -> Exported:
    """``(key, normals, bright) -> SyntheticSet fields`` for ``n`` anomalies of ``kinds``,
    jitted, its trace kept on disk (:class:`~msde_jax._exported.Exported`)."""
    fun = jax.jit(partial(_synthesize, n=n, kinds=kinds, batch_size=batch_size))
    return Exported(fun, "synthesize", static=(n, kinds, batch_size))


def _draw(keys: jax.Array, size: int) -> jax.Array:
    """(len(keys), size) uniforms, row i drawn from ``keys[i]``."""
    return jax.vmap(lambda key: jax.random.uniform(key, (size,), jnp.float32))(keys)


def _synthesize(key, normals, bright, *, n, kinds, batch_size) -> tuple[jax.Array, ...]:
    # ``bright`` is traced, so both anatomies share one program: a kind that depends on the
    # anatomy makes the masks of both and keeps the right one (``_Bright``).
    count, h, w = normals.shape[:3]
    source_key, make_key = jax.random.split(key)
    u = jax.random.uniform(source_key, (2, n), jnp.float32)
    base = jnp.minimum(jnp.floor(u[0] * count), count - 1).astype(jnp.int32)
    shift = 1 + jnp.minimum(jnp.floor(u[1] * (count - 1)), count - 2).astype(jnp.int32)
    sources = jnp.stack([base, (base + shift) % count], axis=1)
    keys = jax.random.split(make_key, n)
    kind_of = np.arange(n) % len(kinds)
    # Each kind's uniforms are drawn ahead (``_Drawn``): every threefry is a large program to
    # compile. With JAX's default partitionable threefry a wider draw begins with the narrower
    # one, so the kinds that draw few share one draw of every anomaly; otherwise each kind draws
    # its own, as its maker would.
    sizes = {kind: _DRAWS[kind](h, w) for kind in kinds}
    small = [size for size in sizes.values() if size <= _SHARED_DRAW]
    shared = max(small) if small and jax.config.jax_threefry_partitionable else 0
    common = _draw(keys, shared) if shared else None

    groups, parts = [], []
    for position, kind in enumerate(kinds):
        group = np.flatnonzero(kind_of == position)
        if group.size == 0:
            continue

        def make(args, kind=kind):
            values, i, j = args
            return _MAKERS[kind](_Drawn(values), normals[i], normals[j], _Bright(bright))

        values = common[group] if sizes[kind] <= shared else _draw(keys[group], sizes[kind])
        args = (values, sources[group, 0], sources[group, 1])
        if batch_size is None:
            parts.append(jax.vmap(make)(args))
        else:
            parts.append(lax.map(make, args, batch_size=batch_size))
        groups.append(group)
    # Back from kind-grouped order to anomaly order: a static permutation.
    inverse = np.argsort(np.concatenate(groups))
    images = jnp.concatenate([part.image for part in parts])[inverse]
    masks = jnp.concatenate([part.mask for part in parts])[inverse]
    kind_index = jnp.asarray([KINDS.index(kinds[p]) for p in kind_of], jnp.int32)
    return images, masks, kind_index, sources
