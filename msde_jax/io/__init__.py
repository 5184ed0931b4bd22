"""Reading inputs: images (Pillow), DICOM (pydicom, optional), datasets and the embedding cache.

Nothing here runs a network: :class:`~msde_jax.embedder.Embedder` composes these readers with
the backbones of :mod:`msde_jax.backbones`.
"""

from msde_jax.io.cache import embed_cached
from msde_jax.io.datasets import Dataset, list_images, load_dataset, load_images_npz
from msde_jax.io.dicom import read_dicom
from msde_jax.io.images import IMAGE_SUFFIXES, ImageReadError, prepare, to_float

__all__ = [
    "IMAGE_SUFFIXES",
    "Dataset",
    "ImageReadError",
    "embed_cached",
    "list_images",
    "load_dataset",
    "load_images_npz",
    "prepare",
    "read_dicom",
    "to_float",
]
