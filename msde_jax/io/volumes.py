"""3-D volumes as stacks of 2-D slices: the record, the intensity window and the empty-slice rule.

A :class:`Volume` is what the volume readers return — :func:`~msde_jax.io.nifti.read_nifti`
for NIfTI files (optional extra ``nifti``) and :func:`~msde_jax.io.dicom_series.read_dicom_series`
for folders of DICOM slices (optional extra ``dicom``) — and
:func:`~msde_jax.io.volume_readers.read_volumes` picks the right one for a path. Every reader
ends with :func:`make_volume`, which applies the same two documented rules to any (n, H, W)
stack:

- **Intensity window** (:func:`window_volume`), per volume: the low and high percentiles
  (default 0.5 and 99.5) of the volume's finite voxels *above its minimum* are mapped to 0 and
  1 and everything outside is clipped. The minimum is left out because it is the fill value of
  most medical volumes (zero background in MR, −1024 / −2048 outside the CT field of view),
  which would otherwise decide the low percentile and, when the anatomy is small, the high one.
  When the percentiles coincide (e.g. a binary mask) the window widens to the finite minimum and
  maximum; a constant volume becomes all zeros. NaN and ±inf voxels are background (0).
- **Empty slices** (:func:`empty_slices`): after windowing, a slice is empty when fewer than
  1 % of its pixels exceed 0.1 (a tenth of the windowed range). With ``skip_empty=True`` the
  empty slices are dropped wherever they are, unless *every* slice is empty: then all are kept
  (and a note says so), so a reader never returns a volume without slices.

:func:`volume_images` and :func:`slice_names` turn a volume into the (H, W) float32 images in
[0, 1] and ``"{name}:{index:04d}"`` names the rest of the pipeline (the Embedder) accepts.
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "AXES",
    "DEFAULT_WINDOW",
    "EMPTY_FRACTION",
    "EMPTY_LEVEL",
    "VOLUME_SUFFIXES",
    "Volume",
    "empty_slices",
    "is_nifti",
    "make_volume",
    "slice_names",
    "volume_images",
    "window_volume",
]

# Slicing planes of a NIfTI volume (after reorientation to the closest RAS+ axes).
AXES = ("axial", "coronal", "sagittal")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
# The empty-slice rule: fewer than EMPTY_FRACTION of the pixels above EMPTY_LEVEL (windowed).
EMPTY_LEVEL = 0.1
EMPTY_FRACTION = 0.01
# Intensity window percentiles (see window_volume).
DEFAULT_WINDOW = (0.5, 99.5)


class Volume(NamedTuple):
    """A 3-D volume read as a stack of windowed 2-D slices.

    Attributes:
        name: the file name without ``.nii`` / ``.nii.gz``, or ``"{folder}-{SeriesInstanceUID}"``
            for a DICOM series (never contains ``":"``, which :func:`slice_names` uses).
        source: the file or folder it was read from.
        slices: (k, H, W) float32 in [0, 1], the kept slices after windowing.
        indices: (k,) int64, the position of each kept slice among the volume's ``n_slices``
            slices along ``axis`` (increasing; slices dropped as empty leave holes).
        n_slices: how many slices the volume has along ``axis`` before any was dropped.
        axis: the slicing plane, ``"axial"``, ``"coronal"`` or ``"sagittal"`` (for a DICOM
            series: the plane its own slices lie closest to, or ``"unknown"`` without
            ImageOrientationPatient).
        spacing: millimetres between slices, between rows and between columns (NaN where the
            file does not say).
        affine: (4, 4) float64 mapping (slice index, row, column, 1) to RAS+ world
            millimetres (the NIfTI convention), where slice index is a value of ``indices``;
            ``None`` where the file lacks the geometry or slices are missing.
        window: the two voxel values (in the file's units, after its rescale slope and
            intercept) that were mapped to 0 and 1.
        gaps: missing slices of a DICOM series as ``(i, m)`` pairs: about ``m`` slices are
            missing between slice ``i`` and slice ``i + 1``; empty for NIfTI.
        notes: what a reader did that a user may want to know (non-finite voxels treated as
            background, every slice empty so none dropped, ordering by InstanceNumber, …).
    """

    name: str
    source: str
    slices: np.ndarray
    indices: np.ndarray
    n_slices: int
    axis: str
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    window: tuple[float, float]
    gaps: tuple[tuple[int, int], ...] = ()
    notes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        k, h, w = self.slices.shape
        return (
            f"Volume(name={self.name!r}, {k} of {self.n_slices} {self.axis} slices of {h}×{w}, "
            f"gaps={list(self.gaps)}, notes={list(self.notes)})"
        )


def window_volume(
    data: np.ndarray, window: tuple[float, float] | None = DEFAULT_WINDOW
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map a volume's intensities to [0, 1] with a percentile window.

    ``lo, hi`` are the ``window`` percentiles of the finite voxels above the volume's minimum
    (all finite voxels when ``window`` is ``None``: ``lo, hi`` are then the minimum and the
    maximum); the result is ``clip((x - lo) / (hi - lo), 0, 1)``. When ``hi <= lo`` the window
    widens to the finite minimum and maximum; a constant volume becomes all zeros. Non-finite
    voxels (NaN, ±inf) become 0 (background).

    Args:
        data: an array of any shape (a volume or a stack of slices), any real dtype.
        window: (low, high) percentiles with 0 <= low < high <= 100, or ``None`` for min-max.

    Returns:
        ``(windowed, (lo, hi))``: float32 in [0, 1] with the shape of ``data``, and the two
        values mapped to 0 and 1.
    """
    if window is not None:
        p_lo, p_hi = (float(p) for p in window)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise ValueError(
                f"window must be (low, high) percentiles with 0 <= low < high <= 100, got {window}."
            )
    x = np.asarray(data)
    # float32 unless the input is float64: a CT of 512 × 512 × 300 voxels stays ~300 MB a copy.
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
    finite = np.isfinite(x)
    values = x[finite]
    if values.size == 0:
        return np.zeros(x.shape, np.float32), (0.0, 0.0)
    vmin, vmax = float(values.min()), float(values.max())
    lo, hi = vmin, vmax
    if window is not None:
        above = values[values > vmin]
        if above.size:
            lo, hi = (float(v) for v in np.percentile(above, [p_lo, p_hi]))
        if hi <= lo:
            lo, hi = vmin, vmax
    if hi <= lo:
        return np.zeros(x.shape, np.float32), (lo, hi)
    out = np.clip((np.where(finite, x, lo) - lo) / (hi - lo), 0.0, 1.0)
    return out.astype(np.float32), (lo, hi)


def empty_slices(slices: np.ndarray) -> np.ndarray:
    """Which windowed slices are empty: fewer than 1 % of their pixels above 0.1.

    Args:
        slices: (n, H, W) windowed slices in [0, 1].

    Returns:
        (n,) bool, True for an empty slice.
    """
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"expected (n, H, W) slices, got shape {slices.shape}.")
    bright = (slices > EMPTY_LEVEL).mean(axis=(1, 2))
    return bright < EMPTY_FRACTION


def make_volume(
    stack: np.ndarray,
    *,
    name: str,
    source: str | os.PathLike = "",
    axis: str = "axial",
    spacing: Sequence[float] = (np.nan, np.nan, np.nan),
    affine: np.ndarray | None = None,
    gaps: Sequence[tuple[int, int]] = (),
    notes: Sequence[str] = (),
    window: tuple[float, float] | None = DEFAULT_WINDOW,
    skip_empty: bool = True,
    padding: int = 0,
) -> Volume:
    """A :class:`Volume` from a raw (n, H, W) stack: windowed, then empty slices dropped.

    Args:
        stack: (n, H, W) voxel values in the file's units, slice by slice along ``axis``.
        name: the volume's name (``":"`` is replaced by ``"_"``).
        source: where it was read from.
        axis: the slicing plane (see :class:`Volume`).
        spacing: millimetres between slices, rows and columns.
        affine: (4, 4) (slice, row, column) → RAS+ millimetres, or ``None``.
        gaps: missing slices, as in :class:`Volume`.
        notes: what the reader did, as in :class:`Volume`.
        window: intensity window percentiles (see :func:`window_volume`), ``None`` for min-max.
        skip_empty: drop empty slices (see :func:`empty_slices`); never drops every slice.
        padding: how many of the NaN voxels are NaN by design (DICOM pixel padding: outside
            the scanner's field of view), not counted in the note on non-finite voxels.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or 0 in stack.shape:
        raise ValueError(f"{name}: expected a non-empty (n, H, W) stack, got shape {stack.shape}.")
    notes = list(notes)
    n_bad = int(np.size(stack) - np.count_nonzero(np.isfinite(stack))) - padding
    if n_bad > 0:
        notes.append(f"{n_bad} non-finite voxels (NaN / inf) treated as background")
    windowed, (lo, hi) = window_volume(stack, window)
    if hi <= lo:
        notes.append("constant volume: all slices are zeros")
    keep = np.arange(stack.shape[0])
    if skip_empty:
        empty = empty_slices(windowed)
        if empty.all():
            notes.append("every slice is empty by the empty-slice rule: all kept")
        else:
            keep = keep[~empty]
    return Volume(
        name=name.replace(":", "_"),
        source=os.fspath(source),
        slices=np.ascontiguousarray(windowed[keep]),
        indices=keep.astype(np.int64),
        n_slices=int(stack.shape[0]),
        axis=axis,
        spacing=tuple(float(s) for s in spacing),
        affine=None if affine is None else np.asarray(affine, np.float64),
        window=(lo, hi),
        gaps=tuple((int(i), int(m)) for i, m in gaps),
        notes=tuple(notes),
    )


def volume_images(volume: Volume) -> list[np.ndarray]:
    """The kept slices of a volume as (H, W) float32 images in [0, 1] (what the Embedder takes)."""
    return list(volume.slices)


def slice_names(volume: Volume) -> list[str]:
    """A name per kept slice, ``"{volume.name}:{index:04d}"`` with the slice's index."""
    return [f"{volume.name}:{int(i):04d}" for i in volume.indices]


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a NIfTI file by its suffix (``.nii`` or ``.nii.gz``, any case)."""
    return os.fspath(path).lower().endswith(VOLUME_SUFFIXES)
