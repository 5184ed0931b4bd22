"""The configurations a user starts from: the label-free default and the candidate list.

:func:`recommended` is the default of ``msde-jax fit / evaluate / demo``, one fixed rule for
every dataset, chosen without abnormal labels (README "Which mode" says how, and what it
scores); :func:`candidates` is the fixed list :func:`~msde_jax.pipeline.selection.select`
chooses from by synthetic validation (``--select``); :func:`ensemble` is the fused
configuration among them (whole-image Gaussians, cosine kNN and the patch bank, each
rank-calibrated on its out-of-fold normal scores).
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

from msde_jax.detectors.fused import FusedDetector, SupportsDetect
from msde_jax.detectors.msde import MSDEDetector
from msde_jax.detectors.patch_bank import PatchBankDetector
from msde_jax.embedder import Embedder
from msde_jax.io.cache import SupportsEmbed

__all__ = [
    "ENSEMBLE_LEVELS",
    "RECOMMENDED",
    "Candidate",
    "candidates",
    "ensemble",
    "recommended",
    "seeded",
]

RECOMMENDED = "bank:top"
"""The name :func:`candidates` gives the fixed rule, :func:`recommended`."""

ENSEMBLE_LEVELS = ("joint", "each")
"""How :func:`ensemble` models the pooled patch layers: one Gaussian of the concatenated
levels (``"joint"``) or one per level (``"each"``)."""

# Full-rank Gaussians: min(n_components, d, n - 1) components are kept.
_FULL_RANK = 1 << 16


class Candidate(NamedTuple):
    """One configuration: an embedder and an unfitted detector for its features.

    Attributes:
        embedder: an :class:`~msde_jax.Embedder` (or any object with ``config()`` and
            ``embed(items)``); for a :class:`~msde_jax.FusedDetector`, a mapping
            ``{component name: embedder}``.
        detector: a detector facade (:class:`~msde_jax.PatchBankDetector`,
            :class:`~msde_jax.MSDEDetector`, …), used as a template: the functions here fit
            copies and leave it unfitted.
    """

    embedder: SupportsEmbed | Mapping[str, SupportsEmbed]
    detector: SupportsDetect


def recommended(backbone: str = "efficientnet_lite0", **embedder_options: Any) -> Candidate:
    """The default configuration, one rule for every dataset (README "Which mode").

    ``Embedder(backbone, features="patches", **embedder_options)`` (the backbone's patch
    layers, 3 × 3 aggregation, a 14 × 14 grid) and ``PatchBankDetector()`` (a 5,000-patch
    k-center coreset, a patch's distance counting its place on the grid with ``position=1``,
    each image scored by the mean of its top 10 % patch distances). It had the best mean
    synthetic-validation AUROC of the 14 configurations first compared, on every dataset and
    backbone run, its bank's 5,000 rows the best among 2,000, 5,000 and 10,000, and
    ``position=1`` the best of 0, 1 and 4; no abnormal label chose any of them. Two later
    settings scored higher on synthetic validation (the top 5 %, and both layers given equal
    weight) and were not adopted: each lowered a dataset's test AUROC by more than 0.01, which
    issue 22 forbids (``benchmarks/RESULTS.md``, the tenth session of 2026-12-05).
    """
    embedder = Embedder(backbone, features="patches", **embedder_options)
    return Candidate(embedder, PatchBankDetector())


def _gaussian() -> MSDEDetector:
    """A full-rank Ledoit-Wolf Gaussian on standardised features (no shift)."""
    return MSDEDetector(mode="none", covariance="ledoit_wolf", n_components=_FULL_RANK)


def _cosine_knn(k: int = 5) -> MSDEDetector:
    """The mean cosine distance √(2 − 2 cos) to the k nearest training normals."""
    return MSDEDetector(
        mode="none", score="knn", score_neighbors=k, normalize="l2", standardize=False
    )


def ensemble(
    backbone: str = "efficientnet_lite0",
    *,
    calibration: str = "rank",
    levels: str = "joint",
    neighbors: int = 5,
    **embedder_options: Any,
) -> Candidate:
    """Whole-image and patch detectors fused into one score (issue 22).

    A :class:`~msde_jax.FusedDetector` (``calibration``, by default ``"rank"``: each
    component's score becomes −log of its conformal p-value against its out-of-fold normal
    scores) of

    - ``"layers"``: a full-rank Ledoit-Wolf Gaussian (``MSDEDetector(mode="none",
      covariance="ledoit_wolf")``) on the global averages of the backbone's patch layers,
      concatenated; with ``levels="each"`` one such Gaussian per layer, named
      ``"layer:<layer name>"``;
    - ``"head"``: cosine kNN, the mean cosine distance to the ``neighbors`` nearest training
      normals (``normalize="l2"``, ``standardize=False``), on the pooled final embedding;
    - ``"patches"``: the patch memory bank, ``PatchBankDetector()`` on
      ``Embedder(features="patches")`` (:func:`recommended`'s).

    The embedder is a mapping with the same names: in
    :func:`~msde_jax.pipeline.evaluation.evaluate` (and ``msde-jax evaluate``) embedders of one
    backbone share its forward pass (:func:`~msde_jax.embedder.share_network`), and the
    embedding cache keeps each entry's features. The fused score's heatmaps are its patch
    component's (``FusedDetector.score_maps``).

    Args:
        backbone: the backbone of every part.
        calibration: ``"rank"`` or ``"zscore"`` (:class:`~msde_jax.FusedDetector`).
        levels: ``"joint"`` or ``"each"`` (:data:`ENSEMBLE_LEVELS`).
        neighbors: k of the cosine kNN.
        embedder_options: passed to every :class:`~msde_jax.Embedder`.
    """
    if levels not in ENSEMBLE_LEVELS:
        raise ValueError(f"levels must be one of {ENSEMBLE_LEVELS}, got {levels!r}.")
    patches = Embedder(backbone, features="patches", **embedder_options)
    if levels == "joint":
        layers = {"layers": Embedder(backbone, layers=patches.layers, **embedder_options)}
    else:
        layers = _level_embedders(backbone, patches.layers, embedder_options)
    head = Embedder(backbone, **embedder_options)
    return _fused(layers, head, patches, calibration=calibration, neighbors=neighbors)


def _level_embedders(
    backbone: str, layers: tuple[str, ...], options: dict[str, Any]
) -> dict[str, Embedder]:
    return {f"layer:{layer}": Embedder(backbone, layers=(layer,), **options) for layer in layers}


def _fused(
    layers: dict[str, SupportsEmbed],
    head: SupportsEmbed,
    patches: SupportsEmbed,
    *,
    calibration: str = "rank",
    neighbors: int = 5,
) -> Candidate:
    """:func:`ensemble`'s candidate from its embedders (shared with other candidates)."""
    components: dict[str, SupportsDetect] = {name: _gaussian() for name in layers}
    components["head"] = _cosine_knn(neighbors)
    components["patches"] = PatchBankDetector()
    embedders = {**layers, "head": head, "patches": patches}
    return Candidate(embedders, FusedDetector(components, calibration=calibration))


def candidates(
    backbone: str = "efficientnet_lite0", **embedder_options: Any
) -> dict[str, Candidate]:
    """The fixed list :func:`~msde_jax.pipeline.selection.select` chooses from by default,
    :data:`RECOMMENDED` first.

    - ``bank:top`` / ``bank:max`` / ``bank:mean``: the patch memory bank (:func:`recommended`),
      an image scored by the mean of its top 10 % patch distances, the largest, or the mean;
    - ``lw:patch-layers``: a full-rank Ledoit-Wolf Gaussian (``MSDEDetector(mode="none")``) on
      the global averages of the backbone's patch layers;
    - ``knn:head``: the distance to the nearest standardised normal, on the pooled embedding;
    - ``knn:head-cosine``: the mean cosine distance to the 5 nearest normals, on the pooled
      embedding (the ensemble's ``head`` component);
    - ``msde:head``: ``MSDEDetector()`` (inductive MSDE → PCA → Gaussian) on the pooled
      embedding, the paper's features;
    - ``ensemble:rank``: :func:`ensemble`, the three fused by rank calibration;
      ``ensemble:rank-levels`` with one Gaussian per patch layer; ``ensemble:zscore`` the
      three fused by z-scores.

    Args:
        backbone: the backbone of every candidate.
        embedder_options: passed to every :class:`~msde_jax.Embedder` (``weights``,
            ``image_size``, ``batch_size``, …).
    """
    patches = Embedder(backbone, features="patches", **embedder_options)
    layers = Embedder(backbone, layers=patches.layers, **embedder_options)
    head = Embedder(backbone, **embedder_options)
    levels = _level_embedders(backbone, patches.layers, embedder_options)
    return {
        RECOMMENDED: recommended(backbone, **embedder_options),
        "bank:max": Candidate(patches, PatchBankDetector(reduce="max")),
        "bank:mean": Candidate(patches, PatchBankDetector(reduce="mean")),
        "lw:patch-layers": Candidate(layers, _gaussian()),
        "knn:head": Candidate(head, MSDEDetector(mode="none", score="knn")),
        "knn:head-cosine": Candidate(head, _cosine_knn()),
        "msde:head": Candidate(head, MSDEDetector()),
        "ensemble:rank": _fused({"layers": layers}, head, patches),
        "ensemble:rank-levels": _fused(levels, head, patches),
        "ensemble:zscore": _fused({"layers": layers}, head, patches, calibration="zscore"),
    }


def seeded(detector: Any, seed: int) -> Any:
    """``detector`` (modified in place) with every ``seed`` parameter set to ``seed``: the
    bank's coreset projection, a fused detector's components' included (``patches__seed``).
    Detectors with no randomness (``MSDEDetector``) are returned as they are. For results
    reported over seeds, e.g. ``seeded(candidate.detector, s)`` for s = 0, 1, 2."""
    names = [n for n in detector.get_params() if n == "seed" or n.endswith("__seed")]
    return detector.set_params(**dict.fromkeys(names, seed)) if names else detector
