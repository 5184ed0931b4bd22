"""A label-free foreground mask of patch features: which patches show the body, not the air.

In brain MRI (and many CT slices) a large share of an image's patches is black background
around the head. Those patches are trivially normal; averaged into an image score they dilute
it. AnomalyDINO (Damm et al., WACV 2025) masks them by thresholding the first principal
component of the patch features, with a sign chosen by hand per object. Here the sign and
whether to mask at all are decided from the training patches alone, by where the patches sit:

1. the training patches are centred (mean μ) and projected on their first principal direction
   v: t = (p − μ)·v;
2. the *border* is the outer ring of the patch grid, the *centre* the patches at least
   ⌊side/4⌋ (at least one) patches from every edge. v is oriented so the centre's median
   projection is above the border's: the border is taken to be background, the centre
   foreground;
3. the threshold τ is the midpoint of the two medians. A patch is background when its
   projection lies in the background's band, from the lowest projection of any training
   patch up to τ; every other patch is foreground. The band is closed on the far side because
   background is a mode, not a half-line: a patch projecting beyond every training patch (a
   lesion unlike both tissue and air, which the first component may place there) is novel,
   so it stays foreground;
4. the mask is kept only when the split is clean: at most :data:`MAX_MIXED` (10 %) of the
   centre patches fall in the band and at least 50 % of the border patches do. Otherwise —
   a body that fills the frame (chest X-rays), a first component that is not
   background-vs-body (exposure, position) — the mask is switched off and every patch counts.

So the rule fails safe: it masks only when the first component separates the image's border
from its centre, and then removes what looks like the border. The fit is pure and ``jit``-able
(shapes static); :func:`foreground_mask` applies it patch by patch, so a patch's label never
depends on the other images in a batch.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["MAX_MIXED", "Foreground", "border_and_centre", "foreground_fit", "foreground_mask"]

MAX_MIXED = 0.1
"""The largest share of centre patches a kept mask may call background."""

_MAX_BORDER_FOREGROUND = 0.5


class Foreground(NamedTuple):
    """A fitted foreground rule (:func:`foreground_fit`): patch p, projected as
    t = ``(p − center)·direction``, is background when ``floor ≤ t < threshold``, else
    foreground; always foreground when ``active`` is false.

    Attributes:
        direction: (c,) the first principal direction of the training patches, oriented so
            the grid's centre projects above its border.
        center: (c,) the mean training patch.
        threshold: () the midpoint of the border's and the centre's median projections.
        floor: () the lowest projection of a training patch (the background band's far end).
        active: () bool: whether the split was clean enough to mask (else every patch is
            foreground).
    """

    direction: jax.Array
    center: jax.Array
    threshold: jax.Array
    floor: jax.Array
    active: jax.Array


def border_and_centre(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Two (height, width) boolean masks of the patch grid: its outer ring, and its centre
    (patches at least r = max(⌊min(height, width)/4⌋, 1) from every edge; empty when the grid
    is smaller than 3 × 3)."""
    i = jnp.arange(height)[:, None]
    j = jnp.arange(width)[None, :]
    edge = jnp.minimum(jnp.minimum(i, height - 1 - i), jnp.minimum(j, width - 1 - j))
    r = max(min(height, width) // 4, 1)
    return edge == 0, edge >= r


def _project(patches: jax.Array, center: jax.Array, direction: jax.Array) -> jax.Array:
    # An elementwise product summed over channels, not a matmul: each patch's projection is
    # computed the same way whatever the batch, so its label is batch-independent.
    lead = (1,) * (patches.ndim - 1)
    return jnp.sum(
        (patches - center.reshape(lead + center.shape)) * direction.reshape(lead + direction.shape),
        axis=-1,
    )


def _masked_median(t: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.nanmedian(jnp.where(mask, t, jnp.nan))


@jax.jit
def foreground_fit(patches: ArrayLike, n_valid: int | ArrayLike | None = None) -> Foreground:
    """Fit the foreground rule on the patch features of normal images (module docstring).

    Args:
        patches: (n, height, width, c) training patch features on their grid.
        n_valid: the first ``n_valid`` images are the training images, the rest padding that
            counts nowhere (traced; ``None``: all n). Fits of different sizes padded to one n
            then share a compiled program.

    Returns:
        :class:`Foreground` ``(direction, center, threshold, floor, active)``; inactive
        (every patch foreground) for grids smaller than 3 × 3 or a split that is not clean.
    """
    x = jnp.asarray(patches)
    if x.ndim != 4:
        raise ValueError(f"patches must be (n, height, width, c), got shape {x.shape}.")
    n, height, width, c = x.shape
    valid = jnp.arange(n) < (n if n_valid is None else n_valid)  # (n,) images
    rows = jnp.repeat(valid, height * width)[:, None]  # (n · height · width, 1)
    count = jnp.sum(valid) * (height * width)
    flat = jnp.where(rows, x.reshape(-1, c), 0.0)
    center = jnp.sum(flat, axis=0) / count
    centred = jnp.where(rows, flat - center[None], 0.0)
    cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / count
    direction = jnp.linalg.eigh(cov)[1][:, -1]
    t = _project(x, center, direction)  # (n, height, width)
    border, centre = border_and_centre(height, width)
    in_fit = jnp.broadcast_to(valid[:, None, None], t.shape)
    border = jnp.broadcast_to(border, t.shape) & in_fit
    centre = jnp.broadcast_to(centre, t.shape) & in_fit
    m_border, m_centre = _masked_median(t, border), _masked_median(t, centre)
    sign = jnp.where(m_centre >= m_border, 1.0, -1.0).astype(direction.dtype)
    direction, t = sign * direction, sign * t
    threshold, floor = sign * (m_border + m_centre) / 2, jnp.min(jnp.where(in_fit, t, jnp.inf))
    below = _in_band(t, threshold, floor)
    centre_mixed = jnp.sum(below & centre) / jnp.maximum(jnp.sum(centre), 1)
    border_kept = jnp.sum(~below & border) / jnp.maximum(jnp.sum(border), 1)
    active = (centre_mixed <= MAX_MIXED) & (border_kept <= _MAX_BORDER_FOREGROUND)
    if min(height, width) < 3:
        active = jnp.zeros((), bool)
    # Kept when inactive too (they say how the split failed); 0 where a median had no patch.
    threshold = jnp.where(jnp.isfinite(threshold), threshold, 0.0).astype(x.dtype)
    return Foreground(direction, center, threshold, floor.astype(x.dtype), active)


def _in_band(t: jax.Array, threshold: jax.Array, floor: jax.Array) -> jax.Array:
    """Projections in the background's band: below the threshold, not below the floor."""
    return (t < threshold) & (t >= floor)


@partial(jax.jit, inline=True)
def foreground_mask(foreground: Foreground, patches: ArrayLike) -> jax.Array:
    """Which patches are foreground under a fitted rule (not in the background's band): a
    boolean array of the patches' leading shape ((m, P) or (m, g, g) for (m, P, c) or
    (m, g, g, c) features); all true when the rule is inactive. Each patch is labelled on its
    own."""
    x = jnp.asarray(patches, foreground.center.dtype)
    t = _project(x, foreground.center, foreground.direction)
    return ~_in_band(t, foreground.threshold, foreground.floor) | ~foreground.active
