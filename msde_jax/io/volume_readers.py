"""Reading a volume from a path: :func:`read_volumes` picks the reader — NIfTI
(:func:`~msde_jax.io.nifti.read_nifti`, extra ``nifti``) or a folder of DICOM slices
(:func:`~msde_jax.io.dicom_series.read_dicom_series`, extra ``dicom``) — and :func:`is_volume`
says whether it would. Above the readers, which build on :mod:`msde_jax.io.volumes`."""

import os
from pathlib import Path

from msde_jax.io.dicom_series import is_dicom_series, read_dicom_series
from msde_jax.io.nifti import read_nifti
from msde_jax.io.volumes import DEFAULT_WINDOW, Volume, is_nifti

__all__ = ["is_volume", "read_volumes"]


def is_volume(path: str | os.PathLike) -> bool:
    """Whether a path is a volume the readers accept: a NIfTI file or a DICOM-series folder.

    A folder is a DICOM series when :func:`~msde_jax.io.dicom_series.is_dicom_series` says so
    (one of the DICOM files it holds has ImagePositionPatient and ImageOrientationPatient, as
    CT, MR and PET slices do and 2-D radiographs do not). Without pydicom no folder is a series.
    """
    p = Path(path)
    if p.is_dir():
        return is_dicom_series(p)
    return is_nifti(p) and p.is_file()


def read_volumes(
    path: str | os.PathLike,
    *,
    axis: str = "axial",
    window: tuple[float, float] | None = DEFAULT_WINDOW,
    skip_empty: bool = True,
) -> list[Volume]:
    """Read a NIfTI file (one volume) or a folder of DICOM slices (one volume per series).

    Args:
        path: a ``.nii`` / ``.nii.gz`` file or a folder of DICOM files.
        axis: the slicing plane for NIfTI. A DICOM series is always stacked along its own
            slice normal, which ``"axial"`` (the default) stands for; another plane is taken
            where it is the series' own (``Volume.axis``), and refused otherwise.
        window: intensity window percentiles (see :func:`~msde_jax.io.volumes.window_volume`).
        skip_empty: drop empty slices (see :func:`~msde_jax.io.volumes.empty_slices`).
    """
    p = Path(path)
    if p.is_dir():
        volumes = read_dicom_series(p, window=window, skip_empty=skip_empty)
        other = [v.axis for v in volumes if axis not in ("axial", v.axis)]
        if other:
            raise ValueError(
                f"{p}: a DICOM series is stacked along its own slice normal ({other[0]} slices "
                f"here); reslicing it to {axis!r} is not supported: read it with axis='axial' "
                "(its own plane)."
            )
        return volumes
    return [read_nifti(p, axis=axis, window=window, skip_empty=skip_empty)]
