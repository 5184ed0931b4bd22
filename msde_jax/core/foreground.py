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
3. the threshold τ is the midpoint of the two medians; a patch is foreground when t ≥ τ;
4. the mask is kept only when the split is clean: at most :data:`MAX_MIXED` (10 %) of the
   centre patches fall below τ and at most 50 % of the border patches above it. Otherwise —
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
    """A fitted foreground rule (:func:`foreground_fit`): patch p is foreground when
    ``(p − center)·direction ≥ threshold``, or always when ``active`` is false.

    Attributes:
        direction: (c,) the first principal direction of the training patches, oriented so
            the grid's centre projects above its border.
        center: (c,) the mean training patch.
        threshold: () the midpoint of the border's and the centre's median projections.
        active: () bool: whether the split was clean enough to mask (else every patch is
            foreground).
    """

    direction: jax.Array
    center: jax.Array
    threshold: jax.Array
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
def foreground_fit(patches: ArrayLike) -> Foreground:
    """Fit the foreground rule on the patch features of normal images (module docstring).

    Args:
        patches: (n, height, width, c) training patch features on their grid.

    Returns:
        :class:`Foreground` ``(direction, center, threshold, active)``; inactive (every patch
        foreground) for grids smaller than 3 × 3 or a split that is not clean.
    """
    x = jnp.asarray(patches)
    if x.ndim != 4:
        raise ValueError(f"patches must be (n, height, width, c), got shape {x.shape}.")
    n, height, width, c = x.shape
    flat = x.reshape(-1, c)
    center = jnp.mean(flat, axis=0)
    centred = flat - center[None]
    cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / flat.shape[0]
    direction = jnp.linalg.eigh(cov)[1][:, -1]
    t = _project(x, center, direction)  # (n, height, width)
    border, centre = border_and_centre(height, width)
    border = jnp.broadcast_to(border, t.shape)
    centre = jnp.broadcast_to(centre, t.shape)
    m_border, m_centre = _masked_median(t, border), _masked_median(t, centre)
    sign = jnp.where(m_centre >= m_border, 1.0, -1.0).astype(direction.dtype)
    direction, t = sign * direction, sign * t
    threshold = sign * (m_border + m_centre) / 2
    below = t < threshold
    centre_mixed = jnp.sum(below & centre) / jnp.maximum(jnp.sum(centre), 1)
    border_kept = jnp.sum(~below & border) / jnp.maximum(jnp.sum(border), 1)
    active = (centre_mixed <= MAX_MIXED) & (border_kept <= _MAX_BORDER_FOREGROUND)
    if min(height, width) < 3:
        active = jnp.zeros((), bool)
    # Kept when inactive too (it says how the split failed); 0 where a median had no patch.
    threshold = jnp.where(jnp.isfinite(threshold), threshold, 0.0).astype(x.dtype)
    return Foreground(direction, center, threshold, active)


@partial(jax.jit, inline=True)
def foreground_mask(foreground: Foreground, patches: ArrayLike) -> jax.Array:
    """Which patches are foreground under a fitted rule: a boolean array of the patches'
    leading shape ((m, P) or (m, g, g) for (m, P, c) or (m, g, g, c) features); all true when
    the rule is inactive. Each patch is labelled on its own."""
    x = jnp.asarray(patches, foreground.center.dtype)
    t = _project(x, foreground.center, foreground.direction)
    return (t >= foreground.threshold) | ~foreground.active
