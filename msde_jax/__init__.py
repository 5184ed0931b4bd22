"""msde_jax: one-class anomaly detection with Mean Shift Density Enhancement, in JAX.

What a user types: the detectors (:class:`MSDEDetector`, :class:`PatchBankDetector`,
:class:`FusedDetector`), :class:`Embedder`, :func:`load_detector`, the label-free default
:func:`recommended`, the :func:`evaluate` pipeline and the errors they raise. The pure
functions live in :mod:`msde_jax.core` (``msde_jax.core.mean_shift``, …), the detectors'
functional forms in :mod:`msde_jax.detectors` (``fit_detector``, ``DetectorConfig``, …).
"""

from importlib.metadata import PackageNotFoundError, version

import msde_jax._compilation as _compilation
import msde_jax._requirements as _requirements  # noqa: F401  (refuses a jax below the tested floor)
from msde_jax import core
from msde_jax.detectors.base import NotFittedError
from msde_jax.detectors.fused import FusedDetector
from msde_jax.detectors.msde import MSDEDetector
from msde_jax.detectors.patch_bank import PatchBankDetector
from msde_jax.detectors.persistence import load_detector

# Compiled programs are kept on disk between processes (see msde_jax._compilation).
_compilation.enable_compilation_cache()


def __getattr__(name: str):
    # The backbones (Flax, Pillow) and the pipeline load on first use, so `import msde_jax`
    # stays light.
    if name == "Embedder":
        from msde_jax.embedder import Embedder

        return Embedder
    if name == "recommended":
        from msde_jax.pipeline.presets import recommended

        return recommended
    if name == "evaluate":
        from msde_jax.pipeline.evaluation import evaluate

        return evaluate
    if name == "ImageReadError":
        from msde_jax.io.images import ImageReadError

        return ImageReadError
    if name == "WeightMappingError":
        from msde_jax.backbones import WeightMappingError

        return WeightMappingError
    raise AttributeError(f"module 'msde_jax' has no attribute {name!r}")


try:
    __version__ = version("msde-jax")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Embedder",
    "FusedDetector",
    "ImageReadError",
    "MSDEDetector",
    "NotFittedError",
    "PatchBankDetector",
    "WeightMappingError",
    "__version__",
    "core",
    "evaluate",
    "load_detector",
    "recommended",
]
