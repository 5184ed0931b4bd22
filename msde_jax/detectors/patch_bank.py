"""The patch memory-bank detector (PatchCore, optionally MSDE-enhanced): its config, pure fit /
score and the facade.

:func:`fit_bank_detector` fits a :class:`BankState` (a pytree: the
:class:`~msde_jax.core.MemoryBank` and its :class:`BankConfig`) and a threshold from the patch
features of normal images; :func:`score_bank_detector` scores new images under that state and
is ``jax.jit``-able. :class:`PatchBankDetector` is the facade over the two (PatchCore: Roth et
al., *Towards Total Recall in Industrial Anomaly Detection*, CVPR 2022).

Patch features are (n_images, n_patches, channels) or (n_images, grid, grid, channels), the
:class:`~msde_jax.Embedder`'s ``features="patches"`` output. With ``foreground="pca"`` the state
also holds a label-free foreground rule (:mod:`msde_jax.core.foreground`) and each image's score
reduces its foreground patches only.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax._memory import Lower, check_memory
from msde_jax.core.anomaly_maps import maps_bytes, upsample_maps
from msde_jax.core.blocks import bucket_fit_rows, sample_keys
from msde_jax.core.foreground import Foreground, foreground_fit, foreground_mask
from msde_jax.core.memory_bank import (
    BankPositions,
    MemoryBank,
    grid_positions,
    image_scores,
    patch_scores,
    reduced_patches,
)
from msde_jax.detectors.bank_config import BankConfig
from msde_jax.detectors.bank_coreset import position_channels, subset_banks
from msde_jax.detectors.base import Detector
from msde_jax.detectors.config import check_features, check_int
from msde_jax.detectors.fitting import DetectorFit, chunked_scores, cross_fit, largest_fold

__all__ = [
    "BankConfig",
    "BankState",
    "PatchBankDetector",
    "fit_bank_detector",
    "score_bank_detector",
    "score_bank_flipped",
    "score_bank_foreground",
    "score_bank_maps",
    "score_bank_patches",
]


class BankState(NamedTuple):
    """A fitted patch memory-bank detector (a pytree).

    Attributes:
        bank: the :class:`~msde_jax.core.MemoryBank`; its rows are in content order of the
            training images, then patch position, and its ``indices`` are the rows of the
            training patches flattened to (n_images · n_patches, c) in the order they were
            given.
        config: the :class:`BankConfig` it was fitted with (a static pytree node).
        foreground: the :class:`~msde_jax.core.foreground.Foreground` rule with
            ``foreground="pca"``, else ``None`` (every patch counts).
        position: the bank rows' :class:`~msde_jax.core.BankPositions` and their weight with
            ``position`` > 0, else ``None`` (a patch matches anywhere).
    """

    bank: MemoryBank
    config: BankConfig
    foreground: Foreground | None = None
    position: BankPositions | None = None

    def for_scoring(self) -> "BankState":
        """The state as its score program is keyed: the config's unread parameters at their
        defaults (:meth:`~msde_jax.detectors.config.BaseConfig.scoring`). The same scores;
        states that differ only there share one compiled program."""
        return self._replace(config=self.config.scoring())


# ---------------------------------------------------------------------- the pipeline
def _fit_states(
    x: np.ndarray, keys: np.ndarray, config: BankConfig, subsets: list[np.ndarray], n_states: int
) -> list[tuple[BankState, int]]:
    """Fit on the images of each of the first ``n_states`` subsets (sorted indices into the
    checked patches ``x`` (n, ..., c) with content ``keys``; all of them shape the two-stage
    coreset's chunks): ``[(state, n_iter), …]``, one per subset. The banks come from
    :func:`~msde_jax.detectors.bank_coreset.subset_banks`; with
    ``foreground="pca"`` each state also gets the rule fitted on its images in content order,
    padded like the coreset so that nearby sizes share one program; with ``position`` > 0 the
    searches see each patch's place (:func:`~msde_jax.detectors.bank_coreset.position_channels`,
    one weight from all the images) and each state gets its bank rows' places."""
    states, position = [], position_channels(x, config.position)
    channels = None if position is None else position[1]
    banks = subset_banks(x, keys, config, subsets, n_states, channels)
    places = None if position is None else grid_positions(*_on_grid(x).shape[1:3])
    for subset, bank in zip(subsets[:n_states], banks, strict=True):
        foreground = None
        if config.foreground == "pca":
            grid = _on_grid(x[subset[np.argsort(keys[subset], kind="stable")]])
            pad = np.zeros((bucket_fit_rows(subset.size) - subset.size, *grid.shape[1:]), x.dtype)
            foreground = foreground_fit(np.concatenate([grid, pad]), subset.size)
        where = None
        if position is not None:  # each bank row's place: its patch's on the training grid
            rows = places[np.asarray(bank.indices) % places.shape[0]]
            where = BankPositions(jax.device_put(position[0]), jax.device_put(rows))
        states.append((BankState(bank, config, foreground, where), int(bank.n_iter)))
    return states


def _grid_of(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (h, w) patch grid of features of ``shape``: (n, h, w, c) as given, (n, P, c) as
    g × g when P = g² (how the bank places flat patches), else ``None``."""
    if len(shape) == 4:
        return int(shape[1]), int(shape[2])
    side = math.isqrt(shape[1])
    return (side, side) if side * side == shape[1] else None


def _on_grid(x: np.ndarray) -> np.ndarray:
    """(n, P, c) patches with P = g² as (n, g, g, c); (n, h, w, c) as they are."""
    if x.ndim == 4:
        return x
    side = math.isqrt(x.shape[1])
    return x.reshape(x.shape[0], side, side, x.shape[-1])


def score_bank_foreground(state: BankState, x: ArrayLike) -> jax.Array:
    """Which test patches are foreground under the state's rule
    (:func:`~msde_jax.core.foreground.foreground_mask`): boolean (m, P) or (m, g, g), all true
    without one (``foreground=None``). Pure, ``jax.jit``-able and batch-independent."""
    x = jnp.asarray(x, state.bank.bank.dtype)
    if state.foreground is None:
        return jnp.ones(x.shape[:-1], bool)
    return foreground_mask(state.foreground, x)


def score_bank_patches(state: BankState, x: ArrayLike) -> jax.Array:
    """Each test patch's mean distance to its ``score_neighbors`` nearest bank patches.

    :func:`~msde_jax.core.patch_scores` with the state's config, in blocks of patches (the batch
    rule of :meth:`BankConfig.batch` over the larger of the patch count and the bank size).
    Pure and ``jax.jit``-able; no input checks
    (:func:`~msde_jax.detectors.config.check_features` is the boundary).

    Args:
        state: a fitted :class:`BankState`.
        x: (m, P, c) or (m, g, g, c) patch features, c as at fit time.

    Returns:
        (m, P) or (m, g, g) patch scores, higher = more anomalous.
    """
    config = state.config
    x = jnp.asarray(x, state.bank.bank.dtype)
    n_queries = math.prod(x.shape[:-1])
    batch = config.batch(max(n_queries, state.bank.bank.shape[0]))
    if state.position is not None and x.ndim == 3:
        _square_grid(x.shape[1])  # a clear error for flat patches off a grid
    return patch_scores(
        state.bank, x, k=config.score_neighbors, batch_size=batch, positions=state.position
    )


def _square_grid(n_patches: int) -> None:
    """Refuse flat patches that are not g × g, with what to do (``position`` > 0)."""
    if math.isqrt(n_patches) ** 2 != n_patches:
        raise ValueError(
            f"position > 0 needs patches on a grid: {n_patches} patches per image is not g × g; "
            "pass (n, g, g, c) features, or position=0."
        )


def score_bank_maps(
    state: BankState, x: ArrayLike, *, size: int, sigma: float | None = None
) -> jax.Array:
    """Anomaly maps: the patch scores on the (g, g) grid upsampled to ``size`` and blurred.

    :func:`score_bank_patches` then :func:`~msde_jax.core.anomaly_maps.upsample_maps` (bilinear,
    then a Gaussian of σ = 4 · size / 224 pixels unless ``sigma`` is given, as PatchCore). In
    the units of the patch scores, so of the image score; batch-independent like them. With a
    foreground rule the patches the image score leaves out (:func:`score_bank_foreground`;
    none in an image with no foreground patch) are drawn at 0, the nearest a patch can be to
    the bank, so the map shows where the score comes from. Pure and ``jax.jit``-able with
    ``size`` and ``sigma`` static.

    Args:
        state: a fitted :class:`BankState`.
        x: (m, g, g, c) patch features on a square grid, c as at fit time.
        size: side of the maps, the embedder's ``image_size``.
        sigma: blur σ in map pixels (0: none; ``None``: PatchCore's, scaled to ``size``).

    Returns:
        (m, size, size) maps, higher = more anomalous.
    """
    scores = score_bank_patches(state, x)
    if state.foreground is not None:
        flat = scores.reshape(scores.shape[0], -1)
        kept = reduced_patches(score_bank_foreground(state, x).reshape(flat.shape))
        scores = jnp.where(kept, flat, 0).reshape(scores.shape)
    return upsample_maps(scores, size, sigma)


def score_bank_detector(state: BankState, x: ArrayLike) -> jax.Array:
    """Anomaly score of each image under a fitted ``state``; higher = more anomalous.

    Patch scores (:func:`score_bank_patches`) reduced to one score per image by
    :func:`~msde_jax.core.image_scores` with the config's ``reduce`` and ``q``, over the
    foreground patches only when the state has a foreground rule
    (:func:`score_bank_foreground`; an image without one is reduced over all). Every image is
    scored
    on its own: one image alone gets the same score as in any batch. Pure and ``jax.jit``-able
    as ``jax.jit(score_bank_detector)(state, x)``; it recompiles only for a new input shape or
    config. No input checks run here;
    :func:`~msde_jax.detectors.config.check_features` is the boundary.

    Args:
        state: a fitted :class:`BankState` (from :func:`fit_bank_detector`).
        x: (m, P, c) or (m, g, g, c) patch features, c as at fit time, finite.

    Returns:
        (m,) scores.
    """
    return _reduce(state, score_bank_patches(state, x), x)


def _reduce(state: BankState, scores: jax.Array, x: jax.Array) -> jax.Array:
    """Patch scores of features ``x`` → image scores (over the foreground with a rule)."""
    scores = scores.reshape(scores.shape[0], -1)
    mask = None
    if state.foreground is not None:
        mask = score_bank_foreground(state, x).reshape(scores.shape)
    return image_scores(scores, reduce=state.config.reduce, q=state.config.q, mask=mask)


def score_bank_flipped(state: BankState, x: ArrayLike, x_flipped: ArrayLike) -> jax.Array:
    """Image scores with test-time flips: each image's patch-score map averaged with its
    mirror's, flipped back, then reduced as :func:`score_bank_detector` does (over the
    foreground of ``x`` with a rule).

    The two maps are s(x) and s(x̃) of the features of the images and of their left–right
    mirrors (``Embedder(flip=True)``); s(x̃) is mirrored back along the grid's width so each
    position averages the same place of the image. Batch-independent and ``jax.jit``-able.

    Args:
        state: a fitted :class:`BankState`.
        x: (m, g, g, c) patch features of the images.
        x_flipped: (m, g, g, c) patch features of their mirrors.

    Returns:
        (m,) scores, higher = more anomalous (not on the scale of ``threshold_``, which was
        fitted without flips).
    """
    x = jnp.asarray(x, state.bank.bank.dtype)
    mirrored = jnp.flip(score_bank_patches(state, x_flipped), axis=2)
    return _reduce(state, (score_bank_patches(state, x) + mirrored) / 2, x)


def fit_bank_detector(
    x: ArrayLike, config: BankConfig, *, groups: ArrayLike | None = None
) -> DetectorFit:
    """Fit the patch memory bank on the patch features of normal images, and its threshold.

    1. the images are put in content order (a hash of their values), so nothing depends on
       the order they come in;
    2. the bank: ``min(size, N)`` of the N training patches by the greedy k-center coreset
       (on a random projection to ``projection_dim`` dimensions when that is below the
       channel count, PRNG key ``seed``): with ``coreset="two_stage"`` (default) the search
       over the ``size`` picks of each chunk of images (the folds, split to at most
       ``chunk_patches`` patches), with ``"greedy"`` one search over all N
       (:func:`~msde_jax.detectors.bank_coreset.subset_banks`);
    3. with ``shift=True``, MSDE on the bank (``bank_fit(..., shift=True)``): density weights
       (``density``) and the blurring weighted mean shift, with the bank rows in content order
       of the images, then patch position.

    The threshold needs no abnormal images: each training image is scored by a bank fitted on
    the images of the other ``n_folds − 1`` folds (folds of images by content order,
    :func:`~msde_jax.detectors.fitting.cross_fit`) and the threshold is the
    ``1 − contamination`` quantile of those out-of-fold scores.

    Runs eagerly (NumPy hashing and indexing); its parts are jitted: the first stage's chunks
    are searched by one program (:func:`~msde_jax.core.kcenter_greedy_batched`), and the coresets
    of the final bank and of every fold's bank together, as one compiled program
    (:func:`~msde_jax.core.bank_fit_subsets`). With ``coreset="two_stage"`` a fold's bank is
    the search over the other folds' picks, so the fold's own patches never enter it.

    Args:
        x: (n, P, c) or (n, g, g, c) patch features of normal images
            (:func:`~msde_jax.detectors.config.check_features`).
        config: the :class:`BankConfig`.
        groups: one group id per image (e.g. the volume each slice comes from): a group's
            images share a fold (:func:`~msde_jax.detectors.fitting.folds`).

    Returns:
        :class:`~msde_jax.detectors.fitting.DetectorFit` ``(state, decision_scores,
        threshold, n_iter)``.
    """
    # not copied: the fit reads x (in blocks, chunks and folds) and keeps none of it
    x = check_features(x, kind="patches", dtype=config.dtype, copy=False)
    config.check_n_images(x.shape[0], math.prod(x.shape[1:-1]))
    if config.foreground is not None and x.ndim == 3 and math.isqrt(x.shape[1]) ** 2 != x.shape[1]:
        raise ValueError(
            f"foreground={config.foreground!r} needs patches on a grid (its border and centre): "
            f"{x.shape[1]} patches per image is not g × g; pass (n, g, g, c) features."
        )
    if config.position > 0 and x.ndim == 3:
        _square_grid(x.shape[1])
    keys = sample_keys(x)
    # The folds shape the bank even without a threshold; copies of one image share a fold.
    n_patches = math.prod(x.shape[1:-1])
    config.check_n_images(x.shape[0], n_patches, largest_fold(keys, config.n_folds, groups))
    return cross_fit(x, keys, config, _fit_states, score_bank_detector, groups=groups, joint=True)


# ---------------------------------------------------------------------- the estimator
class PatchBankDetector(Detector):
    """One-class anomaly detector on patch features: a PatchCore memory bank, optionally MSDE.

    The facade over :func:`fit_bank_detector` and :func:`score_bank_detector` (their
    docstrings say what is computed), with the surface of :class:`~msde_jax.MSDEDetector`: the
    parameters make a :class:`BankConfig`, ``fit`` stores the fitted :class:`BankState` as
    ``state_`` and learns from the patch features of normal images only, (n, P, c) or
    (n, g, g, c) (``Embedder(features="patches")``). Each test patch scores its mean distance
    to its ``score_neighbors`` nearest bank patches (:meth:`score_patches`, :meth:`score_maps`)
    and each image the ``reduce`` of its patch scores. **Higher means more anomalous**; every
    image is scored on its own (batch-independent).

    The score-time parameters ``reduce``, ``q``, ``score_neighbors`` and ``batch_size`` may
    change after ``fit`` (e.g. ``set_params(reduce="max")``); ``threshold_``,
    ``decision_scores_`` and ``labels_`` stay those of the fitted score, so :meth:`predict`
    and :meth:`save` refuse until it is set back or the detector refitted (``batch_size``
    changes no score; :meth:`predict` also takes a ``q`` that the score does not read, i.e.
    with ``reduce`` other than ``"top"``).
    Every other parameter (``shift``, ``size``, …) takes effect at the next ``fit``; until then
    scoring uses its fit-time value (in ``state_.config``), and :meth:`save` refuses.
    """

    config_class = BankConfig
    state_class = BankState
    fit_function = staticmethod(fit_bank_detector)
    score_function = staticmethod(score_bank_detector)
    features = "patches"
    has_maps = True
    fitted_scalars = ("n_features_in_", "n_patches_", "n_iter_")
    meta_dims = {"c": "n_features_in_", "patches": "n_patches_"}
    # the only coreset before "two_stage"; no positions before the ninth session of 2026-12-05
    absent_params = {"coreset": "greedy", "position": 0.0}
    saved_arrays = """
        state.bank.bank       f  size c
        state.bank.density    f  size
        state.bank.indices    i  size
        state.bank.n_iter     i
        state.foreground.direction  f  c
        state.foreground.center     f  c
        state.foreground.threshold  f
        state.foreground.floor      f
        state.foreground.active     b
        state.position.weight  f
        state.position.bank    f  size xy
    """

    def _describe(self, state: BankState, shape: tuple[int, ...]) -> dict[str, Any]:
        return {
            "n_features_in_": int(shape[-1]),
            "n_patches_": int(math.prod(shape[1:-1])),
            "patch_grid_": _grid_of(shape),
        }

    def _fitted_meta(self) -> dict[str, Any]:
        grid = getattr(self, "patch_grid_", None)  # (h, w) of the training grid, if any
        return {**super()._fitted_meta(), "patch_grid_": None if grid is None else list(grid)}

    def _checked(self, X: ArrayLike) -> tuple[BankState, jax.Array]:
        """As the base class, and with ``position`` > 0 the features must lie on the training
        grid: the same patch count on another grid would give the patches other places."""
        state, x = super()._checked(X)
        grid = getattr(self, "patch_grid_", None)
        if state.position is not None and grid is not None and _grid_of(x.shape) != grid:
            given = " × ".join(map(str, x.shape[1:-1]))
            raise ValueError(
                f"this detector was fitted with position={self.position!r} on a {grid[0]} × "
                f"{grid[1]} patch grid, and a patch's place counts in its score; these features "
                f"are {given} patches per image: pass (m, {grid[0]}, {grid[1]}, c) features."
            )
        return state, x

    def _memory_needed(
        self, shape: tuple[int, ...], state: BankState | None = None
    ) -> tuple[dict[str, int], list[Lower]]:
        """Fitting: three float32 copies of the N = n·P training patches (checked, in content
        order, on the device), the coreset search (the (N, projection_dim) projection, four
        length-N vectors, and three more per search: the final fit's and each fold's), the kNN
        distance blocks of the out-of-fold scoring (rows per block × bank rows, with its top-k,
        × 2) and, with ``shift=True``, the bank's shift (bank rows × its block × 3). With
        ``coreset="two_stage"`` no copy of the patches but a fold's (scored out of fold), and
        the searches' terms for the patches of one call of the first stage (two copies of at
        most ``chunk_patches`` and the padding of a chunk) and for the second stage's pool
        (``size`` rows per chunk).
        Scoring: two copies of the patches, their scores and the blocks. With ``position`` the
        patches count two channels more (their places)."""
        if len(shape) not in (3, 4) or min(shape) < 1:
            return {}, []
        config = self.config() if state is None else state.config
        n, c = shape[0], shape[-1] + 2 * (config.position > 0)  # the searched channels
        rows = n * math.prod(shape[1:-1])
        if state is None:
            bank, subsets = min(config.size, rows), config.n_folds + 1
            projected = config.projection(c) or 0
            needs = {
                "patch features": 3 * rows * c * 4,
                # the final fit's and the folds' searches share the (N, projection_dim)
                # projection; each keeps its own length-N distances, mask and products
                "coreset search": rows * (projected + 4 + 3 * subsets) * 4,
            }
            if config.coreset == "two_stage":
                patches = math.prod(shape[1:-1])
                block = min(rows, config.chunk_patches + config.chunk_patches // 8 + patches)
                chunks = config.n_folds + -(-rows // config.chunk_patches)
                pool = min(rows, chunks * config.size)
                needs = {  # the features themselves are not copied (check_features)
                    "patch features": (-(-rows // config.n_folds) + 2 * block) * c * 4,
                    "coreset search": (
                        block * (projected + 7) + pool * (c + projected + 4 + 3 * subsets)
                    )
                    * 4,
                }
        else:
            bank = int(state.bank.bank.shape[0])
            needs = {"patch features": 2 * rows * c * 4, "patch scores": 2 * rows * 4}
        block = min(config.batch(max(rows, bank)) or rows, rows)
        needs["kNN distance blocks"] = 2 * block * bank * 4
        if state is None and config.shift:
            needs["bank shift"] = 3 * bank * min(config.batch(bank) or bank, bank) * 4
        lower = [Lower("the number of images", n)]
        if needs["kNN distance blocks"] > needs["patch features"]:
            lower = [Lower("the detector's batch_size", block)]
            if state is None:
                lower.append(Lower("size (--bank-size)", bank))
        return needs, lower

    def score_patches(self, X: ArrayLike) -> np.ndarray:
        """Each patch's score (:func:`score_bank_patches`), e.g. for anomaly heatmaps.

        Args:
            X: (m, P, c) or (m, g, g, c) patch features, as at fit time.

        Returns:
            (m, P) or (m, g, g) float scores, higher = more anomalous.
        """
        state, x = self._checked(X)
        with self._memory_checked("scoring patches with", x.shape, state):
            return chunked_scores(score_bank_patches, state, x)

    def score_samples(self, X: ArrayLike, *, flipped: ArrayLike | None = None) -> np.ndarray:
        """Anomaly score of each image; **higher = more anomalous**.

        Args:
            X: (m, P, c) or (m, g, g, c) patch features, as at fit time.
            flipped: the patch features of the images' left–right mirrors
                (``Embedder(..., flip=True)``, or ``embedder.flipped()``), the shape of ``X``:
                test-time flips (:func:`score_bank_flipped`), on a square grid. Such scores
                are on another scale than ``threshold_`` (fitted without flips): use them to
                rank, not with :meth:`predict`.

        Returns:
            (m,) float scores.
        """
        if flipped is None:
            return super().score_samples(X)
        state, x = self._checked(X)
        x_flipped = self._checked(flipped)[1]
        if x_flipped.shape != x.shape:
            raise ValueError(f"flipped must have the shape of X, {x.shape}; got {x_flipped.shape}.")
        x, x_flipped = self._square(x, "flips"), self._square(x_flipped, "flips")
        with self._memory_checked("scoring with", x.shape, state):
            return np.asarray(jax.device_get(score_bank_flipped(state, x, x_flipped)))

    @staticmethod
    def _square(x: jax.Array, what: str = "maps") -> jax.Array:
        """Checked (m, P, c) or (m, g, g, c) features as (m, g, g, c), or a clear error."""
        if x.ndim == 3:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise ValueError(
                    f"{what} need patches on a square grid: {x.shape[1]} patches per image is "
                    "not g × g; pass (m, g, g, c) features."
                )
            x = x.reshape(x.shape[0], side, side, x.shape[-1])
        elif x.shape[1] != x.shape[2]:
            raise ValueError(f"{what} need a square patch grid, got {x.shape[1]} × {x.shape[2]}.")
        return x

    def foreground_patches(self, X: ArrayLike) -> np.ndarray:
        """Which patches the image score reduces over (:func:`score_bank_foreground`).

        Args:
            X: (m, P, c) or (m, g, g, c) patch features, as at fit time.

        Returns:
            (m, P) or (m, g, g) booleans: the fitted foreground rule's mask (all true with
            ``foreground=None``, or where the rule found no clean background). An image with
            no foreground patch is scored over all of them.
        """
        state, x = self._checked(X)
        return np.asarray(jax.device_get(score_bank_foreground(state, x)))

    def score_maps(
        self, X: ArrayLike, *, size: int = 224, sigma: float | None = None
    ) -> np.ndarray:
        """Anomaly heatmaps (:func:`score_bank_maps`): where in each image the score comes from.

        The patch scores on the feature grid, resized bilinearly to ``size`` × ``size`` and
        blurred by a Gaussian (σ = 4 · size / 224 pixels, PatchCore's 4 at 224, unless
        ``sigma`` is given), in the units of :meth:`score_samples` (a patch's distance to the
        bank; with a foreground rule the background patches the score leaves out are drawn
        at 0). Pass the embedder's ``image_size``: the maps then lie on the image as the
        embedder saw it (``Embedder.preprocess``). One image alone gets the same map as in any
        batch (to float rounding in the resize: its patch scores are the same bit for bit).

        Args:
            X: (m, g, g, c) patch features (or (m, P, c) with P a square number), as at fit time.
            size: side of the maps in pixels.
            sigma: blur σ in map pixels; 0 for none.

        Returns:
            (m, size, size) float maps, higher = more anomalous.
        """
        state, x = self._checked(X)
        x = self._square(x)
        check_int("size", size)
        real = isinstance(sigma, int | float | np.number) and not isinstance(sigma, bool)
        if sigma is not None and not (real and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0 (0: no blur), got {sigma!r}.")
        size, m = int(size), x.shape[0]
        needs = {
            "maps on the device": maps_bytes(m, size, sigma),
            "maps returned": m * size * size * 4,
        }
        step = f"anomaly maps of {m} image{'s' * (m != 1)} at {size} × {size}"
        lower = [Lower("size (the maps' side)", size, 2), Lower("the number of images", m)]
        check_memory(step, needs, lower=lower, device=jax.devices()[0])
        with self._memory_checked("scoring patches with", x.shape, state):
            maps = score_bank_maps(state, x, size=size, sigma=sigma)
            return np.asarray(jax.device_get(maps))

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._restore(meta, arrays)
        grid = meta.get("patch_grid_")  # absent from files saved before 2026-12-06: unknown
        valid = isinstance(grid, list) and len(grid) == 2
        valid = valid and all(type(side) is int and side > 0 for side in grid)
        if grid is not None and not (valid and math.prod(grid) == self.n_patches_):
            raise ValueError(
                f"not a valid saved PatchBankDetector: patch_grid_ {grid!r} is not two positive "
                f"integers whose product is n_patches_ ({self.n_patches_})."
            )
        self.patch_grid_ = None if grid is None else (grid[0], grid[1])
        bank, indices = self.state_.bank.bank, np.asarray(self.state_.bank.indices)
        # The bank's rows are training patches: at least one, each one of the n · P given
        # (n is the number of decision scores, which threshold="none" leaves out).
        n_patches = len(arrays["decision_scores_"]) * self.n_patches_
        limit = math.inf if self.threshold == "none" else n_patches
        in_range = indices.size == 0 or 0 <= indices.min() <= indices.max() < limit
        if bank.shape[0] < 1 or not in_range:
            known = (
                "" if limit == math.inf else f", where the training images had {n_patches} patches"
            )
            raise ValueError(
                f"not a valid saved PatchBankDetector: a bank of {bank.shape[0]} rows with "
                f"indices in [{indices.min(initial=0)}, {indices.max(initial=0)}]{known}."
            )
        has_rule = self.state_.foreground is not None
        if has_rule != (self.foreground is not None):
            raise ValueError(
                f"not a valid saved PatchBankDetector: foreground={self.foreground!r} but the "
                f"file {'holds' if has_rule else 'lacks'} a foreground rule."
            )
        where = self.state_.position
        if where is not None:  # (size, 2) places in [0, 1], a finite weight ≥ 0 (0: constant)
            places, weight = np.asarray(where.bank), float(where.weight)
            if places.shape != (bank.shape[0], 2) or not (0 <= places.min() and places.max() <= 1):
                raise ValueError(
                    f"not a valid saved PatchBankDetector: bank positions of shape "
                    f"{places.shape} outside [0, 1] or not one (row, column) per bank row."
                )
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"not a valid saved PatchBankDetector: position weight {weight}.")
        if (where is None) != (self.position == 0):
            raise ValueError(
                f"not a valid saved PatchBankDetector: position={self.position!r} but the file "
                f"{'lacks' if where is None else 'holds'} bank positions."
            )
