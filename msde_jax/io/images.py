"""Reading and preparing images for a backbone, with Pillow.

Anything a user has — a file path, a PIL image, a NumPy array of shape (H, W), (H, W, 1),
(H, W, 3) or (H, W, 4) in uint8, uint16, bool or float in [0, 1] — becomes an (S, S, 3) float32
RGB array in [0, 1]: grayscale is replicated to three channels (as the paper does), an alpha
channel is dropped, and the image is resized with bilinear interpolation. Integer images already
at the backbone's size need only a conversion, which can run on the device: :func:`raw_pixels`
recognises them and :func:`rgb_from_pixels` makes the same floats there.
"""

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from msde_jax.io.dicom import is_dicom, read_dicom  # pydicom itself only when a file needs it
from msde_jax.io.errors import ImageReadError

__all__ = [
    "IMAGE_SUFFIXES",
    "EightBitsWarning",
    "PIXEL_VALUES",
    "READER_VERSION",
    "RESIZE_MODES",
    "ImageReadError",
    "prepare",
    "prepare_channels",
    "raw_pixels",
    "refuse_one_image",
    "resize",
    "rgb_from_pixels",
    "to_float",
]

RESIZE_MODES = ("direct", "center_crop")
# Every file suffix the readers accept (DICOM needs the ``dicom`` extra); folders are listed by it.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")

# Keys the embedding cache (msde_jax.io.cache): raise it whenever the pixels a given file or
# array reads as change (decoding, orientation, rescaling, windowing), so that embeddings cached
# from the earlier reading are made again instead of being reused for the new one.
READER_VERSION = 3  # 2: DICOM pixel padding, modality LUTs, coronal series order; 3: center_crop
# resamples only the centre box (pixels move by float rounding), MPO JPEGs read (their first image)

# ImageNet evaluation crops 224 out of 256: the shorter side is resized to size / 0.875.
_CROP_RATIO = 0.875


def to_float(image: Any, *, name: str = "image") -> np.ndarray:
    """An image as an (H, W, C) float32 array in [0, 1] with C in {1, 3} (no resizing).

    Args:
        image: a path (``str`` / ``os.PathLike``), a ``PIL.Image.Image`` or an array of shape
            (H, W), (H, W, 1), (H, W, 3) or (H, W, 4): uint8 (÷255), uint16 (÷65535), bool, or
            float already in [0, 1].
        name: how to refer to the image in error messages.
    """
    if isinstance(image, str | os.PathLike):
        return _read_file(Path(image))
    if isinstance(image, Image.Image):
        return _from_pil(_as_shown(image), name)
    arr = np.asarray(image)
    if not arr.dtype.isnative:  # big-endian pixels: the same values in the machine's order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ImageReadError(
            f"{name}: expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {arr.shape}."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"{name}: empty image of shape {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ImageReadError(f"{name}: contains NaN or infinite pixel values.")
        if out.min() < 0 or out.max() > 1:
            raise ImageReadError(
                f"{name}: float pixels must lie in [0, 1], got [{out.min():.3g}, "
                f"{out.max():.3g}]; scale the image first (e.g. divide by its maximum)."
            )
        return out
    raise ImageReadError(
        f"{name}: unsupported pixel dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]."
    )


# The float in [0, 1] of every uint8 and uint16 pixel value, as to_float makes it: a device
# turns raw pixels into these floats by lookup (rgb_from_pixels).
PIXEL_VALUES = {
    np.dtype(dtype): to_float(np.arange(np.iinfo(dtype).max + 1, dtype=dtype)[None])[0, :, 0]
    for dtype in (np.uint8, np.uint16)
}


_ORIENTATION = 0x0112  # the EXIF tag viewers rotate an image by


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file.")
    if path.suffix.lower() == ".dcm" or is_dicom(path):
        return to_float(read_dicom(path), name=str(path))
    try:
        with Image.open(path) as img:  # reads the header only: a bomb is refused here
            # A TIFF stack: never just its first page. An MPO (a JPEG from a phone camera
            # with a second, e.g. a depth or gain map, image) is its first: the photograph.
            if getattr(img, "n_frames", 1) > 1 and img.format != "MPO":
                raise ImageReadError(
                    f"{path}: holds {img.n_frames} pages (frames); only 2-D images are "
                    "supported — save the pages you want as separate images, or a volume as "
                    "NIfTI (.nii.gz)."
                )
            eight_bits = _colour_16_bit(img)
            img.load()
            if eight_bits:
                _warn_eight_bits(path)
            return _from_pil(_as_shown(img), str(path))
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"{path}: refused, too many pixels to decode safely ({err}); downscale it first "
            "or raise PIL.Image.MAX_IMAGE_PIXELS if it is trusted."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err}).") from err


class EightBitsWarning(UserWarning):
    """A 16-bit colour or grey + alpha PNG or TIFF was read at 8 bits per channel."""


def _colour_16_bit(img: Image.Image) -> bool:
    """Whether Pillow will decode ``img`` (opened, not loaded) from 16 bits per channel to 8:
    it keeps 16 bits for single-channel PNGs and TIFFs only (mode ``I;16`` or ``I``)."""
    if img.format not in ("PNG", "TIFF") or not img.tile:
        return False
    rawmode = img.tile[0][3]
    rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    sixteen = isinstance(rawmode, str) and rawmode.endswith((";16B", ";16L", ";16N"))
    return sixteen and not img.mode.startswith("I")


def _warn_eight_bits(path: Path) -> None:
    warnings.warn(
        f"{path}: a 16-bit colour (or grey + alpha) PNG or TIFF, read at 8 bits per channel "
        "(Pillow keeps 16 bits for single-channel images only); to keep the depth of a grey "
        "scan, save it as a single-channel 16-bit PNG.",
        EightBitsWarning,
        stacklevel=3,
    )


def _as_shown(img: Image.Image) -> Image.Image:
    """A photograph with an EXIF rotation as viewers show it (a file and the PIL image opened
    from it read alike)."""
    if img.getexif().get(_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(img)
    return img


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return to_float(np.asarray(img).astype(np.uint16), name=name)
    if mode == "I":  # 32-bit integer: 16-bit PNGs often open like this
        arr = np.asarray(img)
        # a TIFF of signed integers (SampleFormat 2): CT values, say, even where none is < 0
        signed = img.format == "TIFF" and 2 in np.atleast_1d(img.tag_v2.get(339, 1))
        if arr.min() < 0 or signed:
            what = "a TIFF of signed integers"
            if arr.min() < 0:
                what = f"negative (signed) pixel values, down to {arr.min()}"
            raise ImageReadError(
                f"{name}: {what}; save the image as unsigned 8- or 16-bit or as float in [0, 1], "
                "or a CT or MR scan as a volume (NIfTI or DICOM), whose values are windowed."
            )
        if arr.max() > 65535:
            raise ImageReadError(f"{name}: 32-bit integer pixels above the 16-bit range.")
        return to_float(arr.astype(np.uint16), name=name)
    if mode == "F":
        return to_float(np.asarray(img, dtype=np.float32), name=name)
    if mode in ("1", "L"):
        return to_float(np.asarray(img.convert("L")), name=name)
    return to_float(np.asarray(img.convert("RGB")), name=name)


def resize(image: np.ndarray, size: int, *, mode: str = "direct") -> np.ndarray:
    """Resize an (H, W, C) float image to (size, size, C) with bilinear interpolation.

    ``mode="direct"`` resizes the whole image to size × size (the paper's preprocessing);
    ``"center_crop"`` resizes the shorter side to size / 0.875 and crops the centre (ImageNet
    evaluation).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}.")
    h, w = image.shape[:2]
    box = None
    if mode == "center_crop":
        # The centre size × size of the image resized to `target`, as the box of the source
        # it samples: only that box is resampled (a 1 × 20,000 strip would otherwise be
        # resized whole to 256 × 5,120,000 first), with the same scale and sample positions.
        short = round(size / _CROP_RATIO)
        target = (max(size, round(w * short / min(h, w))), max(size, round(h * short / min(h, w))))
        sx, sy = w / target[0], h / target[1]
        left, top = (target[0] - size) // 2, (target[1] - size) // 2
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    channels = [
        np.asarray(
            Image.fromarray(image[..., c], mode="F").resize((size, size), Image.BILINEAR, box)
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def prepare(image: Any, size: int, *, mode: str = "direct", name: str = "image") -> np.ndarray:
    """Read, resize and convert one image to an (size, size, 3) float32 RGB array in [0, 1]."""
    out = prepare_channels(image, size, mode=mode, name=name)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def prepare_channels(
    image: Any, size: int, *, mode: str = "direct", name: str = "image"
) -> np.ndarray:
    """:func:`prepare` before grayscale is replicated: (size, size, C) float32 in [0, 1] with C
    in {1, 3}, for a caller that broadcasts one channel into three itself. An image already
    size × size (``mode="direct"``) is not resized (Pillow would copy it) nor clipped
    (:func:`to_float` gives values in [0, 1])."""
    out = to_float(image, name=name)
    if mode == "direct" and out.shape[:2] == (size, size):
        return out
    return np.clip(resize(out, size, mode=mode), 0.0, 1.0)


def raw_pixels(image: Any, size: int, mode: str = "direct") -> np.ndarray | None:
    """``image`` as (size, size, C) integer pixels when :func:`prepare` would only convert them
    (a uint8 or uint16 array (H, W) or (H, W, C ∈ {1, 3, 4}) already size × size with
    ``mode="direct"``: each pixel becomes ``PIXEL_VALUES[dtype][pixel]``, gray replicated,
    alpha dropped — already dropped here); else ``None``."""
    if not isinstance(image, np.ndarray) or image.dtype not in PIXEL_VALUES:
        return None
    if mode != "direct" or image.shape[:2] != (size, size):
        return None
    if image.ndim == 2:
        return image[..., None]
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        return image[..., :3]
    return None


def rgb_from_pixels(pixels: jax.Array, sharding: Any = None) -> jax.Array:
    """:func:`raw_pixels` batches on the device, (n, S, S, C) uint8 / uint16 → (n, S, S, 3)
    float32 in [0, 1]: each pixel's float looked up in ``PIXEL_VALUES`` (the host's floats bit
    for bit, where XLA's own division may round otherwise), gray replicated to RGB, placed with
    ``sharding``. One compiled program per dtype, channel count and sharding, for every caller."""
    return _pixel_lookup(sharding)(pixels, PIXEL_VALUES[np.dtype(pixels.dtype)])


@functools.cache
def _pixel_lookup(sharding: Any) -> Callable[[jax.Array, np.ndarray], jax.Array]:
    def lookup(x: jax.Array, values: jax.Array) -> jax.Array:
        return jnp.broadcast_to(values[x.astype(jnp.int32)], (*x.shape[:3], 3))

    return jax.jit(lookup, out_shardings=sharding)


def refuse_one_image(images: Any) -> None:
    """Refuse one image where a sequence of images or an (n, H, W[, C]) stack is expected: a
    path would be read as its characters, an (H, W, C) array as H images of one row each, an
    (H, W) array as H rows. (An (n, H, W) stack of images 1, 3 or 4 pixels wide is refused
    too: it cannot be told from one image.)"""
    one = isinstance(images, str | bytes | os.PathLike) or hasattr(images, "getpixel")
    shape = getattr(images, "shape", None)
    one_array = shape is not None and (
        len(shape) == 2 or len(shape) == 3 and shape[-1] in (1, 3, 4)
    )
    if one or one_array:
        what = "one image" if one else f"an array of shape {tuple(shape)}"
        raise ValueError(
            f"expected a sequence of images or an (n, H, W[, C]) stack; got {what}. For one "
            "image pass [image] (or image[None] for an array)."
        )
