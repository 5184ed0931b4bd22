"""The error every reader of :mod:`msde_jax.io` raises for an input it cannot read: it sits
below the readers (images, DICOM, NIfTI, DICOM series), so that each of them can raise it and
the dispatchers above can import them."""

__all__ = ["ImageReadError"]


class ImageReadError(ValueError):
    """An input could not be read or understood as an image."""
