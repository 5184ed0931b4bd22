"""The error every reader of :mod:`msde_jax.io` raises for an input it cannot read, and how
their messages and notes name a list of files: it sits below the readers (images, DICOM,
NIfTI, DICOM series), so that each of them can use it and the dispatchers above can import
them."""

from collections.abc import Sequence

__all__ = ["ImageReadError", "first_few"]


def first_few(names: Sequence[str], most: int = 3) -> str:
    """``"a, b, c, …"``: the first ``most`` names, and an ellipsis when there are more."""
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


class ImageReadError(ValueError):
    """An input could not be read or understood as an image."""
