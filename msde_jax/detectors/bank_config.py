"""The patch memory-bank detector's configuration: every hyperparameter, validated.

:class:`BankConfig` is a frozen, hashable dataclass (a static pytree node); the pure fit and
score of :mod:`msde_jax.detectors.patch_bank` read it.
"""

import dataclasses
import math
from typing import ClassVar

import jax

from msde_jax.core.memory_bank import REDUCTIONS
from msde_jax.detectors.config import (
    UNEVEN,
    BaseConfig,
    check_bool,
    check_choice,
    check_int,
    check_real,
    param,
)

__all__ = ["CORESETS", "FOREGROUNDS", "BankConfig"]


FOREGROUNDS = (None, "pca")
CORESETS = ("greedy", "two_stage")
# The largest ``position``: a patch's place alone decides its distance well before, and far
# beyond it the scaled places overflow float32 (an infinite threshold, a file that cannot load).
MAX_POSITION = 1e4


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class BankConfig(BaseConfig):
    """Every hyperparameter of the patch memory-bank detector, validated on construction.

    The shared parameters of :class:`~msde_jax.detectors.config.BaseConfig` (its MSDE shift's
    with ``shift=True``) and the bank's own. Frozen and hashable; it travels inside
    :class:`~msde_jax.detectors.patch_bank.BankState` as a static pytree node, so
    ``jax.jit(score_bank_detector)(state, x)`` specialises on it.
    """

    score_params: ClassVar[tuple[str, ...]] = ("reduce", "q", "score_neighbors", "batch_size")
    fit_only: ClassVar[tuple[str, ...]] = (*BaseConfig.fit_only, "coreset", "chunk_patches")

    size: int = param(
        5000,
        "bank rows, at most the number of training patches (PatchCore keeps 1–10 %); larger "
        "banks cost fit and score time linearly. 5,000 had a higher synthetic-validation AUROC "
        "than 2,000 (the default before 2026-12-05) and 10,000 (benchmarks/RESULTS.md).",
    )
    coreset: str = param(
        "two_stage",
        'how the bank is chosen: ``"greedy"`` (one greedy k-center search over all the '
        'training patches, as PatchCore) or ``"two_stage"`` (a greedy search of ``size`` rows '
        "in each chunk of at most ``chunk_patches`` patches, the chunks never mixing cross-fit "
        "folds, then the greedy search over the union of the chunks' picks: fit memory "
        "bounded by a chunk, and the folds' banks drawn from the same first stage).",
    )
    chunk_patches: int = param(
        1 << 18,
        'most patches (whole images) per first-stage search with ``coreset="two_stage"``; '
        "the same on every backend, since it changes which patches the bank keeps once a fold "
        "holds more (a larger value bounds memory less and may run faster on an accelerator).",
    )
    shift: bool = param(False, "density-enhance the bank by MSDE before scoring.")
    projection_dim: int | None = param(
        128,
        "dimension of the coreset's random projection (PatchCore's 128); ``None``, or a value "
        "not below the channels searched (the features' and, with ``position > 0``, the two "
        "position channels), selects on the exact features.",
    )
    reduce: str = param(
        "top",
        'patch scores → image score: ``"top"`` (the mean of the ⌈q·P⌉ highest), '
        '``"max"`` (PatchCore\'s) or ``"mean"``.',
    )
    q: float = param(
        0.1,
        'the share of patches ``reduce="top"`` averages, in (0, 1] (of the foreground patches '
        "with ``foreground``).",
    )
    foreground: str | None = param(
        None,
        '``None`` (every patch counts) or ``"pca"``: fit a label-free foreground mask on the '
        "training patches (their first principal component, oriented and checked by the grid's "
        "border and centre, :mod:`msde_jax.core.foreground`; off where the split is not clean, "
        "e.g. a body filling the frame) and reduce each image over its foreground patches "
        "only. The bank is fitted on all patches either way.",
    )
    threshold: str = param(
        "cross_fit",
        '``"cross_fit"`` (the ``1 − contamination`` quantile of out-of-fold scores of the '
        "training images; patch-to-bank distances have no known law under normality) or "
        '``"none"``: the bank alone, the same one, without scoring any fold (no ``threshold_``, '
        "so ``predict`` refuses; for ranking, as synthetic validation does).",
    )
    position: float = param(
        1.0,
        "how much a patch's place counts: the distance between two patches adds their "
        "displacement on the grid, crossing the whole grid costing ``position`` × the training "
        "patches' spread √(Σ_c var_c) (0: anywhere in any image matches, as PatchCore). The "
        "coreset, the shift and the scores all use it. 1 had a higher synthetic-validation AUROC "
        "than 0 (the default until the ninth session of 2026-12-05) and 4 "
        "(benchmarks/RESULTS.md).",
    )
    seed: int = param(0, "PRNG seed of the coreset's random projection.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("size", self.size)
        check_int("n_folds", self.n_folds, low=2)
        # jax.random.key keeps 32 bits: 2**32 would draw what 0 draws
        check_int("seed", self.seed, low=0, high=2**32 - 1)
        check_choice("coreset", self.coreset, CORESETS)
        check_int("chunk_patches", self.chunk_patches)
        check_bool("shift", self.shift)
        check_choice("reduce", self.reduce, REDUCTIONS)
        check_choice("foreground", self.foreground, FOREGROUNDS)
        if self.threshold == "chi2":
            raise ValueError(
                "threshold='chi2' does not apply to a memory bank: χ² is the law of a squared "
                "Mahalanobis distance under a Gaussian, and patch-to-bank distances have no "
                "such law; use threshold='cross_fit' (out-of-fold scores of the normals)."
            )
        check_choice("threshold", self.threshold, ("cross_fit", "none"))
        if self.projection_dim is not None:
            check_int("projection_dim", self.projection_dim)
        check_real("q", self.q, "in (0, 1]", lambda v: 0 < v <= 1)
        finite = "a finite number >= 0"
        check_real("position", self.position, finite, lambda v: math.isfinite(v) and v >= 0)
        if self.position > MAX_POSITION:
            raise ValueError(
                f"position must be at most {MAX_POSITION:g} (far below, a patch's place alone "
                f"decides its distance), got {self.position!r}."
            )

    def unread_by_score(self) -> tuple[str, ...]:
        """``fit_only``; the bank's making (``size``, ``projection_dim``, ``seed``, and the
        MSDE shift of ``shift=True``), ``dtype``, and ``position`` and ``foreground``, whose
        scale and rule the state's arrays carry: a bank scores with ``reduce``, ``q``,
        ``score_neighbors`` and ``batch_size`` alone (``q`` with ``reduce="top"`` only)."""
        making = ["size", "projection_dim", "seed", "shift", "k", "step_size", "max_iter", "tol"]
        top = () if self.reduce == "top" else ("q",)
        return (*self.fit_only, *making, "density", "dtype", "position", "foreground", *top)

    def projection(self, n_channels: int) -> int | None:
        """The coreset's projection dimension for ``n_channels``: ``None`` (exact) when
        ``projection_dim`` is ``None`` or not below the channel count."""
        dim = self.projection_dim
        return None if dim is None or dim >= n_channels else int(dim)

    def check_n_images(
        self, n_images: int, n_patches: int, largest_fold: int | None = None
    ) -> None:
        """Refuse too few training images for the folds, the shift's k and ``score_neighbors``;
        ``largest_fold``: the most images a cross-fit fold holds out (uneven with groups),
        default ⌈n_images / n_folds⌉ (more where copies of one image, or with groups a
        volume's slices, share a fold)."""
        if n_images < self.n_folds:
            raise ValueError(
                f"threshold={self.threshold!r} needs at least n_folds={self.n_folds} training "
                f"images (one fold each), got {n_images}; pass more normal images or lower "
                "n_folds."
            )
        even = math.ceil(n_images / self.n_folds)
        held = even if largest_fold is None else largest_fold
        smallest = n_images - held
        rows = min(self.size, smallest * n_patches)
        need, fix = self.score_neighbors, "score_neighbors"
        if self.shift and self.k > need:
            need, fix = self.k, "k"
        if rows < need:
            grouped = "" if held <= even else f"; {UNEVEN}"
            raise ValueError(
                f"The smallest cross-fit bank has {rows} patches ({smallest} images of "
                f"{n_patches} patches, at most size={self.size}{grouped}), fewer than the "
                f"{need} that {fix}={need} needs; pass more normal images, raise n_folds (each "
                f"fold then holds out fewer) or lower {fix}."
            )
