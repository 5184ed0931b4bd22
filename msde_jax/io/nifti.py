"""Reading NIfTI volumes with nibabel (optional extra: ``pip install 'msde-jax[nifti]'``).

:func:`read_nifti` reads a ``.nii`` or ``.nii.gz`` file as a :class:`~msde_jax.io.volumes.Volume`
of 2-D slices. The volume is first reoriented to the closest canonical RAS+ axes
(``nibabel.as_closest_canonical``: axes are only permuted and flipped, never resampled), so
that ``"axial"``, ``"coronal"`` and ``"sagittal"`` mean the same for any affine, oblique ones
included (an oblique volume is sliced along the voxel axes closest to those planes). Slices are
shown the way radiologists read them (the DICOM convention):

- axial: slices from inferior to superior; rows anterior → posterior, columns patient right →
  left;
- coronal: slices from posterior to anterior; rows superior → inferior, columns right → left;
- sagittal: slices from patient left to right; rows superior → inferior, columns anterior →
  posterior.

Voxels are read in float (nibabel applies ``scl_slope`` / ``scl_inter``), then windowed and
cleared of empty slices by the rules of :mod:`msde_jax.io.volumes`.
"""

import math
import os
from typing import Any

import numpy as np

from msde_jax._arrays_file import DEFLATE_MAX_RATIO, human_bytes, max_array_bytes
from msde_jax.io.errors import ImageReadError
from msde_jax.io.volumes import AXES, DEFAULT_WINDOW, VOLUME_SUFFIXES, Volume, make_volume

__all__ = [
    "INSTALL_HINT",
    "read_nifti",
]

INSTALL_HINT = "pip install 'msde-jax[nifti]'"

# (slice, row, column) axes of the canonical (i → R, j → A, k → S) array for each plane; rows
# and columns are then reversed so that anterior / superior is up and patient right is left.
_PLANE_AXES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError as err:
        raise ImportError(
            f"reading NIfTI files needs nibabel>=5, which is not installed: {INSTALL_HINT}"
        ) from err
    return nibabel


def read_nifti(
    path: str | os.PathLike,
    *,
    axis: str = "axial",
    window: tuple[float, float] | None = DEFAULT_WINDOW,
    skip_empty: bool = True,
) -> Volume:
    """Read a NIfTI-1 / NIfTI-2 volume as a stack of windowed 2-D slices.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file holding one 3-D volume or 2-D image (a volume of
            one slice; trailing axes of length 1 are squeezed, a true 4-D series is refused).
        axis: the slicing plane after RAS+ reorientation, ``"axial"``, ``"coronal"`` or
            ``"sagittal"`` (see the module docstring for the slice order and display). A
            volume of one slice in another plane is read as that slice (said in its notes).
        window: intensity window percentiles (see :func:`~msde_jax.io.volumes.window_volume`),
            ``None`` for min-max.
        skip_empty: drop empty slices (see :func:`~msde_jax.io.volumes.empty_slices`).

    Returns:
        A :class:`~msde_jax.io.volumes.Volume` named after the file (without its suffix), with
        spacing from the voxel sizes and an affine from (slice, row, column) to RAS+ mm. NaN
        and infinite voxels are treated as background (0) and counted in its notes.

    Raises:
        ImportError: nibabel is not installed (``pip install 'msde-jax[nifti]'``).
        ValueError: ``axis`` or ``window`` is not valid.
        ImageReadError: the file is missing, is not readable NIfTI (damaged, truncated, not
            gzip), has more than three axes longer than 1, holds complex / RGB voxels, or its
            header claims more voxels than the file holds or than memory allows.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}.")
    nib = _nibabel()
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ImageReadError(f"{name}: no such file.")
    try:
        img = nib.load(name, mmap=False)  # no memory map: the file is closed on return
    except Exception as err:  # ImageFileError, gzip / zlib errors, OSError on short files…
        raise ImageReadError(f"{name}: not a readable NIfTI volume ({err}).") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(f"{name}: not a NIfTI volume (nibabel reads it as {type(img)}).")
    shape = img.shape
    if len(shape) > 3:
        img = nib.squeeze_image(img)  # drops trailing length-1 axes beyond the third
        if len(img.shape) > 3:
            raise ImageReadError(
                f"{name}: a {len(shape)}-D volume of shape {tuple(shape)}; only 3-D volumes are "
                "read (one volume per file): split it first, e.g. with nibabel.four_to_three."
            )
    dtype = img.get_data_dtype()
    if dtype.names is not None or np.issubdtype(dtype, np.complexfloating):
        raise ImageReadError(f"{name}: voxels of type {dtype} (RGB or complex) are not supported.")
    _check_size(name, img.shape, dtype)
    try:
        if len(img.shape) < 3:  # a 2-D NIfTI image: one slice (scaled as it is read)
            flat = img.get_fdata(dtype=np.float32)
            img = nib.Nifti1Image(flat.reshape(flat.shape + (1,) * (3 - flat.ndim)), img.affine)
        canonical = nib.as_closest_canonical(img)
        data = canonical.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as err:  # truncated data (OSError), unreadable affines…
        raise ImageReadError(f"{name}: not a readable NIfTI volume ({err}).") from err
    notes = []
    single = [i for i in range(3) if data.shape[i] == 1]
    if single and data.shape[_PLANE_AXES[axis][0]] > 1:  # one slice in another plane
        own = next(plane for plane, axes in _PLANE_AXES.items() if axes[0] == single[0])
        notes.append(f"one {own} slice: read in its plane, not as {axis} strips of one pixel")
        axis = own
    s, r, c = _PLANE_AXES[axis]
    stack = data.transpose(s, r, c)[:, ::-1, ::-1]
    # (slice, row, column) → canonical voxel (i, j, k): rows and columns counted backwards.
    to_voxel = np.zeros((4, 4))
    to_voxel[s, 0] = 1.0
    to_voxel[r, 1], to_voxel[r, 3] = -1.0, data.shape[r] - 1
    to_voxel[c, 2], to_voxel[c, 3] = -1.0, data.shape[c] - 1
    to_voxel[3, 3] = 1.0
    sizes = nib.affines.voxel_sizes(canonical.affine)
    return make_volume(
        stack,
        name=_stem(name),
        source=name,
        axis=axis,
        spacing=(sizes[s], sizes[r], sizes[c]),
        affine=canonical.affine @ to_voxel,
        notes=notes,
        window=window,
        skip_empty=skip_empty,
    )


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in VOLUME_SUFFIXES[::-1]:  # .nii.gz before .nii
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]


def _check_size(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, before any voxel is decoded, a header that claims more voxels than the file can
    hold (its size, or deflate's 1032:1 limit for ``.nii.gz``) or than memory allows: reading
    makes float32 copies of the volume (the data, its reoriented view, the slices), bounded like
    every array the package reads (``msde_jax._arrays_file.max_array_bytes``)."""
    voxels = math.prod(int(s) for s in shape)
    stored = os.path.getsize(name)
    gzipped = name.lower().endswith(".gz")
    claimed = voxels * dtype.itemsize
    if claimed > stored * (DEFLATE_MAX_RATIO if gzipped else 1):
        raise ImageReadError(
            f"{name}: not a readable NIfTI volume: its header claims {tuple(shape)} voxels of "
            f"{dtype} ({human_bytes(claimed)}), more than the {human_bytes(stored)} file can hold; "
            "the file is damaged or was crafted."
        )
    needed, bound = 3 * voxels * 4, max_array_bytes()
    if needed > bound:
        raise ImageReadError(
            f"{name}: reading its {tuple(shape)} voxels needs about {human_bytes(needed)} "
            f"(float32 copies), more than the {human_bytes(bound)} allowed (half the memory "
            "available, or MSDE_JAX_MAX_ARRAY_BYTES)."
        )
