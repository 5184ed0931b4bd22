"""On-device augmentations for self-supervised proxy tasks: CutPaste and AnatPaste.

CutPaste (Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and
Localization", CVPR 2021) cuts a rectangle (area ratio U(0.02, 0.15), aspect ratio log-uniform
in [0.3, 1/0.3]) from a random place of an image, colour-jitters it and pastes it elsewhere; its
"scar" variant pastes a thin rectangle rotated by U(-45, 45) degrees. AnatPaste (Sato et al.,
"AnatPaste: Anatomy-aware self-supervised learning for anomaly detection in chest
radiographs", iScience 2023) blends the patch in through an anatomy mask (Otsu threshold plus a
morphological opening), centred on a random anatomy pixel, shaped as an ellipse or a rectangle
with softened edges and a random opacity.

Every function is pure JAX with static shapes (sizes and positions are traced integers, masks
are comparisons of coordinate grids, content is gathered with clipped index grids), so one batch
of views is made inside ``jax.jit`` under ``jax.vmap`` without host round trips. Options are
numbers; ``aspect_ratio`` and ``blur`` must be Python floats (they set a log and the static blur
radius), the others may be traced. Pixel sizes are given as fractions of a 256-px image side and
scaled by the short side of the actual image, so the same defaults work at 28 px and at 224 px.

Choices that differ from the papers' reference code:

- AnatPaste takes its patch from *another* normal image: copying a region of the same image onto
  itself at another place is often invisible on symmetric anatomy, while the other image's
  texture and intensity still stay within the normal distribution.
- No CLAHE and no connected-component cleanup of the anatomy mask: both need data-dependent
  shapes or loops; a 3x3 opening removes the isolated pixels that matter for picking a centre.
- The Gaussian blur is a separable convolution with a static radius (from the image side and the
  largest sigma) and a traced sigma, written as two banded matrix products.
"""

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

__all__ = [
    "TASKS",
    "Augmented",
    "ANATOMY",
    "anatomy_mask",
    "anatpaste",
    "color_jitter",
    "cutpaste",
    "cutpaste_scar",
    "make_views",
    "otsu_threshold",
]

# Proxy task -> number of classes (view kinds) that ``make_views`` produces.
TASKS: dict[str, int] = {"anatpaste": 2, "cutpaste": 3}


class Augmented(NamedTuple):
    """One augmented image (H, W, C) and its blend mask.

    Attributes:
        image: (H, W, C) float32 in [0, 1],
            ``(1 - mask[..., None]) * original + mask[..., None] * pasted_content``.
        mask: (H, W) float32 in [0, 1], the blend weight of the pasted content per pixel.
    """

    image: jax.Array
    mask: jax.Array


class _Drawn(NamedTuple):
    """Uniforms drawn ahead from a key, standing in for that key in a maker: its one draw
    ``_uniform(drawn, shape)`` is the first ``prod(shape)`` of them. With JAX's default
    partitionable threefry (``jax_threefry_partitionable``), ``jax.random.uniform(key, (m,))``
    begins with ``jax.random.uniform(key, (k,))`` for every k <= m, so a maker given
    ``_Drawn(jax.random.uniform(key, (m,)))`` makes what it makes from ``key``: many anomalies
    can share one wide draw, one threefry to compile (:func:`msde_jax.ssl.synthetic.synthesize`).
    """

    values: jax.Array


def _uniform(key: "jax.Array | _Drawn", shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.uniform(key, shape, float32)``, or the first values of drawn ones."""
    if not isinstance(key, _Drawn):
        return jax.random.uniform(key, shape, jnp.float32)
    size = math.prod(shape)
    if key.values.ndim != 1 or key.values.shape[0] < size:
        raise ValueError(f"{size} uniforms are needed, {key.values.shape} were drawn.")
    return key.values[:size].reshape(shape)


class _Bright(NamedTuple):
    """The anatomy as a traced flag (``True``: ``"bright"``), in place of the static string:
    a maker given it makes the masks of both anatomies and keeps this one's, so one program
    serves both (:func:`msde_jax.ssl.synthetic.synthesize`)."""

    value: jax.Array


def otsu_threshold(gray: ArrayLike, *, nbins: int = 256) -> jax.Array:
    """Otsu's threshold of a grayscale image over ``nbins`` equal bins on [0, 1].

    Maximises the between-class variance ``w0 w1 (mu0 - mu1)^2`` over the bin boundaries and
    returns the centre of the last bin of the dark class, like ``skimage.filters.threshold_otsu``
    (which bins [min, max] of the image instead of [0, 1]).

    Args:
        gray: (H, W) intensities in [0, 1].
        nbins: number of histogram bins (static).

    Returns:
        Scalar float32 threshold; foreground is ``gray > threshold``.
    """
    gray = jnp.asarray(gray, jnp.float32).reshape(-1)
    bins = jnp.clip(jnp.floor(gray * nbins), 0, nbins - 1).astype(jnp.int32)
    # Raw counts: their prefix sums are exact integers in float32, so an empty class is exactly 0.
    counts = jnp.bincount(bins, length=nbins).astype(jnp.float32)
    centres = (jnp.arange(nbins, dtype=jnp.float32) + 0.5) / nbins
    # Dark-class sums from the left and bright-class sums from the right, as skimage does (a
    # difference with the total would cancel), in one cumulative sum.
    terms = jnp.stack([counts, counts * centres])
    cumulative = jnp.cumsum(jnp.concatenate([terms, terms[:, ::-1]]), axis=1)
    w0, sum0 = cumulative[0, :-1], cumulative[1, :-1]
    w1, sum1 = cumulative[2, -2::-1], cumulative[3, -2::-1]
    # Empty classes (common with [0, 1] bins) have no mean; their variance term is 0.
    mu0 = sum0 / jnp.maximum(w0, 1.0)
    mu1 = sum1 / jnp.maximum(w1, 1.0)
    between = jnp.where((w0 > 0) & (w1 > 0), w0 * w1 * (mu0 - mu1) ** 2, 0.0)
    return centres[jnp.argmax(between)]


def _opening3x3(mask: jax.Array) -> jax.Array:
    """Binary opening with a 3x3 square: a 3x3 minimum (erosion), then a 3x3 maximum (dilation).

    The windows are padded with each reduction's identity, so the image border counts as
    foreground for the erosion (anatomy touching the border is not eaten from that side) and
    as background for the dilation.
    """
    window = ((3, 3), (1, 1), "SAME")
    one, zero = jnp.float32(1), jnp.float32(0)
    eroded = lax.reduce_window(mask.astype(jnp.float32), one, lax.min, *window)
    return lax.reduce_window(eroded, zero, lax.max, *window) > 0


ANATOMY = ("bright", "dark")


def anatomy_mask(image: ArrayLike, *, anatomy: str = "bright") -> jax.Array:
    """The anatomy of an image, AnatPaste's Otsu mask.

    ``"bright"`` takes the side above the threshold: tissue against a dark background (brain
    MRI, CT). ``"dark"`` takes the side below: the lung fields of a chest radiograph, where the
    AnatPaste reference code pastes (it also removes dark regions touching the image border,
    which needs connected components and is left out here).

    Args:
        image: (H, W, C) in [0, 1].
        anatomy: ``"bright"`` or ``"dark"`` (static).

    Returns:
        (H, W) bool: ``opening3x3(gray > t)`` (or ``gray <= t``) with ``t`` the Otsu threshold of
        ``gray``, the channel mean.
    """
    if not isinstance(anatomy, _Bright) and anatomy not in ANATOMY:
        raise ValueError(f"anatomy must be one of {ANATOMY}, got {anatomy!r}.")
    gray = jnp.mean(jnp.asarray(image, jnp.float32), axis=-1)
    above = gray > otsu_threshold(gray)
    if isinstance(anatomy, _Bright):
        return _opening3x3(jnp.where(anatomy.value, above, ~above))
    return _opening3x3(above if anatomy == "bright" else ~above)


def _lerp(u: jax.Array, bounds: tuple[float, float]) -> jax.Array:
    """Maps uniforms ``u`` in [0, 1) onto ``[bounds[0], bounds[1])``."""
    return bounds[0] + u * (bounds[1] - bounds[0])


def _jitter(u: jax.Array, patch: jax.Array, strength: float, weights: jax.Array) -> jax.Array:
    """``color_jitter`` from two given uniforms ``u`` (brightness, contrast)."""
    factors = _lerp(u, (1.0 - strength, 1.0 + strength))
    bright = jnp.clip(patch * factors[0], 0.0, 1.0)
    mean = jnp.sum(weights * jnp.mean(bright, axis=-1)) / jnp.maximum(jnp.sum(weights), 1e-12)
    return jnp.clip(factors[1] * bright + (1.0 - factors[1]) * mean, 0.0, 1.0)


def color_jitter(
    key: jax.Array, patch: ArrayLike, *, strength: float = 0.1, weights: ArrayLike | None = None
) -> jax.Array:
    """Random brightness and contrast, as torchvision's ``ColorJitter`` (without hue/saturation).

    Brightness multiplies by ``b ~ U(1 - s, 1 + s)``; contrast blends with the mean gray level,
    ``c x + (1 - c) mean`` with ``c ~ U(1 - s, 1 + s)``; each result is clipped to [0, 1]. Hue
    and saturation are left out: they are meaningless for (replicated) grayscale images.

    Args:
        key: PRNG key.
        patch: (h, w, C) in [0, 1].
        strength: ``s``.
        weights: optional (h, w) weights of the pixels whose mean is the contrast pivot, for
            content gathered over a whole image of which only a region is pasted.

    Returns:
        (h, w, C) float32 in [0, 1].
    """
    patch = jnp.asarray(patch, jnp.float32)
    if weights is None:
        weights = jnp.ones(patch.shape[:-1])
    weights = jnp.asarray(weights, jnp.float32)
    return _jitter(_uniform(key, (2,)), patch, strength, weights)


def _grid(h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """Row and column coordinates, (h, 1) and (1, w) float32."""
    return jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]


def _gather(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``image[rows, cols]`` at (rounded) coordinates clipped to the image (nearest neighbour)."""
    h, w = image.shape[:2]
    rows = jnp.clip(jnp.round(rows), 0, h - 1).astype(jnp.int32)
    cols = jnp.clip(jnp.round(cols), 0, w - 1).astype(jnp.int32)
    return image[rows, cols]


def _blend(u, image, content, mask, jitter) -> Augmented:
    """Jitter the content (contrast pivot: the pasted region) and blend it in through ``mask``."""
    content = _jitter(u, content, jitter, mask)
    blended = (1.0 - mask[..., None]) * image + mask[..., None] * content
    return Augmented(jnp.clip(blended, 0.0, 1.0), mask)


def _box_size(u, shape, area_ratio, aspect_ratio) -> jax.Array:
    """CutPaste's patch size (height, width) from uniforms ``u`` (2,): int32 (2,), in the image."""
    h, w = shape
    area = _lerp(u[0], area_ratio) * (h * w)
    aspect = jnp.exp(_lerp(u[1], (math.log(aspect_ratio), -math.log(aspect_ratio))))
    size = jnp.round(jnp.sqrt(area * jnp.stack([1.0 / aspect, aspect])))
    return jnp.clip(size, 1, jnp.array([h, w])).astype(jnp.int32)


def _corner(u, size, shape) -> jax.Array:
    """Uniform top-left corner (2,) int32 of a ``size`` box inside ``shape``, from ``u`` (2,)."""
    room = jnp.array(shape) - size + 1
    return jnp.minimum(jnp.floor(u * room).astype(jnp.int32), room - 1)


def cutpaste(
    key: jax.Array,
    image: ArrayLike,
    *,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: float = 0.3,
    jitter: float = 0.1,
) -> Augmented:
    """CutPaste (Li et al., 2021): a jittered rectangle of the image pasted elsewhere.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        area_ratio: range of the rectangle's area as a fraction of the image area.
        aspect_ratio: width / height is log-uniform in [aspect_ratio, 1 / aspect_ratio].
        jitter: ``color_jitter`` strength.

    Returns:
        ``Augmented`` with a {0, 1} axis-aligned rectangle as mask.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    # One draw per call: every separate jax.random call adds its own threefry to compile.
    u = _uniform(key, (8,))
    size = _box_size(u[0:2], (h, w), area_ratio, aspect_ratio)
    src = _corner(u[2:4], size, (h, w)).astype(jnp.float32)
    dst = _corner(u[4:6], size, (h, w)).astype(jnp.float32)
    rows, cols = _grid(h, w)
    inside = (rows >= dst[0]) & (rows < dst[0] + size[0]) & (cols >= dst[1])
    mask = (inside & (cols < dst[1] + size[1])).astype(jnp.float32)
    content = _gather(image, rows - dst[0] + src[0], cols - dst[1] + src[1])
    return _blend(u[6:8], image, content, mask, jitter)


def _centre(u, half_extent, shape) -> jax.Array:
    """A whole-pixel centre (2,) keeping a box of ``half_extent`` (2,) inside ``shape``."""
    last = jnp.array(shape, jnp.float32) - 1.0
    centre = half_extent + u * jnp.maximum(last - 2 * half_extent, 0.0)
    return jnp.round(jnp.clip(centre, 0.0, last))


def cutpaste_scar(
    key: jax.Array,
    image: ArrayLike,
    *,
    width: tuple[float, float] = (2 / 256, 16 / 256),
    length: tuple[float, float] = (10 / 256, 25 / 256),
    angle: tuple[float, float] = (-45.0, 45.0),
    jitter: float = 0.1,
) -> Augmented:
    """CutPaste-scar (Li et al., 2021): a thin rotated rectangle of the image pasted elsewhere.

    A ``width x length`` patch (fractions of the short image side, at least 1 px) is cut from a
    random place, rotated by ``angle`` degrees (uniform) about its centre and pasted, with nearest
    neighbour sampling, at a random place where its bounding box fits. A scar that would change
    no pixel by one grey level (1/255) or more, such as one cut from a black background and
    pasted onto it, is drawn once more (the next 9 uniforms of ``key``), and that one is kept.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1].
        width: range of the scar's width (along x before rotation).
        length: range of the scar's length (along y before rotation).
        angle: range of the rotation in degrees.
        jitter: ``color_jitter`` strength.

    Returns:
        ``Augmented`` with a {0, 1} rotated rectangle as mask.
    """
    image = jnp.asarray(image, jnp.float32)
    u = _uniform(key, (2, 9))
    first, second = (_scar(v, image, width, length, angle, jitter) for v in u)
    return _first_visible(image, first, second)


def _first_visible(image: jax.Array, first: Augmented, second: Augmented) -> Augmented:
    """``first`` where it changes some pixel by one grey level (1/255) or more (a change that
    survives rounding to uint8), else ``second``."""
    visible = jnp.max(jnp.abs(first.image - image)) >= 1.0 / 255.0
    return jax.tree.map(lambda a, b: jnp.where(visible, a, b), first, second)


def _scar(u, image, width, length, angle, jitter) -> Augmented:
    """One scar of :func:`cutpaste_scar` from its 9 uniforms ``u``."""
    h, w = image.shape[:2]
    side = min(h, w)
    scar_w = jnp.clip(_lerp(u[0], width) * side, 1.0, side)
    scar_l = jnp.clip(_lerp(u[1], length) * side, 1.0, side)
    theta = jnp.deg2rad(_lerp(u[2], angle))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src = _centre(u[3:5], jnp.stack([scar_l, scar_w]) / 2, (h, w))
    abs_cos, abs_sin = jnp.abs(cos), jnp.abs(sin)
    bbox = jnp.stack([abs_sin * scar_w + abs_cos * scar_l, abs_cos * scar_w + abs_sin * scar_l])
    dst = _centre(u[5:7], bbox / 2, (h, w))
    rows, cols = _grid(h, w)
    dy, dx = rows - dst[0], cols - dst[1]
    # Coordinates in the scar's own frame; its centre pixel (0, 0) is always inside the mask.
    along_w = cos * dx + sin * dy
    along_l = cos * dy - sin * dx
    inside = (jnp.abs(along_w) <= scar_w / 2) & (jnp.abs(along_l) <= scar_l / 2)
    content = _gather(image, src[0] + along_l, src[1] + along_w)
    return _blend(u[7:9], image, content, inside.astype(jnp.float32), jitter)


def _gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of (H, W) ``x`` with zero padding; ``sigma == 0`` is the identity.

    The kernel has a static ``radius`` and a traced ``sigma``; each 1-D pass is a product with a
    banded (H, H) / (W, W) matrix, which vmaps over per-image sigmas without grouped convolutions.
    """
    variance = jnp.maximum(sigma**2, 1e-12)
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    norm = jnp.sum(jnp.exp(-0.5 * taps**2 / variance))

    def matrix(n):
        rows, cols = _grid(n, n)
        offset = rows - cols
        weight = jnp.exp(-0.5 * offset**2 / variance) / norm
        return jnp.where(jnp.abs(offset) <= radius, weight, 0.0)

    hi = lax.Precision.HIGHEST  # TF32 matmuls would blur the mask values to ~1e-3.
    rows_blurred = jnp.matmul(matrix(x.shape[0]), x, precision=hi)
    return jnp.matmul(rows_blurred, matrix(x.shape[1]), precision=hi)


def anatpaste(
    key: jax.Array,
    image: ArrayLike,
    other: ArrayLike,
    *,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: float = 0.3,
    alpha: tuple[float, float] = (150 / 255, 1.0),
    blur: tuple[float, float] = (0.0, 15 / 256),
    margin: float = 10 / 256,
    jitter: float = 0.1,
    anatomy: str = "bright",
) -> Augmented:
    """AnatPaste (Sato et al., 2023): a patch of ``other`` blended into the image's anatomy.

    The patch size is sampled as in ``cutpaste`` and its source is a random place of ``other``;
    its centre is a random pixel of ``anatomy_mask(image)``. The pasted shape is an ellipse or a
    rectangle (50/50) of the patch size shrunk by ``margin`` on every side, softened by a
    Gaussian blur and blended with opacity ``alpha``:
    ``mask = alpha * blur(shape) * anatomy_mask(image)``. An image without anatomy (e.g. black)
    is treated as all anatomy, as in the reference code: a uniform centre and no cut-off, so
    that no "anomalous" view is left identical to its clean image.

    Args:
        key: PRNG key.
        image: (H, W, C) in [0, 1], the image to paste into.
        other: (H, W, C) in [0, 1], the normal image the patch comes from (may be ``image``).
        area_ratio: range of the patch area as a fraction of the image area.
        aspect_ratio: width / height is log-uniform in [aspect_ratio, 1 / aspect_ratio].
        alpha: range of the opacity.
        blur: range of the blur's sigma as a fraction of the short image side.
        margin: shrinkage of the shape on each side, as a fraction of the short image side.
        jitter: ``color_jitter`` strength.
        anatomy: which side of the Otsu threshold is anatomy (see :func:`anatomy_mask`).

    Returns:
        ``Augmented`` with a soft mask in [0, alpha[1]], zero outside a non-empty anatomy.
    """
    image = jnp.asarray(image, jnp.float32)
    other = jnp.asarray(other, jnp.float32)
    h, w = image.shape[:2]
    side = min(h, w)
    u = _uniform(key, (10,))
    size = _box_size(u[0:2], (h, w), area_ratio, aspect_ratio)
    inside = anatomy_mask(image, anatomy=anatomy)
    inside = jnp.where(jnp.any(inside), inside, True).astype(jnp.float32)
    # Inverse-CDF sampling of an anatomy pixel (a categorical would draw H * W Gumbels).
    cdf = jnp.cumsum(inside.reshape(-1))
    index = jnp.minimum(jnp.sum(cdf <= u[2] * cdf[-1]), h * w - 1)
    centre = jnp.stack(jnp.divmod(index, w))
    src = _corner(u[3:5], size, (h, w))
    offset = (src - (centre - size // 2)).astype(jnp.float32)
    rows, cols = _grid(h, w)
    content = _gather(other, rows + offset[0], cols + offset[1])

    shape_size = jnp.clip(jnp.round(size - 2 * margin * side), 1, size).astype(jnp.float32)
    # Centre of a box of whole pixels that holds ``centre``: half a pixel up/left for even sizes.
    mid = centre - 0.5 * (1 - shape_size % 2)
    dy, dx = (rows - mid[0]) / (shape_size[0] / 2), (cols - mid[1]) / (shape_size[1] / 2)
    ellipse = dy**2 + dx**2 <= 1.0
    rectangle = (jnp.abs(dy) <= 1.0) & (jnp.abs(dx) <= 1.0)
    shape = jnp.where(u[5] < 0.5, ellipse, rectangle).astype(jnp.float32)

    radius = min(math.ceil(3 * blur[1] * side), max(h, w) - 1)
    soft = jnp.clip(_gaussian_blur(shape, _lerp(u[6], blur) * side, radius), 0.0, 1.0)
    mask = _lerp(u[7], alpha) * soft * inside
    return _blend(u[8:10], image, content, mask, jitter)


def make_views(
    key: jax.Array,
    images: ArrayLike,
    task: str,
    *,
    anatomy: str = "bright",
    others: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """A batch of proxy-task views and their class labels (jit with ``task``, ``anatomy``
    static).

    ``"cutpaste"``: clean, CutPaste and CutPaste-scar views, labels 0, 1, 2. ``"anatpaste"``:
    clean views and AnatPaste views that paste ``others[i]`` (by default image ``(i + 1) mod
    B``) into image ``i``, labels 0, 1. Every image gets its own key: view kind ``k >= 1`` of
    image ``i`` is the per-image function with key ``jax.random.split(key, (2, B))[k - 1, i]``.

    Args:
        key: PRNG key.
        images: (B, H, W, C) in [0, 1].
        task: a key of ``TASKS``.
        anatomy: AnatPaste's anatomy side, ``"bright"`` or ``"dark"`` (see
            :func:`anatomy_mask`).
        others: (B, H, W, C) in [0, 1], the image each AnatPaste view takes its patch from
            (training draws another image than the view's own,
            :func:`msde_jax.ssl.train.other_indices`); ``None``: the batch's next image.

    Returns:
        ``(views, labels)``: (TASKS[task] * B, H, W, C) float32 and (TASKS[task] * B,) int32,
        grouped by view kind (the first B views are the clean images).

    Raises:
        ValueError: for an unknown ``task``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    images = jnp.asarray(images, jnp.float32)
    b = images.shape[0]
    keys = jax.random.split(key, (2, b))
    if task == "cutpaste":
        pasted = jax.vmap(cutpaste)(keys[0], images).image
        scarred = jax.vmap(cutpaste_scar)(keys[1], images).image
        views = [images, pasted, scarred]
    else:
        others = jnp.roll(images, -1, axis=0) if others is None else jnp.asarray(others)
        paste = partial(anatpaste, anatomy=anatomy)
        views = [images, jax.vmap(paste)(keys[0], images, others).image]
    labels = jnp.repeat(jnp.arange(len(views), dtype=jnp.int32), b)
    return jnp.concatenate(views), labels
