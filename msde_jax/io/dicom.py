"""Reading DICOM files with pydicom (optional extra: ``pip install 'msde-jax[dicom]'``).

:func:`read_dicom` turns one 2-D DICOM image into float32 pixels in [0, 1]: the modality
rescale (RescaleSlope / RescaleIntercept) is applied, MONOCHROME1 is inverted so that higher is
brighter, and grayscale is windowed with the file's first WindowCenter / WindowWidth (the DICOM
linear VOI function) or, without a window, scaled by its minimum and maximum. RGB (and YBR,
which pydicom converts to RGB) and PALETTE COLOR images become (H, W, 3).
"""

import os
from typing import Any

import numpy as np

from msde_jax.io.errors import ImageReadError

__all__ = [
    "INSTALL_HINT",
    "decode_frame",
    "header_number",
    "is_dicom",
    "modality_values",
    "read_dicom",
]

INSTALL_HINT = "pip install 'msde-jax[dicom]'"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:
        raise ImportError(
            f"reading DICOM files needs pydicom>=3.0, which is not installed: {INSTALL_HINT}"
        ) from err
    return pydicom


def decode_frame(name: str, *, multi_frame: str) -> tuple[Any, np.ndarray]:
    """``(dataset, pixels)`` of a single-frame DICOM file, decoded by pydicom.

    Raises:
        ImageReadError: not readable DICOM, no pixel data, or several frames (``multi_frame``
            says what to do instead).
    """
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(name, force=True)
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise ImageReadError(f"{name}: DICOM file without pixel data.")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise ImageReadError(f"{name}: multi-frame DICOM ({frames} frames); {multi_frame}.")
        return ds, np.asarray(ds.pixel_array)
    except ImageReadError:
        raise
    except Exception as err:  # pydicom raises many kinds (InvalidDicomError, decoder errors…)
        raise ImageReadError(f"{name}: not a readable DICOM image ({err}).") from err


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether a file has the DICOM magic ``DICM`` at byte 128 (files with a preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D DICOM image as float32 pixels in [0, 1].

    Args:
        path: the DICOM file.

    Returns:
        (H, W) float32 for grayscale (MONOCHROME1 / MONOCHROME2), (H, W, 3) for colour images.

    Raises:
        ImportError: pydicom is not installed (``pip install 'msde-jax[dicom]'``).
        ImageReadError: the file is not readable DICOM, has no pixel data, holds several frames
            or a volume, has an unsupported photometric interpretation, or a malformed
            RescaleSlope / RescaleIntercept, padding tag or ModalityLUTSequence (naming the
            tag).
    """
    name = os.fspath(path)
    ds, arr = decode_frame(
        name,
        multi_frame="only 2-D images are supported — export the frames / slices you want as "
        "separate 2-D images",
    )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(header_number(ds, "SamplesPerPixel", name, 1))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(arr, ds))  # its dtype says 8- or 16-bit entries
        scale = _max_value(rgb.dtype, 16, apply_lut=True)
        return np.clip(rgb.astype(np.float64) / scale, 0, 1).astype(np.float32)
    if samples == 3 or (arr.ndim == 3 and arr.shape[-1] == 3):
        if arr.ndim != 3:
            raise ImageReadError(f"{name}: colour DICOM with unexpected shape {arr.shape}.")
        bits = int(header_number(ds, "BitsStored", name, 8))
        out = arr.astype(np.float64) / _max_value(arr.dtype, bits)
        return np.clip(out, 0, 1).astype(np.float32)
    if arr.ndim != 2:
        raise ImageReadError(
            f"{name}: pixel data of shape {arr.shape}; only 2-D images are supported."
        )
    if not photometric.startswith("MONOCHROME"):
        raise ImageReadError(f"{name}: unsupported photometric interpretation {photometric!r}.")
    x, _ = modality_values(ds, arr, name)
    padding = np.isnan(x)  # padding pixels (and NaN in float pixel data): background
    window = _window(ds)
    if window is not None:
        centre, width = window
        # DICOM PS3.3 C.11.2.1.2.1 linear VOI function, to [0, 1].
        x = np.clip((x - (centre - 0.5)) / max(width - 1.0, 1e-12) + 0.5, 0.0, 1.0)
    elif padding.all():
        x = np.zeros_like(x)
    else:
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":
        x = 1.0 - x
    return np.where(padding, 0.0, x).astype(np.float32)  # padding: background


def header_number(ds: Any, keyword: str, name: str, default: float) -> float:
    """A numeric header value, ``default`` when the tag is absent or empty.

    A multi-valued tag whose values agree (``1\\1``, seen in broken exports) gives that value.

    Raises:
        ImageReadError: the value is not one finite number (text, disagreeing values, NaN),
            naming the file and the tag.
    """
    try:
        value = ds.get(keyword)
    except Exception as err:  # pydicom may convert a value lazily, and fail then
        raise ImageReadError(f"{name}: unreadable {keyword} ({err}); {_FIX_TAG}.") from err
    items = list(value) if _is_multi(value) else [value]
    items = [v for v in items if v is not None and str(v).strip() != ""]
    if not items:
        return default
    try:
        numbers = {float(v) for v in items}
    except (TypeError, ValueError):
        numbers = set()
    if len(numbers) != 1 or not np.isfinite(next(iter(numbers))):
        shown = "\\".join(str(v) for v in items)
        raise ImageReadError(f"{name}: {keyword} is '{shown}', not one number; {_FIX_TAG}.")
    return numbers.pop()


_FIX_TAG = "correct or remove the tag (e.g. with pydicom) to read the file"


def modality_values(ds: Any, arr: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A grayscale frame's stored values through the modality transform, as float64, and
    which pixels are padding (``None``: no padding tag).

    The ModalityLUTSequence when the file has one (``pydicom.pixels.apply_modality_lut``), else
    ``stored · RescaleSlope + RescaleIntercept`` (1 and 0 when absent; a slope of 0, which
    would make every pixel one value, is read as 1). Padding — stored values
    equal to PixelPaddingValue or, with PixelPaddingRangeLimit, between the two inclusive
    (compared before the transform, as DICOM defines them) — becomes NaN.

    Raises:
        ImageReadError: a malformed RescaleSlope / RescaleIntercept / padding tag or
            ModalityLUTSequence, naming the file and the tag.
    """
    padding = _padding(ds, arr, name)
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        try:
            x = np.asarray(apply_modality_lut(arr, ds), np.float64)
        except Exception as err:  # a descriptor or table that does not fit the pixels
            raise ImageReadError(
                f"{name}: unreadable ModalityLUTSequence ({err}); {_FIX_TAG}."
            ) from err
    else:
        slope = header_number(ds, "RescaleSlope", name, 1.0) or 1.0  # 0: a writer's slip
        x = arr.astype(np.float64) * slope + header_number(ds, "RescaleIntercept", name, 0.0)
    if padding is not None:
        x[padding] = np.nan
    return x, padding


def _padding(ds: Any, arr: np.ndarray, name: str) -> np.ndarray | None:
    """Which stored values are padding (PixelPaddingValue, PixelPaddingRangeLimit), or None."""
    if not np.issubdtype(arr.dtype, np.integer) or "PixelPaddingValue" not in ds:
        return None
    value = header_number(ds, "PixelPaddingValue", name, np.nan)
    if np.isnan(value):
        return None
    limit = header_number(ds, "PixelPaddingRangeLimit", name, value)
    signed = header_number(ds, "PixelRepresentation", name, 0) == 1
    # US or SS by PixelRepresentation: a value read with the other VR is re-read as 16 bits.
    value, limit = (_as_16_bits(v, signed) for v in (value, limit))
    lo, hi = min(value, limit), max(value, limit)
    return (arr >= lo) & (arr <= hi)


def _as_16_bits(value: float, signed: bool) -> float:
    if signed and value >= 2**15:
        return value - 2**16
    if not signed and value < 0:
        return value + 2**16
    return value


def _max_value(dtype: np.dtype, bits: int, *, apply_lut: bool = False) -> float:
    if apply_lut:  # palette LUT output: 8- or 16-bit entries
        return 255.0 if dtype == np.uint8 else 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    return float(2 ** min(bits, 8 * np.dtype(dtype).itemsize) - 1)


def _window(ds: Any) -> tuple[float, float] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    try:
        c = float(centre[0] if _is_multi(centre) else centre)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w > 0 else None


def _is_multi(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")
