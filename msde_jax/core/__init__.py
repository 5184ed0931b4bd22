"""The functional core: pure, jit-able JAX functions on arrays, states as NamedTuple pytrees.

Neighbours (exact in row blocks, :mod:`~msde_jax.core.approximate_knn`'s tree, and the
:mod:`~msde_jax.core.sharded` versions over a device mesh), the fuzzy graph and density
weights, the MSDE mean shift, the coreset and patch memory bank with its foreground mask, PCA,
the Gaussian, metrics and anomaly maps. No I/O, no classes with hidden state.

Rows must be finite: the functions run jitted and check nothing on the host, and one NaN or
infinite row reaches every other row through the mean the distances are centred on (wrong
neighbours, NaN shifts, a coreset index out of range). The detectors refuse non-finite
features before they get here; check your own arrays the same way (``jnp.isfinite(x).all()``).
Integer rows are computed as floats.
"""

from msde_jax.core.approximate_knn import approximate_knn
from msde_jax.core.coreset import (
    kcenter_greedy,
    kcenter_greedy_batched,
    kcenter_greedy_subsets,
    projection_matrix,
    random_projection,
)
from msde_jax.core.density import density_weights
from msde_jax.core.foreground import Foreground, foreground_fit, foreground_mask
from msde_jax.core.fuzzy import FuzzyGraph, fuzzy_degree, fuzzy_simplicial_set, fuzzy_union
from msde_jax.core.gaussian import GaussianState, gaussian_fit, gaussian_logpdf, mahalanobis
from msde_jax.core.mean_shift import MeanShiftResult, mean_shift
from msde_jax.core.memory_bank import (
    BankPositions,
    MemoryBank,
    bank_fit,
    bank_fit_subsets,
    grid_positions,
    image_scores,
    patch_scores,
    with_positions,
)
from msde_jax.core.metrics import average_precision, roc_auc
from msde_jax.core.neighbors import Neighbors, knn
from msde_jax.core.pca import PCAState, pca_fit, pca_inverse_transform, pca_transform

__all__ = [
    "BankPositions",
    "Foreground",
    "FuzzyGraph",
    "GaussianState",
    "MeanShiftResult",
    "MemoryBank",
    "Neighbors",
    "PCAState",
    "approximate_knn",
    "average_precision",
    "bank_fit",
    "bank_fit_subsets",
    "density_weights",
    "foreground_fit",
    "foreground_mask",
    "fuzzy_degree",
    "fuzzy_simplicial_set",
    "fuzzy_union",
    "gaussian_fit",
    "gaussian_logpdf",
    "grid_positions",
    "image_scores",
    "kcenter_greedy",
    "kcenter_greedy_batched",
    "kcenter_greedy_subsets",
    "knn",
    "mahalanobis",
    "mean_shift",
    "patch_scores",
    "pca_fit",
    "pca_inverse_transform",
    "pca_transform",
    "projection_matrix",
    "random_projection",
    "roc_auc",
    "with_positions",
]
