"""Reading DICOM series (folders of 2-D slices) as volumes (optional extra ``dicom``).

:func:`read_dicom_series` reads every DICOM file of a folder (or a list of files), groups the
slices by SeriesInstanceUID — a folder holding several series gives several volumes — and
stacks each series along its own slice normal:

- **Values**: the modality transform is applied slice by slice
  (:func:`~msde_jax.io.dicom.modality_values`: the ModalityLUTSequence, else RescaleSlope /
  RescaleIntercept) and MONOCHROME1 slices are negated, so that higher is brighter everywhere.
  Padding (stored values equal to PixelPaddingValue, or between it and PixelPaddingRangeLimit)
  is background: NaN, outside the intensity window, 0 once windowed, and not counted in the
  note on non-finite voxels. The file's VOI window (WindowCenter / WindowWidth) is ignored: the
  whole series is windowed by the percentile rule of
  :func:`~msde_jax.io.volumes.window_volume`, and empty slices are dropped by
  :func:`~msde_jax.io.volumes.empty_slices`.
- **Order**: by position along the slice normal, ``ImagePositionPatient · n`` with ``n = r × c``
  (``r`` and ``c`` the row and column direction cosines of ImageOrientationPatient) turned
  towards +R, +A or +S, whichever it is closest to, increasing: axial slices inferior →
  superior, coronal posterior → anterior, sagittal patient left → right, as
  :func:`~msde_jax.io.nifti.read_nifti` slices the same anatomy. When no slice has both
  attributes the series is ordered by InstanceNumber, and without that by file name, numbers
  in names compared as numbers (a note says which). Two slices at the same position are
  refused.
- **Other objects**: a DICOM object of the exam that has no slice position and cannot be read
  as a slice (a structured report, a colour screenshot), a multi-frame (enhanced) object, and,
  when some files have a slice's place, a readable image without ImagePositionPatient /
  ImageOrientationPatient (a secondary capture, a dose sheet) are left out, with a note on
  each volume naming them.
- **Series apart**: a series that cannot be read (a slice that cannot be decoded, two slices at
  one position as in a multi-echo series, mixed shapes or orientations) is left out with a
  note naming it and why, on each volume of the folder's other series; when no series can be
  read the first error is raised. A slice that cannot be read and whose series is not known
  (an unreadable header, no SeriesInstanceUID) stops the folder, naming the file. Three or
  more series of one slice each with one orientation (an anonymiser that gave each file its
  own SeriesInstanceUID) get a note saying so on each of their volumes.
- **Gaps**: with at least three slices, a step between consecutive positions (or instance
  numbers) larger than 1.5 × the median step means missing slices — about
  ``round(step / median) − 1`` of them. Each gap is recorded in the volume's ``gaps`` and a
  :class:`SeriesGapWarning` names the series.
- **Display**: rows and columns run as the plane's usual orientation has them (axial: rows
  anterior → posterior, columns patient right → left; coronal: rows superior → inferior,
  columns right → left; sagittal: rows superior → inferior, columns anterior → posterior), what
  :func:`~msde_jax.io.nifti.read_nifti` shows: a series stored otherwise (prone, feet first,
  rows along the columns' axis) is flipped or transposed in the plane, its affine and spacing
  with it. The series' own stacking axis is what
  ``axis="axial"`` stands for in :func:`~msde_jax.io.volume_readers.read_volumes`; the volume's
  ``axis`` field gives the anatomical plane the slices lie closest to.

Every slice of a series must have the same shape and orientation (else an
:class:`~msde_jax.io.images.ImageReadError` names the series and the odd file: that series is
left out, or raised when it is the only one), except a localizer saved in the series: at most
2 slices of another orientation beside at least 3 of one are left out, with a note.
Multi-frame (enhanced) DICOM and colour slices are not read.
"""

import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from msde_jax.io.dicom import INSTALL_HINT, decode_frame, is_dicom, modality_values
from msde_jax.io.errors import ImageReadError, first_few
from msde_jax.io.volumes import DEFAULT_WINDOW, Volume, make_volume

__all__ = [
    "GAP_FACTOR",
    "SeriesGapWarning",
    "is_dicom_series",
    "is_slice_file",
    "read_dicom_series",
]

# A step between consecutive slices more than GAP_FACTOR × the median step is a gap.
GAP_FACTOR = 1.5
# Direction cosines closer than this are the same orientation.
_ORIENTATION_TOL = 1e-3
# LPS (DICOM patient coordinates) to RAS+ (NIfTI world coordinates).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class SeriesGapWarning(UserWarning):
    """A DICOM series has missing slices (a step between positions larger than usual)."""


class _Slice(NamedTuple):
    path: str
    pixels: np.ndarray  # (H, W) float32, rescaled, MONOCHROME1 negated, padding NaN
    padding: int  # how many pixels are padding (NaN)
    series: str  # SeriesInstanceUID, "" when absent
    series_number: float
    position: np.ndarray | None  # ImagePositionPatient (3,)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    instance: int | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:
        raise ImportError(
            f"reading DICOM series needs pydicom>=3.0, which is not installed: {INSTALL_HINT}"
        ) from err
    return pydicom


def _dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in a folder: DICM magic or a ``.dcm`` suffix.

    Hidden files (``.*``, e.g. macOS ``._x.dcm`` resource forks) and ``DICOMDIR`` indexes are
    skipped; sub-folders are not searched.
    """
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.name.upper() != "DICOMDIR"
        and (p.suffix.lower() == ".dcm" or is_dicom(p))
    ]


def is_dicom_series(path: str | os.PathLike) -> bool:
    """Whether a folder holds a DICOM series: slices of a cross-sectional volume.

    True when the folder directly holds DICOM files and one of them has ImagePositionPatient
    and ImageOrientationPatient, as CT, MR and PET slices do and 2-D radiographs (CR, DX) do
    not (the headers are read in name order until one has both: a screenshot or a report
    beside the slices does not hide them). False without pydicom.
    """
    p = Path(path)
    return p.is_dir() and any(is_slice_file(file) for file in _dicom_files(p))


def is_slice_file(path: str | os.PathLike) -> bool:
    """Whether a DICOM file has ImagePositionPatient and ImageOrientationPatient: a slice of a
    cross-sectional series (False for other files, unreadable ones, or without pydicom)."""
    try:
        pydicom = _pydicom()
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_PLACE)
    except Exception:  # a predicate: an unreadable file is not a slice
        return False
    return _is_slice_header(ds)


_PLACE = ["ImagePositionPatient", "ImageOrientationPatient"]
# An enhanced (multi-frame) object: its frames' places are in these functional groups.
_ENHANCED = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")
_HEADER = [*_PLACE, "SOPClassUID", "SeriesInstanceUID", "NumberOfFrames", *_ENHANCED]
_MULTI_FRAME = (
    "multi-frame (enhanced) objects are not supported: convert it to single-frame slices or "
    "to NIfTI (e.g. with dcm2niix) to read it"
)


def _is_slice_header(ds: Any) -> bool:
    return all(tag in ds for tag in _PLACE)


def read_dicom_series(
    folder_or_files: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    window: tuple[float, float] | None = DEFAULT_WINDOW,
    skip_empty: bool = True,
) -> list[Volume]:
    """Read the DICOM slices of a folder (or a list of files) as one volume per series.

    Args:
        folder_or_files: a folder (its DICOM files: DICM magic or ``.dcm``, hidden files and
            DICOMDIR skipped, sub-folders not searched), one file, or a list of files.
        window: intensity window percentiles over each whole series (see
            :func:`~msde_jax.io.volumes.window_volume`), ``None`` for min-max.
        skip_empty: drop empty slices (see :func:`~msde_jax.io.volumes.empty_slices`).

    Returns:
        One :class:`~msde_jax.io.volumes.Volume` per readable series (SeriesInstanceUID), in
        SeriesNumber then UID order, named ``"{folder}-{SeriesInstanceUID}"`` (``"{folder}"``
        without a UID). Slices are ordered along the slice normal (see the module docstring);
        spacing is the median step and PixelSpacing; the affine maps (slice, row, column) to
        RAS+ mm when positions, orientation and PixelSpacing are known and the slice positions
        lie evenly on a line (within 1 % of a step; a sheared, gantry-tilted stack included).

        A series that cannot be read is left out with a note on the others' volumes (see the
        module docstring), as are files that are not slices.

    Raises:
        ImportError: pydicom is not installed (``pip install 'msde-jax[dicom]'``).
        ImageReadError: no DICOM file; a file whose header cannot be read; no series can be
            read: its slice is unreadable, has no pixel data, a malformed rescale, modality LUT
            or padding tag, or is colour; it mixes slice shapes or orientations, or has two
            slices at the same position; or the folder holds only objects that are not slices
            (multi-frame ones included). Each message names the file or the series.

    Warns:
        SeriesGapWarning: a series has missing slices (also recorded in ``Volume.gaps``).
    """
    _pydicom()  # a clear ImportError before any file is looked at
    if isinstance(folder_or_files, str | os.PathLike):
        root = Path(folder_or_files)
        if root.is_dir():
            paths = _dicom_files(root)
            if not paths:
                raise ImageReadError(
                    f"{root}: no DICOM files in this folder (sub-folders are not searched)."
                )
        elif root.is_file():
            paths, root = [root], root.parent
        else:
            raise ImageReadError(f"{root}: no such file or folder.")
    else:
        paths = [Path(p) for p in folder_or_files]
        if not paths:
            raise ImageReadError("read_dicom_series: no files given.")
        root = paths[0].parent
    folder = root.name or "series"
    slices: list[_Slice] = []
    left_out: dict[str, list[str]] = {"other": [], "multi-frame": [], "no place": []}
    bad: dict[str, ImageReadError] = {}  # series UID → why the series cannot be read
    first_error = None
    for path in paths:
        try:
            slices.append(_read_slice(path))
            continue
        except ImageReadError as err:
            error = err
        kind, uid = _unread_kind(path)
        if kind == "slice" and uid:  # a slice of a known series: that series is unreadable
            bad.setdefault(uid, error)
        elif kind == "slice":
            raise error  # a slice of no known series: every series could be wrong
        else:
            left_out[kind].append(path.name)
            first_error = first_error or error
    if any(s.position is not None and s.orientation is not None for s in slices):
        # Files without a slice's place beside slices with one: not slices of a volume.
        left_out["no place"] = [
            Path(s.path).name for s in slices if s.position is None or s.orientation is None
        ]
        slices = [s for s in slices if s.position is not None and s.orientation is not None]
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(s.series, []).append(s)
    order = sorted(groups, key=lambda uid: (min(s.series_number for s in groups[uid]), uid))
    volumes = []
    for uid in order:
        if uid in bad:
            continue
        name = f"{folder}-{uid}" if uid else folder
        try:
            volume = _volume(groups[uid], name, str(root), window=window, skip_empty=skip_empty)
        except ImageReadError as err:
            bad[uid] = err
            continue
        volumes.append(volume)
    if not volumes:
        raise next(iter(bad.values()), None) or first_error
    notes = _left_out_notes(left_out, bad, folder)
    lone = _lone_slices(groups, bad)
    for k, volume in enumerate(volumes):
        lone_note = [lone] if lone and volume.n_slices == 1 else []
        volumes[k] = volume = volume._replace(notes=(*volume.notes, *lone_note, *notes))
        if volume.gaps:
            missing = ", ".join(f"~{m} after slice {i}" for i, m in volume.gaps)
            warnings.warn(
                f"DICOM series {volume.name}: missing slices ({missing}); the volume is "
                "read without them.",
                SeriesGapWarning,
                stacklevel=2,
            )
    return volumes


def _unread_kind(path: Path) -> tuple[str, str]:
    """What a file that cannot be read as a slice is, from its header: ``("multi-frame", uid)``,
    ``("other", uid)`` (an object without a slice's place: a report, a screenshot, a dose
    sheet) or ``("slice", uid)`` (a slice, or a file whose header cannot be read: its own
    error stands), with its SeriesInstanceUID (``""`` when absent or unreadable)."""
    try:
        ds = _pydicom().dcmread(path, stop_before_pixels=True, force=True, specific_tags=_HEADER)
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    except Exception:
        return "slice", ""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1 or any(k in ds for k in _ENHANCED):
        return "multi-frame", uid
    if "SOPClassUID" in ds and not _is_slice_header(ds):
        return "other", uid
    return "slice", uid


def _left_out_notes(
    left_out: dict[str, list[str]], bad: dict[str, ImageReadError], folder: str
) -> list[str]:
    """The notes on what of the folder was left out, for each volume read from it."""
    notes = []
    whats = {
        "other": "DICOM object(s) without a slice's place or image left out ({})",
        "multi-frame": (
            "multi-frame (enhanced) DICOM object(s) left out ({}): they are not supported; "
            "convert them to single-frame slices or to NIfTI (e.g. with dcm2niix) to read them"
        ),
        "no place": (
            "DICOM image(s) without ImagePositionPatient / ImageOrientationPatient left out "
            "({}): not slices of a volume (a secondary capture, a dose sheet?)"
        ),
    }
    for kind, what in whats.items():
        names = left_out[kind]
        if names:
            notes.append(f"{len(names)} {what.format(first_few(names))}")
    for uid, err in bad.items():
        name = f"{folder}-{uid}" if uid else folder
        reason = str(err).removeprefix(f"DICOM series {name}: ").rstrip(".")
        notes.append(f"DICOM series {name} left out, it cannot be read: {reason}")
    return notes


def _lone_slices(groups: dict[str, list[_Slice]], bad: dict[str, ImageReadError]) -> str:
    """A note when three or more series of one slice each share an orientation, "" if not: one
    scan whose files an anonymiser gave a SeriesInstanceUID each looks like that."""
    lone = [g[0] for uid, g in groups.items() if len(g) == 1 and uid not in bad]
    if len(lone) < 3 or any(s.orientation is None for s in lone):
        return ""
    first = lone[0].orientation
    if any(np.abs(s.orientation - first).max() > _ORIENTATION_TOL for s in lone):
        return ""
    return (
        f"{len(lone)} series of one slice each with the same orientation in this folder: if "
        "they are one scan, their SeriesInstanceUIDs were changed file by file (an anonymiser "
        "can do this); give the files one SeriesInstanceUID to read them as one volume"
    )


def _read_slice(path: Path) -> _Slice:
    name = os.fspath(path)
    if not path.is_file():
        raise ImageReadError(f"{name}: no such file.")
    ds, arr = decode_frame(name, multi_frame=_MULTI_FRAME)
    if any(k in ds for k in _ENHANCED):  # one frame, its place in the functional groups
        raise ImageReadError(f"{name}: an enhanced DICOM object; {_MULTI_FRAME}.")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim != 2 or not photometric.startswith("MONOCHROME"):
        raise ImageReadError(
            f"{name}: a series slice must be a 2-D grayscale image, got {photometric} pixels "
            f"of shape {arr.shape}."
        )
    x, padding = modality_values(ds, arr, name)  # padding: NaN, background, not in the window
    if photometric == "MONOCHROME1":  # higher stored values are darker
        x = -x
    spacing = _floats(ds.get("PixelSpacing"), 2)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if orientation is not None and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 0.5:
        orientation = None  # degenerate cosines (zeros, parallel): as if absent
    number = _floats(ds.get("SeriesNumber"), 1)
    instance = _floats(ds.get("InstanceNumber"), 1)
    thickness = _floats(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness"), 1)
    return _Slice(
        path=name,
        pixels=x.astype(np.float32),
        padding=0 if padding is None else int(padding.sum()),
        series=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        series_number=float(number[0]) if number is not None else np.inf,
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=orientation,
        instance=int(instance[0]) if instance is not None else None,
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        thickness=float(thickness[0]) if thickness is not None else None,
    )


# Per plane, the LPS axis and sign that the column index and the row index run along in the
# plane's usual orientation (axial (1,0,0,0,1,0), coronal (1,0,0,0,0,-1), sagittal
# (0,1,0,0,0,-1)), which read_nifti's slices show too.
_DISPLAY = {"axial": ((0, 1), (1, 1)), "coronal": ((0, 1), (2, -1)), "sagittal": ((1, 1), (2, -1))}


def _as_displayed(
    pixels: np.ndarray,
    orientation: np.ndarray,
    axis: str,
    affine: np.ndarray | None,
    spacing: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    """The (n, rows, cols) ``pixels`` of a series in ``axis``'s plane transposed and flipped
    in the plane so that columns and rows run as the plane's usual orientation has them (a
    prone, feet-first or transposed series as a standard one: as NIfTI shows the anatomy),
    with the affine (voxel → RAS mm) and the (row, column) spacing to match."""
    (col_axis, col_sign), (row_axis, row_sign) = _DISPLAY[axis]
    along_row, down_column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    affine = None if affine is None else affine.copy()
    rows_first = int(np.argmax(np.abs(along_row))) == row_axis
    if rows_first and int(np.argmax(np.abs(down_column))) == col_axis:  # transposed
        pixels, spacing = pixels.transpose(0, 2, 1), spacing[::-1]
        along_row, down_column = down_column, along_row
        if affine is not None:
            affine[:, [1, 2]] = affine[:, [2, 1]]
    flips = (
        (2, along_row[col_axis] * col_sign < 0),  # columns run the other way
        (1, down_column[row_axis] * row_sign < 0),  # rows do
    )
    for dim, flip in flips:
        if flip:
            pixels = np.flip(pixels, axis=dim)
            if affine is not None:  # voxel 0 is now the other end
                affine[:3, 3] += (pixels.shape[dim] - 1) * affine[:3, dim]
                affine[:3, dim] *= -1
    return np.ascontiguousarray(pixels), affine, spacing


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders ``IM2`` before ``IM10`` (digit runs as numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(name))


_DIGITS = re.compile(r"(\d+)")


def _floats(value: Any, n: int) -> np.ndarray | None:
    """A DICOM value (single or multi-valued) as n finite floats, or None."""
    if value is None or value == "":
        return None
    items = [value] if isinstance(value, str | bytes | int | float) else list(value)
    try:
        out = np.array([float(v) for v in items], np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.isfinite(out).all() else None


def _without_localizers(slices: list[_Slice]) -> tuple[list[_Slice], list[str]]:
    """The slices of a series without those of a stray other orientation (a localizer saved
    in the series), and a note naming them: when one orientation holds at least 3 slices and
    each other at most 2, the others are left out; otherwise all are kept (and
    :func:`_volume` refuses a series of several orientations)."""
    placed = [s for s in slices if s.orientation is not None and s.position is not None]
    if len(placed) < len(slices) or len(slices) < 4:
        return slices, []
    groups: list[list[_Slice]] = []
    for s in slices:
        for group in groups:
            if np.abs(s.orientation - group[0].orientation).max() <= _ORIENTATION_TOL:
                group.append(s)
                break
        else:
            groups.append([s])
    groups.sort(key=len, reverse=True)
    if len(groups) == 1 or len(groups[0]) < 3 or any(len(g) > 2 for g in groups[1:]):
        return slices, []
    odd = [Path(s.path).name for g in groups[1:] for s in g]
    note = f"{len(odd)} slice(s) of another orientation left out (a localizer?): {first_few(odd)}"
    return groups[0], [note]


def _volume(
    slices: list[_Slice],
    name: str,
    source: str,
    *,
    window: tuple[float, float] | None,
    skip_empty: bool,
) -> Volume:
    slices, notes = _without_localizers(slices)
    shapes = Counter(s.pixels.shape for s in slices)
    if len(shapes) > 1:
        usual = shapes.most_common(1)[0][0]
        odd = next(s for s in slices if s.pixels.shape != usual)
        raise ImageReadError(
            f"DICOM series {name}: {odd.path} has slices of {odd.pixels.shape[0]}×"
            f"{odd.pixels.shape[1]} pixels, the others {usual[0]}×{usual[1]}; a series must "
            "have one slice shape."
        )
    normal = None
    if all(s.position is not None and s.orientation is not None for s in slices):
        first = slices[0].orientation
        for s in slices:
            if np.abs(s.orientation - first).max() > _ORIENTATION_TOL:
                raise ImageReadError(
                    f"DICOM series {name}: {s.path} has another ImageOrientationPatient than "
                    f"{slices[0].path} (a localizer series?); a series must have one orientation."
                )
        normal = np.cross(first[:3], first[3:])
        normal = normal / max(np.linalg.norm(normal), 1e-12)
        # Towards +R, +A or +S, whichever it is closest to (LPS: −x, −y, +z), as NIfTI's RAS+
        # slices run: inferior → superior, posterior → anterior, patient left → right.
        closest = int(np.argmax(np.abs(normal)))
        if normal[closest] * _LPS_TO_RAS[closest, closest] < 0:
            normal = -normal
        keys = np.array([s.position @ normal for s in slices])
        unit = "mm"
    elif all(s.instance is not None for s in slices):
        keys = np.array([s.instance for s in slices], np.float64)
        unit = "instance numbers"
        if len(slices) > 1:
            notes.append(
                "ordered by InstanceNumber (no ImagePositionPatient / ImageOrientationPatient)"
            )
    else:
        keys = None
        if len(slices) > 1:
            notes.append("ordered by file name (no slice positions or instance numbers)")
    if keys is None:  # IM2 before IM10: runs of digits compare as numbers
        names = [_natural(s.path) for s in slices]
        order = np.array(sorted(range(len(slices)), key=names.__getitem__), np.intp)
    else:
        order = np.argsort(keys, kind="stable")
    slices = [slices[i] for i in order]
    gaps: list[tuple[int, int]] = []
    step = np.nan
    if keys is not None and len(slices) > 1:
        keys = keys[order]
        steps = np.diff(keys)
        tiny = 1e-3 if unit == "mm" else 0.5
        if (steps < tiny).any():
            i = int(np.argmax(steps < tiny))
            raise ImageReadError(
                f"DICOM series {name}: {slices[i].path} and {slices[i + 1].path} lie at the same "
                f"position ({keys[i]:.4g} {unit}); repeated or multi-echo acquisitions in one "
                "series are not supported."
            )
        median = float(np.median(steps))
        if len(slices) >= 3:
            for i in np.flatnonzero(steps > GAP_FACTOR * median):
                gaps.append((int(i), max(1, round(float(steps[i]) / median) - 1)))
        if unit == "mm":
            step = median
    ref = slices[0]
    row_mm, col_mm = ref.pixel_spacing if ref.pixel_spacing is not None else (np.nan, np.nan)
    affine = None
    if len(slices) == 1 and slices[0].thickness is not None:
        step = slices[0].thickness
    if normal is not None and ref.pixel_spacing is not None and np.isfinite(step) and not gaps:
        positions = np.stack([s.position for s in slices])
        if len(slices) == 1:
            delta = normal * step
        else:  # the mean step between positions: sheared (gantry tilt) stacks included
            delta = (positions[-1] - positions[0]) / (len(slices) - 1)
        grid = positions[0] + np.arange(len(slices))[:, None] * delta
        if np.abs(positions - grid).max() <= 0.01 * np.linalg.norm(delta) + 1e-3:
            affine = np.eye(4)
            # DICOM: the first cosine triplet runs along a row (column index), the second down
            # a column (row index); PixelSpacing is (between rows, between columns).
            affine[:3, 0] = _LPS_TO_RAS @ delta
            affine[:3, 1] = _LPS_TO_RAS @ (ref.orientation[3:] * row_mm)
            affine[:3, 2] = _LPS_TO_RAS @ (ref.orientation[:3] * col_mm)
            affine[:3, 3] = _LPS_TO_RAS @ positions[0]
    axis = (
        "unknown"
        if normal is None
        else ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    )
    pixels = np.stack([s.pixels for s in slices])
    if axis != "unknown":  # shown as the plane's usual orientation shows it, as NIfTI is
        pixels, affine, (row_mm, col_mm) = _as_displayed(
            pixels, ref.orientation, axis, affine, (row_mm, col_mm)
        )
    return make_volume(
        pixels,
        name=name,
        source=source,
        axis=axis,
        spacing=(step, row_mm, col_mm),
        affine=affine,
        gaps=gaps,
        notes=notes,
        window=window,
        skip_empty=skip_empty,
        padding=sum(s.padding for s in slices),  # NaN by design: not damage
    )
