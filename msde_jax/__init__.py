"""msde_jax: one-class anomaly detection with Mean Shift Density Enhancement, in JAX.

The functional core: pure, jit-able functions on arrays with NamedTuple states.
"""

from importlib.metadata import PackageNotFoundError, version

from msde_jax.core.approximate_knn import approximate_knn
from msde_jax.core.coreset import kcenter_greedy, random_projection
from msde_jax.core.density import density_weights
from msde_jax.core.fuzzy import FuzzyGraph, fuzzy_degree, fuzzy_simplicial_set, fuzzy_union
from msde_jax.core.gaussian import GaussianState, gaussian_fit, gaussian_logpdf, mahalanobis
from msde_jax.core.mean_shift import MeanShiftResult, mean_shift
from msde_jax.core.memory_bank import MemoryBank, bank_fit, image_scores, patch_scores
from msde_jax.core.metrics import average_precision, roc_auc
from msde_jax.core.neighbors import Neighbors, knn
from msde_jax.core.pca import PCAState, pca_fit, pca_inverse_transform, pca_transform
from msde_jax.detectors.base import load_detector
from msde_jax.detectors.fused import FusedDetector, FusionStats, fuse_scores, fusion_stats
from msde_jax.detectors.msde import (
    DetectorConfig,
    DetectorFit,
    DetectorState,
    MSDEDetector,
    NotFittedError,
    fit_detector,
    score_detector,
)
from msde_jax.detectors.patch_bank import (
    BankConfig,
    BankFit,
    BankState,
    PatchBankDetector,
    fit_bank_detector,
    score_bank_detector,
    score_bank_maps,
    score_bank_patches,
)


def __getattr__(name: str):
    # The backbones (Flax, Pillow) load on first use, so `import msde_jax` stays light.
    if name == "Embedder":
        from msde_jax.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'msde_jax' has no attribute {name!r}")


try:
    __version__ = version("msde-jax")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BankConfig",
    "BankFit",
    "BankState",
    "DetectorConfig",
    "DetectorFit",
    "DetectorState",
    "Embedder",
    "FusedDetector",
    "FusionStats",
    "MSDEDetector",
    "NotFittedError",
    "FuzzyGraph",
    "GaussianState",
    "MeanShiftResult",
    "MemoryBank",
    "Neighbors",
    "PatchBankDetector",
    "PCAState",
    "__version__",
    "approximate_knn",
    "average_precision",
    "bank_fit",
    "density_weights",
    "fit_bank_detector",
    "fit_detector",
    "fuse_scores",
    "fusion_stats",
    "fuzzy_degree",
    "fuzzy_simplicial_set",
    "fuzzy_union",
    "gaussian_fit",
    "gaussian_logpdf",
    "image_scores",
    "kcenter_greedy",
    "knn",
    "load_detector",
    "mahalanobis",
    "mean_shift",
    "patch_scores",
    "pca_fit",
    "pca_inverse_transform",
    "pca_transform",
    "random_projection",
    "roc_auc",
    "score_bank_detector",
    "score_bank_maps",
    "score_bank_patches",
    "score_detector",
]
