"""The detectors: a shared base, configuration, fit and persistence, one module per detector.

:mod:`~msde_jax.detectors.msde` (MSDE → PCA → Gaussian on pooled embeddings),
:mod:`~msde_jax.detectors.patch_bank` (a PatchCore memory bank on patch features) and
:mod:`~msde_jax.detectors.fused` (several detectors fused by scores calibrated on their
out-of-fold normal scores, :mod:`~msde_jax.detectors.calibration`). Each leaf
detector is its config, its pure fit / score functions over a NamedTuple state, and a short
facade over :class:`~msde_jax.detectors.base.Detector`.
"""

from msde_jax.detectors.base import Detector, NotFittedError
from msde_jax.detectors.calibration import RankCalibration, rank_calibration
from msde_jax.detectors.config import BaseConfig, check_features
from msde_jax.detectors.fitting import DetectorFit, cross_fit, one_class_splits
from msde_jax.detectors.fused import FusedDetector, FusionStats, fuse_scores, fusion_stats
from msde_jax.detectors.msde import (
    DetectorConfig,
    DetectorState,
    MSDEDetector,
    fit_detector,
    score_detector,
)
from msde_jax.detectors.patch_bank import (
    BankConfig,
    BankState,
    PatchBankDetector,
    fit_bank_detector,
    score_bank_detector,
    score_bank_flipped,
    score_bank_foreground,
    score_bank_maps,
    score_bank_patches,
)
from msde_jax.detectors.persistence import load_detector

__all__ = [
    "BankConfig",
    "BankState",
    "BaseConfig",
    "Detector",
    "DetectorConfig",
    "DetectorFit",
    "DetectorState",
    "FusedDetector",
    "FusionStats",
    "MSDEDetector",
    "NotFittedError",
    "PatchBankDetector",
    "RankCalibration",
    "check_features",
    "cross_fit",
    "fit_bank_detector",
    "fit_detector",
    "fuse_scores",
    "fusion_stats",
    "load_detector",
    "one_class_splits",
    "rank_calibration",
    "score_bank_detector",
    "score_bank_flipped",
    "score_bank_foreground",
    "score_bank_maps",
    "score_bank_patches",
    "score_detector",
]
