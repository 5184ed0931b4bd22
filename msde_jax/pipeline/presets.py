"""The configurations a user starts from: the label-free default and the candidate list.

:func:`recommended` is the default of ``msde-jax fit / evaluate / demo``, one fixed rule for
every dataset, chosen without abnormal labels (README "Which mode" says how, and what it
scores); :func:`candidates` is the fixed list :func:`~msde_jax.pipeline.selection.select`
chooses from by synthetic validation (``--select``).
"""

from typing import Any, NamedTuple

from msde_jax.detectors.fused import SupportsDetect
from msde_jax.detectors.msde import MSDEDetector
from msde_jax.detectors.patch_bank import PatchBankDetector
from msde_jax.embedder import Embedder
from msde_jax.io.cache import SupportsEmbed

__all__ = ["RECOMMENDED", "Candidate", "candidates", "recommended"]

RECOMMENDED = "bank:top"
"""The name :func:`candidates` gives the fixed rule, :func:`recommended`."""

# Full-rank Gaussians: min(n_components, d, n - 1) components are kept.
_FULL_RANK = 1 << 16


class Candidate(NamedTuple):
    """One configuration: an embedder and an unfitted detector for its features.

    Attributes:
        embedder: an :class:`~msde_jax.Embedder` (or any object with ``config()`` and
            ``embed(items)``).
        detector: a detector facade (:class:`~msde_jax.PatchBankDetector`,
            :class:`~msde_jax.MSDEDetector`, …), used as a template: the functions here fit
            copies and leave it unfitted.
    """

    embedder: SupportsEmbed
    detector: SupportsDetect


def recommended(backbone: str = "efficientnet_lite0", **embedder_options: Any) -> Candidate:
    """The default configuration, one rule for every dataset (README "Which mode").

    ``Embedder(backbone, features="patches", **embedder_options)`` (the backbone's patch
    layers, 3 × 3 aggregation, a 14 × 14 grid) and ``PatchBankDetector()`` (a 2,000-patch
    k-center coreset, each image scored by the mean of its top 10 % patch distances). It had
    the best mean synthetic-validation AUROC of the configurations measured, on every dataset
    and backbone run; no abnormal label chose it.
    """
    embedder = Embedder(backbone, features="patches", **embedder_options)
    return Candidate(embedder, PatchBankDetector())


def candidates(
    backbone: str = "efficientnet_lite0", **embedder_options: Any
) -> dict[str, Candidate]:
    """The fixed list :func:`select` chooses from by default, :data:`RECOMMENDED` first.

    - ``bank:top`` / ``bank:max`` / ``bank:mean``: the patch memory bank (:func:`recommended`),
      an image scored by the mean of its top 10 % patch distances, the largest, or the mean;
    - ``lw:patch-layers``: a full-rank Ledoit-Wolf Gaussian (``MSDEDetector(mode="none")``) on
      the global averages of the backbone's patch layers;
    - ``knn:head``: the distance to the nearest standardised normal, on the pooled embedding;
    - ``msde:head``: ``MSDEDetector()`` (inductive MSDE → PCA → Gaussian) on the pooled
      embedding, the paper's features.

    Args:
        backbone: the backbone of every candidate.
        embedder_options: passed to every :class:`~msde_jax.Embedder` (``weights``,
            ``image_size``, ``batch_size``, …).
    """
    patches = Embedder(backbone, features="patches", **embedder_options)
    layers = Embedder(backbone, layers=patches.layers, **embedder_options)
    head = Embedder(backbone, **embedder_options)
    lw = MSDEDetector(mode="none", covariance="ledoit_wolf", n_components=_FULL_RANK)
    return {
        RECOMMENDED: recommended(backbone, **embedder_options),
        "bank:max": Candidate(patches, PatchBankDetector(reduce="max")),
        "bank:mean": Candidate(patches, PatchBankDetector(reduce="mean")),
        "lw:patch-layers": Candidate(layers, lw),
        "knn:head": Candidate(head, MSDEDetector(mode="none", score="knn")),
        "msde:head": Candidate(head, MSDEDetector()),
    }
