"""Volume scores: a volume's slice scores gathered into one score, and the volume threshold.

A volume (a NIfTI file or a DICOM series, read as its kept slices by :mod:`msde_jax.io.inputs`)
is scored by the mean of its k highest slice scores, k = max(1, ⌈0.1 · n⌉) with n the number
of its slices that were scored (:func:`aggregate`): a lesion seen on a few slices raises the
volume's score, and one odd slice of a long scan counts less than in the maximum.

The volume threshold needs no abnormal volume, as the slice threshold: each training volume is
scored by the same aggregate of its slices' out-of-fold scores (the detector's
``decision_scores_``), and the threshold is the ``1 − contamination`` quantile of those volume
scores (:func:`volume_threshold`). The detector is fitted with a volume's slices in one
cross-fit fold (``fit(..., groups=SliceGroups.fold_groups())``), so no training slice is scored
by a model that saw its volume. :func:`volume_record` is what
``msde-jax fit`` stores in the model's metadata under ``"volumes"``.
"""

import math
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from jax.typing import ArrayLike

from msde_jax.core.metrics import evaluation_metrics
from msde_jax.detectors.fitting import quantile_threshold
from msde_jax.io.inputs import SliceGroups

__all__ = [
    "AGGREGATE",
    "TOP_FRACTION",
    "TOP_PERCENT",
    "VolumeScores",
    "aggregate",
    "cross_fit_folds",
    "fit_groups",
    "read_volume_record",
    "top_k",
    "volume_metrics",
    "volume_record",
    "volume_scores",
    "volume_threshold",
]

TOP_PERCENT = 10  # an integer, so that ⌈n · 10 / 100⌉ is exact
TOP_FRACTION = TOP_PERCENT / 100
AGGREGATE = "mean of the top max(1, ceil(0.1 n)) slice scores, n = slices scored"


def top_k(n: int) -> int:
    """How many of a volume's n scored slices its score averages: max(1, ⌈0.1 · n⌉)."""
    return max(1, -(-n * TOP_PERCENT // 100))


def aggregate(slice_scores: ArrayLike) -> float:
    """A volume's score: the mean of its :func:`top_k` highest slice scores."""
    s = np.sort(np.asarray(slice_scores, np.float64).reshape(-1))
    if s.size == 0:
        raise ValueError("a volume without scored slices has no score.")
    return float(s[-top_k(s.size) :].mean())


class VolumeScores(NamedTuple):
    """One score per volume.

    Attributes:
        names: the volumes' names (``Volume.name``).
        sources: the file or folder each was read from.
        n_scored: (v,) how many of its slices were scored.
        n_slices: (v,) how many slices it has along its axis (empty ones included).
        scores: (v,) float64 volume scores (:func:`aggregate`).
    """

    names: tuple[str, ...]
    sources: tuple[str, ...]
    n_scored: np.ndarray
    n_slices: np.ndarray
    scores: np.ndarray


def volume_scores(scores: ArrayLike, groups: SliceGroups) -> VolumeScores:
    """Gather per-item scores into one score per volume of ``groups`` (2-D images left out).

    Args:
        scores: (n,) scores of the items ``groups`` describes.
        groups: which volume each item is a slice of.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size != groups.volume.size:
        raise ValueError(f"got {scores.size} scores for {groups.volume.size} items.")
    members = groups.members()
    return VolumeScores(
        names=tuple(v.name for v in groups.volumes),
        sources=tuple(v.source for v in groups.volumes),
        n_scored=np.array([m.size for m in members], np.int64),
        n_slices=np.array([v.n_slices for v in groups.volumes], np.int64),
        scores=np.array([aggregate(scores[m]) for m in members], np.float64),
    )


def volume_threshold(
    decision_scores: ArrayLike, groups: SliceGroups, contamination: float
) -> float:
    """The ``1 − contamination`` quantile of the training volumes' scores, each the
    :func:`aggregate` of its slices' out-of-fold scores (``decision_scores`` in the order of the
    fitted rows, which ``groups`` describes)."""
    if not groups.has_volumes:
        raise ValueError("no volumes among the training items: no volume threshold.")
    return quantile_threshold(volume_scores(decision_scores, groups).scores, contamination)


def slice_plane(groups: SliceGroups, axis: str) -> str:
    """The plane the slices of ``groups``' volumes lie in: the most frequent of their known
    planes (``Volume.axis``: a DICOM series' own, whatever ``axis`` was given), else ``axis``."""
    planes = [v.axis for v in groups.volumes if v.axis in ("axial", "coronal", "sagittal")]
    return max(dict.fromkeys(planes), key=planes.count) if planes else axis


def volume_record(detector: Any, groups: SliceGroups, *, axis: str) -> dict[str, Any]:
    """What a model fitted on volumes keeps about them (``metadata["volumes"]``), JSON-able.

    ``{"axis", "aggregate", "top_fraction", "n_volumes", "contamination", "threshold", "why"}``:
    ``threshold`` is :func:`volume_threshold` of the detector's ``decision_scores_``, or
    ``None`` (with the reason in ``why``) when they are not out of fold (MSDE's
    ``threshold="chi2"``).
    """
    record: dict[str, Any] = {
        "axis": axis,
        "aggregate": AGGREGATE,
        "top_fraction": TOP_FRACTION,
        "n_volumes": len(groups.volumes),
        "contamination": float(detector.contamination),
        "threshold": None,
        "why": None,
    }
    rule = getattr(detector, "threshold", "cross_fit")
    if rule != "cross_fit":
        scores = "no training scores" if rule == "none" else "in-sample training scores"
        record["why"] = (
            f"the detector's threshold={rule!r} gives {scores}, not out-of-fold ones; fit "
            "with --threshold cross_fit for a volume threshold"
        )
        return record
    record["threshold"] = volume_threshold(
        detector.decision_scores_, groups, float(detector.contamination)
    )
    return record


def volume_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float | None) -> dict[str, Any]:
    """Volume-level metrics: AUROC and AP, and at ``threshold`` (when there is one) the rest of
    :func:`~msde_jax.core.metrics.evaluation_metrics`; ``threshold`` is ``None`` otherwise."""
    full = evaluation_metrics(labels, scores, np.inf if threshold is None else threshold)
    if threshold is None:
        keep = ("auroc", "average_precision", "n_normal", "n_abnormal")
        full = {k: full[k] for k in keep} | {"threshold": None}
    return {**full, "aggregate": AGGREGATE}


def read_volume_record(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``"volumes"`` record of a model's metadata, checked; ``None`` without one.

    Raises:
        ValueError: the record is not one :func:`volume_record` writes (an edited file).
    """
    record = metadata.get("volumes")
    if record is None:
        return None
    ok = isinstance(record, Mapping) and isinstance(record.get("axis"), str)
    threshold = record.get("threshold") if ok else None
    if ok and threshold is not None:
        ok = isinstance(threshold, int | float) and not isinstance(threshold, bool)
        ok = ok and math.isfinite(threshold)
    if not ok:
        raise ValueError(
            "its metadata 'volumes' is not the record `msde-jax fit` writes (an axis and a finite "
            "threshold or null); refit the model."
        )
    return dict(record)


def cross_fit_folds(detector: Any) -> int | None:
    """How many cross-fit folds ``detector``'s out-of-fold scores come from (a fused
    detector: the most of its components', which each get the groups), or ``None``."""
    components = getattr(detector, "components", None)
    if components is not None:
        counts = [cross_fit_folds(component) for component in dict(components).values()]
        return None if None in counts or not counts else max(counts)
    params = detector.get_params()
    if params.get("n_folds") is None or params.get("threshold", "cross_fit") != "cross_fit":
        return None
    return int(params["n_folds"])


def fit_groups(detector: Any, groups: SliceGroups) -> np.ndarray | None:
    """The ``groups=`` to fit ``detector`` with on these items: their volumes
    (:meth:`SliceGroups.fold_groups`), so that a volume's slices share a cross-fit fold.

    ``None`` (folds of slices) without volumes, for a detector without cross-fit folds (a
    fused detector has them when all its components do), and
    when there are fewer groups than folds; the last says so on stderr, since the training
    volumes' scores then come from models that saw other slices of them (the volume threshold
    errs low).
    """
    if not groups.has_volumes:
        return None
    n_folds = cross_fit_folds(detector)
    if n_folds is None:
        return None
    ids = groups.fold_groups()
    n_groups = np.unique(ids).size
    if n_groups < n_folds:
        print(
            f"note: {n_groups} training volumes/images for n_folds={n_folds} cross-fit folds: "
            "the folds are folds of slices, so a training volume's slices are scored by models "
            "that saw its other slices and the volume threshold errs low; give at least "
            f"{n_folds} volumes for folds of volumes.",
            file=sys.stderr,
        )
        return None
    return ids
