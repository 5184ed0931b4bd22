"""What the commands print and write about volumes (NIfTI files, DICOM series).

The commands see a volume as its slices (:mod:`msde_jax.io.inputs`); this module adds the
volume view: the readers' notes and warnings on stderr, the per-volume CSV of ``score``
(:func:`write_volume_scores`) and its montages, the volume threshold ``fit`` prints and the
volume-level metrics ``evaluate`` prints. The numbers come from :mod:`msde_jax.pipeline.volumes`.
"""

import contextlib
import csv
import io
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msde_jax._files import atomic_write, shown

__all__ = [
    "VOLUME_ARRAYS",
    "fit_note",
    "fit_summary",
    "groups_arrays",
    "groups_from_arrays",
    "metrics_summary",
    "print_volume_notes",
    "volume_csv_path",
    "volume_warnings",
    "write_csv",
    "write_volume_montages",
    "write_volume_scores",
]

VOLUME_COLUMNS = ("volume", "source", "slices_scored", "slices", "score", "label")
# What `msde-jax embed` writes beside the embeddings of volumes' slices: which volume each row
# is a slice of, so that `fit --embeddings` keeps a volume's slices in one cross-fit fold.
VOLUME_ARRAYS = (
    "volume",  # (n,) int64: the row's volume, -1 for a 2-D image
    "slice_index",  # (n,) int64: its slice's index along the axis, -1 for a 2-D image
    "volume_names",  # (v,) str
    "volume_sources",  # (v,) str: the file or folder each was read from
    "volume_slices",  # (v,) int64: its slices along the axis, empty ones included
    "axis",  # () str
)


def groups_arrays(groups: Any, axis: str) -> dict[str, np.ndarray]:
    """The :data:`VOLUME_ARRAYS` of inputs' :class:`~msde_jax.io.inputs.SliceGroups` (none
    without volumes)."""
    if not groups.has_volumes:
        return {}
    vols = groups.volumes
    index = [
        int(vols[v].indices[p]) if v >= 0 else -1
        for v, p in zip(groups.volume.tolist(), groups.position.tolist(), strict=True)
    ]
    return {
        "volume": groups.volume.astype(np.int64),
        "slice_index": np.asarray(index, np.int64),
        "volume_names": np.array([v.name for v in vols]),
        "volume_sources": np.array([v.source for v in vols]),
        "volume_slices": np.array([v.n_slices for v in vols], np.int64),
        "axis": np.array(axis),
    }


def groups_from_arrays(arrays: Mapping[str, np.ndarray], n: int) -> tuple[Any, str] | None:
    """The :class:`~msde_jax.io.inputs.SliceGroups` of n embedded rows and their axis from
    :data:`VOLUME_ARRAYS` (its volumes hold no slices: only their names, sources, slice
    indices and counts), or ``None`` when the arrays are absent.

    Raises:
        ValueError: the arrays are not the ones :func:`groups_arrays` writes.
    """
    from msde_jax.io.inputs import SliceGroups
    from msde_jax.io.volumes import Volume

    present = [key for key in VOLUME_ARRAYS if key in arrays]
    if not present:
        return None
    try:
        if len(present) != len(VOLUME_ARRAYS):
            raise ValueError(f"it lacks {sorted(set(VOLUME_ARRAYS) - set(present))}")
        volume, index = (np.asarray(arrays[k]) for k in ("volume", "slice_index"))
        names, sources = (np.asarray(arrays[k]) for k in ("volume_names", "volume_sources"))
        counts, axis = np.asarray(arrays["volume_slices"]), np.asarray(arrays["axis"])
        v = names.size
        ok = volume.shape == index.shape == (n,) and names.shape == sources.shape == counts.shape
        ok = ok and v > 0 and names.ndim == 1 and axis.ndim == 0 and axis.dtype.kind == "U"
        ok = ok and names.dtype.kind == sources.dtype.kind == "U"
        ok = ok and all(a.dtype.kind == "i" for a in (volume, index, counts))
        ok = ok and bool(np.all((volume >= -1) & (volume < v)))
        ok = ok and bool(np.all((index >= 0) == (volume >= 0)))
        ok = ok and bool(np.all(index[volume >= 0] < counts[volume[volume >= 0]]))
        if not ok:
            raise ValueError("its arrays disagree in length, type or range")
        members = [np.flatnonzero(volume == k) for k in range(v)]
        if any(m.size == 0 for m in members):
            raise ValueError("a volume has no row")
    except ValueError as err:
        raise ValueError(
            f"its volume arrays ({', '.join(VOLUME_ARRAYS)}) are not the ones `msde-jax embed` "
            f"writes ({err}); embed the images again."
        ) from None
    position = np.full(n, -1, np.int64)
    for m in members:
        position[m] = np.arange(m.size)
    nan3 = (float("nan"),) * 3
    vols = tuple(
        Volume(
            str(names[k]),
            str(sources[k]),
            np.zeros((0, 0, 0), np.float32),
            index[m].astype(np.int64),
            int(counts[k]),
            str(axis),
            nan3,
            None,
            (float("nan"), float("nan")),
        )
        for k, m in enumerate(members)
    )
    return SliceGroups(volume.astype(np.int64), position, vols), str(axis)


@contextlib.contextmanager
def volume_warnings(*also: type[Warning]) -> Iterator[None]:
    """Warnings of the volume readers (a DICOM series with missing slices), and those of the
    categories ``also``, as one ``warning: …`` line each on stderr; other warnings pass on."""
    from msde_jax.io.dicom_series import SeriesGapWarning

    lines = (SeriesGapWarning, *also)
    with warnings.catch_warnings(record=True) as caught:
        for category in lines:
            warnings.simplefilter("always", category)
        yield
    for w in caught:
        if issubclass(w.category, lines):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def print_volume_notes(volumes: Sequence[Any]) -> None:
    """What the readers did that a user may want to know, one ``note:`` line each on stderr."""
    for vol in volumes:
        for note in vol.notes:
            print(f"note: volume {vol.name} ({vol.source}): {note}", file=sys.stderr)


def volume_csv_path(out: str) -> Path:
    """Where the per-volume CSV goes: beside ``out``, ``scores.csv`` → ``scores_volumes.csv``."""
    path = Path(out)
    return path.with_name(f"{path.stem}_volumes{path.suffix}")


def write_csv(out: str | Path | None, header: Sequence[str], rows: list[list[Any]]) -> None:
    """CSV rows to a file, whole or not at all (:func:`~msde_jax._files.atomic_write`), or to
    stdout when ``out`` is None. UTF-8; a path whose name is not (e.g. Latin-1) keeps its bytes
    in a file, and shows them as U+FFFD on stdout."""
    if not out:
        rows = [[shown(c) if isinstance(c, str) else c for c in r] for r in rows]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    if out:
        atomic_write(out, text.getvalue().encode("utf-8", "surrogateescape"), fsync=False)
    else:
        sys.stdout.write(text.getvalue())


def write_volume_scores(
    model: str,
    record: Mapping[str, Any] | None,
    scores: np.ndarray,
    groups: Any,
    out: Path | None,
) -> tuple[Any, float | None]:
    """The per-volume table of ``score``: to ``out``, or to stdout after a blank line.

    Args:
        model: the model file, for messages.
        record: the model's ``"volumes"`` metadata
            (:func:`msde_jax.pipeline.volumes.volume_record`), or ``None`` for a model fitted
            on 2-D images.
        scores: (n,) slice scores.
        groups: the items' :class:`~msde_jax.io.inputs.SliceGroups`.
        out: the CSV file, or ``None`` for stdout.

    Returns:
        ``(volume_scores, volume_threshold)``, the threshold ``None`` when the model has none
        (the label column is then empty and the reason is printed on stderr).
    """
    from msde_jax.pipeline.volumes import AGGREGATE, volume_scores

    vscores = volume_scores(scores, groups)
    threshold = None if record is None else record.get("threshold")
    if threshold is None:
        why = (
            f"{model} was fitted on 2-D images, so it has no volume threshold (fit it on volumes "
            "to get one)"
            if record is None
            else str(record.get("why") or "the model has no volume threshold")
        )
        print(f"volume labels: not available: {why}", file=sys.stderr)
    labels = ["" if threshold is None else int(s > threshold) for s in vscores.scores]
    rows = [
        [name, source, int(n), int(total), f"{float(score):.6g}", label]
        for name, source, n, total, score, label in zip(
            vscores.names,
            vscores.sources,
            vscores.n_scored,
            vscores.n_slices,
            vscores.scores,
            labels,
            strict=True,
        )
    ]
    if out is None:
        print()  # stdout: the volume table after the slice table and a blank line
    write_csv(out, VOLUME_COLUMNS, rows)
    if out is not None:
        above = "" if threshold is None else f"; {sum(labels)} above the threshold {threshold:.4g}"
        print(
            f"scored {len(rows)} volume{'s' * (len(rows) != 1)} ({AGGREGATE}{above}); wrote {out}"
        )
    return vscores, threshold


def write_volume_montages(
    out_dir: str,
    images: np.ndarray,
    maps: np.ndarray,
    *,
    groups: Any,
    names: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    vscores: Any,
    volume_threshold: float | None,
    maps_threshold: float | None = None,
) -> None:
    """One montage PNG per volume (:func:`msde_jax.pipeline.heatmaps.write_montages`)."""
    from msde_jax.pipeline.heatmaps import write_montages

    write_montages(
        out_dir,
        images,
        maps,
        members=groups.members(),
        volume_names=vscores.names,
        volume_scores=vscores.scores,
        names=names,
        scores=scores,
        threshold=threshold,
        volume_threshold=volume_threshold,
        maps_threshold=maps_threshold,
    )
    print(
        f"wrote {len(vscores.names)} volume montages (volume_*.png) to {out_dir}", file=sys.stderr
    )


def fit_summary(record: Mapping[str, Any]) -> str:
    """The line ``fit`` prints about the volume threshold it stored."""
    from msde_jax.pipeline.volumes import AGGREGATE

    if record["threshold"] is None:
        return f"volume threshold: not available: {record['why']}"
    return (
        f"volume threshold {record['threshold']:.4g}: the "
        f"{100 * (1 - record['contamination']):.4g} % "
        f"quantile of the {record['n_volumes']} training volumes' scores ({AGGREGATE}, of "
        "out-of-fold slice scores)"
    )


def fit_note(record: Mapping[str, Any]) -> str | None:
    """The ``note:`` ``fit`` prints on stderr when too few training volumes keep the volume
    threshold's promise: with n < 1 / contamination − 1 of them, the threshold is the highest
    volume score (:func:`~msde_jax.detectors.fitting.quantile_threshold`), which a new normal
    volume exceeds with probability 1 / (n + 1), more than ``contamination``."""
    from msde_jax.detectors.fitting import threshold_rank

    n, contamination = record["n_volumes"], record["contamination"]
    if record["threshold"] is None or (n + 1) * (1 - contamination) - 1e-9 <= threshold_rank(
        n, contamination
    ):
        return None
    return (
        f"note: the volume threshold comes from {n} training volume(s): it is the highest of "
        f"their scores, which about 1 / {n + 1} = {100 / (n + 1):.3g} % of new normal volumes "
        f"exceed, more than the {100 * contamination:.4g} % contamination promises (that "
        f"takes at least 1 / contamination − 1 = {1 / contamination - 1:.3g} volumes); more "
        "normal training volumes make it firmer."
    )


def metrics_summary(name: str, m: Mapping[str, Any]) -> str:
    """The line ``evaluate`` prints about the volume-level metrics."""
    at = (
        "no volume threshold (the training normals hold no volume, or their scores are not "
        "out of fold)"
        if m["threshold"] is None
        else f"F1 {m['f1']:.3f} at volume threshold {m['threshold']:.4g}"
    )
    return (
        f"{name} volumes: AUROC {m['auroc']:.3f}  AP {m['average_precision']:.3f}  {at}  "
        f"[{m['n_normal']} normal, {m['n_abnormal']} abnormal volumes; volume score = "
        f"{m['aggregate']}]"
    )
