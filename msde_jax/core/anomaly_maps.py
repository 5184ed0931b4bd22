"""Anomaly maps: patch scores on a feature grid, upsampled to the image and smoothed.

PatchCore's recipe (Roth et al., CVPR 2022, as anomalib implements it): the (g, g) patch
scores are resized bilinearly to the input side, then blurred by a Gaussian of σ = 4 pixels at
224 px. Here σ scales with the side (``sigma_for``: 4 · size / 224), so a map covers the same
share of the image at every input size. The maps stay in the units of the patch scores (a
patch's distance to the memory bank, the units of the image score); blurring lowers isolated
peaks and keeps the mean away from the borders (the replicated border weighs a patch at the
edge more: at the default σ the mean moves by less than 0.1 %).

Pure and jit-able (``size`` and ``sigma`` static); the blur is separable, with the border
replicated (``edge`` padding) so it adds no dark rim.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["DEFAULT_SIGMA", "gaussian_blur", "maps_bytes", "sigma_for", "upsample_maps"]

DEFAULT_SIGMA = 4.0
"""PatchCore's blur, in pixels of a 224-pixel image."""


def sigma_for(size: int) -> float:
    """The blur σ in pixels for maps of side ``size``: ``DEFAULT_SIGMA · size / 224``."""
    return DEFAULT_SIGMA * size / 224.0


def _radius(sigma: float, max_radius: int) -> int:
    # Beyond the map's side a tap only sees replicated border values: a wider kernel (a huge
    # sigma) would change little and allocate without bound.
    return max(1, min(math.ceil(4.0 * sigma), max_radius))


def maps_bytes(n_maps: int, size: int, sigma: float | None = None) -> int:
    """Bytes :func:`upsample_maps` allocates at once for ``n_maps`` float32 maps of side
    ``size``: the resized maps (size²), their border-padded copy ((size + 2r)², r the blur's
    radius) and the blur's two passes (size · (size + 2r), then size²), each n_maps × 4 bytes.
    The maps' side has no other limit: a caller compares this with the memory free
    (``PatchBankDetector.score_maps`` does)."""
    sigma = sigma_for(size) if sigma is None else float(sigma)
    r = _radius(sigma, size) if sigma > 0 else 0
    return n_maps * 4 * (2 * size * size + (size + 2 * r) ** 2 + size * (size + 2 * r))


_NO_BLUR = 0.01  # σ in pixels below which the float32 kernel is the identity: exp(−5,000) = 0


def _kernel(sigma: float, max_radius: int) -> jax.Array:
    radius = _radius(sigma, max_radius)
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


@partial(jax.jit, static_argnames=("sigma",))
def gaussian_blur(maps: ArrayLike, sigma: float) -> jax.Array:
    """Blur (m, H, W) maps by a Gaussian of standard deviation ``sigma`` pixels (separable,
    4σ radius but at most max(H, W), borders replicated); ``sigma`` below 0.01 pixels returns
    them unchanged (its float32 kernel is exactly 0, 1, 0; a σ that underflows float32 would
    make it 0 / 0). Integer maps are blurred as float32 (a kernel in their type is 0)."""
    maps = jnp.asarray(maps)
    if not jnp.issubdtype(maps.dtype, jnp.floating):
        maps = maps.astype(jnp.float32)
    if sigma < _NO_BLUR:
        return maps
    k = _kernel(sigma, max(maps.shape[1:])).astype(maps.dtype)
    r = (k.shape[0] - 1) // 2
    x = jnp.pad(maps, ((0, 0), (r, r), (r, r)), mode="edge")[:, None]  # (m, 1, H + 2r, W + 2r)
    for kernel in (k.reshape(1, 1, -1, 1), k.reshape(1, 1, 1, -1)):  # columns, then rows
        x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID")
    return x[:, 0]


@partial(jax.jit, static_argnames=("size", "sigma"))
def upsample_maps(patch_maps: ArrayLike, size: int, sigma: float | None = None) -> jax.Array:
    """(m, g, g) patch scores → (m, size, size) anomaly maps: bilinear resize, Gaussian blur.

    Args:
        patch_maps: (m, g, g) patch scores (any g × g' grid works).
        size: side of the output maps, the embedder's input side.
        sigma: blur σ in output pixels; ``None``: :func:`sigma_for` ``(size)``; 0: no blur.

    Returns:
        (m, size, size) maps, in the units of ``patch_maps``.
    """
    patch_maps = jnp.asarray(patch_maps)
    if patch_maps.ndim != 3:
        raise ValueError(f"patch_maps must be (m, g, g), got shape {patch_maps.shape}.")
    if size < 1:
        raise ValueError(f"maps of side {size} are not drawn: pass the embedder's image_size.")
    dtype = jnp.promote_types(patch_maps.dtype, jnp.float32)
    up = jax.image.resize(
        patch_maps.astype(dtype), (patch_maps.shape[0], size, size), method="linear"
    )
    return gaussian_blur(up, sigma_for(size) if sigma is None else float(sigma))
