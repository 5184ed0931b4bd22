"""The fitted state of the MSDE detector: a pytree of arrays and its static config, and the
form of it that keys its compiled score programs (:meth:`DetectorState.for_scoring`)."""

from typing import NamedTuple

import jax
import numpy as np

from msde_jax.core.gaussian import GaussianState
from msde_jax.core.pca import PCAState
from msde_jax.detectors.msde_config import _SHIFT_NUMBERS, DetectorConfig

__all__ = ["DetectorState"]


class DetectorState(NamedTuple):
    """Everything a fitted detector needs to score, as a pytree of arrays and its config.

    Attributes:
        center: (d,) per-feature mean of the training normals (0 without standardising).
        scale: (d,) per-feature standard deviation (1 for constant features or without
            standardising).
        train: (n, d) standardised training normals, before any shift (the transductive mode
            shifts them again together with each test batch).
        density: (n,) their density weights (:func:`~msde_jax.core.density_weights`).
        reference: (n, d) the training normals after MSDE (the inductive mode's fixed reference).
        pca: :class:`~msde_jax.core.PCAState` fitted on ``reference``.
        gaussian: :class:`~msde_jax.core.GaussianState` of ``reference`` in PCA space.
        train_keys: (n, 2) uint32, the 64-bit content hash of each raw training row as two
            32-bit words (JAX has no uint64 without x64), with content-ordered weight blocks;
            else ``None``. The transductive mode orders the joint blocks by it.
        config: the :class:`DetectorConfig` it was fitted with (a static pytree node).
        valid: (n,) bool, which rows of ``train``, ``density``, ``reference`` and
            ``train_keys`` are real (the first ones), or ``None`` when all are: n above is
            then the padded count. A fit pads its training rows to
            :func:`~msde_jax.core.blocks.bucket_fit_rows` so that nearby sizes (the cross-fit
            folds, refits on a few more or fewer images) share the fit and score programs
            (:func:`~msde_jax.detectors.msde.fit_rows` says when); the padding rows are
            never neighbours, weigh nothing and count in no statistic.
            :func:`~msde_jax.detectors.msde.unpadded` drops them (a saved detector holds the
            real rows only; loading pads them again, :func:`~msde_jax.detectors.msde.padded`).
        shift_numbers: (2,) the shift's ``step_size`` and ``tol`` as data, which
            :meth:`for_scoring` sets (its config then holds their defaults, so a sweep over
            them shares one score program); ``None`` (a fitted or loaded state): the
            config's are used.
    """

    center: jax.Array
    scale: jax.Array
    train: jax.Array
    density: jax.Array
    reference: jax.Array
    pca: PCAState
    gaussian: GaussianState
    train_keys: jax.Array | None
    config: DetectorConfig
    valid: jax.Array | None = None
    shift_numbers: jax.Array | None = None

    def for_scoring(self) -> "DetectorState":
        """The state as its score program is keyed: the config's unread parameters at their
        defaults (:meth:`~msde_jax.detectors.config.BaseConfig.scoring`), no ``train_keys``
        outside the transductive mode, which alone reads them, and a shift's ``step_size`` and
        ``tol`` as data (``shift_numbers``; the config's at their defaults). The same scores;
        states that differ only there share one compiled program."""
        config, numbers = self.config.scoring(), self.shift_numbers
        if numbers is None and "step_size" not in config.unread_by_score():
            numbers = np.asarray([config.step_size, config.tol], self.center.dtype)
            numbers = jax.device_put(numbers)  # a copy; jnp.asarray compiles per shape
            config = config.with_defaults(_SHIFT_NUMBERS)
        keys = self.train_keys if config.mode == "transductive" else None
        return self._replace(config=config, train_keys=keys, shift_numbers=numbers)
