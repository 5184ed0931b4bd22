"""Features read from a backbone's named layers (:attr:`BackboneOutput.taps`): one pooled
vector per layer, or PatchCore's locally aggregated patch features on a fixed grid.

Pure, jit-able functions on NHWC maps; :class:`~msde_jax.embedder.Embedder` composes them
with the network (``layers=``, ``features="pooled"`` / ``"patches"``).

PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022
(amazon-science/patchcore-inspection; anomalib's ``PatchcoreModel``).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "bilinear_matrix",
    "local_average",
    "patch_features",
    "pooled_layers",
    "resize_bilinear",
]


def local_average(x: jax.Array, size: int = 3) -> jax.Array:
    """PatchCore's local neighbourhood aggregation: every position of an (n, h, w, c) map
    replaced by the mean over the size×size window centred on it (stride 1, same h × w).

    At the borders the window reaches into zero padding and the sum is still divided by
    size², as anomalib's ``torch.nn.AvgPool2d(3, 1, 1)`` does (``count_include_pad=True``)
    and as the original code's zero-padded ``torch.nn.Unfold`` followed by a mean does.

    Args:
        x: (n, h, w, c) feature map.
        size: odd window side (static); 1 returns ``x`` unchanged.

    Returns:
        (n, h, w, c) in ``x``'s dtype.
    """
    if size == 1:
        return x
    p = size // 2
    window, padding = (1, size, size, 1), ((0, 0), (p, p), (p, p), (0, 0))
    summed = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, window, (1, 1, 1, 1), padding)
    return summed / (size * size)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) linear map of torch's 1-d bilinear resize with
    ``align_corners=False`` and no antialiasing: output pixel i samples the input at
    ``max((i + 0.5)·n_in/n_out − 0.5, 0)`` between its two neighbours, the last pixel
    replicated beyond the border. Weights are computed in float64."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    left = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    t = src - left
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), left), 1 - t)
    np.add.at(matrix, (np.arange(n_out), right), t)
    return matrix.astype(np.float32)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of an (n, h, w, c) map to (n, size, size, c), as PatchCore and anomalib
    resize their deeper maps: ``F.interpolate(mode="bilinear", align_corners=False)``.

    Half-pixel centres, edge pixels replicated beyond the border, and no antialiasing when
    shrinking (a 2× reduction is the mean of 2×2 blocks): :func:`bilinear_matrix` along each
    axis, applied in float32 at ``Precision.HIGHEST``. ``jax.image.resize(method="linear",
    antialias=False)`` and torch compute the same map from float32 sample positions (a few
    1e-6 off). A map already of the target size is returned as is.
    """
    _, h, w, _ = x.shape
    if (h, w) == (size, size):
        return x
    rows = jnp.asarray(bilinear_matrix(h, size))
    cols = jnp.asarray(bilinear_matrix(w, size))
    return jnp.einsum("ia,jb,nabc->nijc", rows, cols, x, precision=lax.Precision.HIGHEST)


def pooled_layers(maps: Sequence[jax.Array]) -> jax.Array:
    """The global average of each (n, h_i, w_i, c_i) map, concatenated: (n, Σc_i) float32."""
    return jnp.concatenate([jnp.mean(m.astype(jnp.float32), axis=(1, 2)) for m in maps], axis=-1)


def patch_features(maps: Sequence[jax.Array], *, grid: int = 14, aggregate: int = 3) -> jax.Array:
    """PatchCore's patch features: each map locally averaged (:func:`local_average` over
    aggregate×aggregate), resized to grid×grid (:func:`resize_bilinear`), and the maps
    concatenated over channels.

    PatchCore resizes every map to the first (largest) one's size; here all go to one fixed
    grid, so backbones, layers and image sizes give comparable patch banks.

    Args:
        maps: (n, h_i, w_i, c_i) feature maps, e.g. ``[out.taps["layer2"], out.taps["layer3"]]``.
        grid: side of the output grid (static).
        aggregate: odd neighbourhood side (static); 1 disables the aggregation.

    Returns:
        (n, grid, grid, Σc_i) float32.
    """
    feats = [resize_bilinear(local_average(m.astype(jnp.float32), aggregate), grid) for m in maps]
    return jnp.concatenate(feats, axis=-1)
