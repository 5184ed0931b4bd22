"""The detectors: a shared base, configuration and persistence, one module per detector.

:mod:`~msde_jax.detectors.msde` (MSDE → PCA → Gaussian on pooled embeddings),
:mod:`~msde_jax.detectors.patch_bank` (a PatchCore memory bank on patch features) and
:mod:`~msde_jax.detectors.fused` (several detectors fused by out-of-fold z-scores), each a
pure fit / score pair over a NamedTuple state and a scikit-learn-style facade.
"""

__all__: list[str] = []
