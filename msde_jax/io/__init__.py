"""Reading inputs: images, DICOM and volumes (optional extras), datasets and the embedding cache.

Images are read with Pillow, DICOM with pydicom (extra ``dicom``), NIfTI volumes with nibabel
(extra ``nifti``); the optional libraries are imported only when a file needs them.
:func:`read_inputs` lists files and folders as named 2-D items, a volume as its slices.

Nothing here runs a network: :class:`~msde_jax.embedder.Embedder` composes these readers with
the backbones of :mod:`msde_jax.backbones`.
"""

from msde_jax.io.cache import embed_cached
from msde_jax.io.datasets import Dataset, list_images, load_dataset, load_images_npz
from msde_jax.io.dicom import read_dicom
from msde_jax.io.dicom_series import SeriesGapWarning, is_dicom_series, read_dicom_series
from msde_jax.io.images import IMAGE_SUFFIXES, ImageReadError, prepare, to_float
from msde_jax.io.inputs import Inputs, SliceGroups, expand_volumes, list_inputs, read_inputs
from msde_jax.io.nifti import read_nifti
from msde_jax.io.volume_readers import is_volume, read_volumes
from msde_jax.io.volumes import VOLUME_SUFFIXES, Volume, slice_names, volume_images, window_volume

__all__ = [
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Dataset",
    "ImageReadError",
    "Inputs",
    "SeriesGapWarning",
    "SliceGroups",
    "Volume",
    "embed_cached",
    "expand_volumes",
    "is_dicom_series",
    "is_volume",
    "list_images",
    "list_inputs",
    "load_dataset",
    "load_images_npz",
    "prepare",
    "read_dicom",
    "read_dicom_series",
    "read_inputs",
    "read_nifti",
    "read_volumes",
    "slice_names",
    "to_float",
    "volume_images",
    "window_volume",
]
