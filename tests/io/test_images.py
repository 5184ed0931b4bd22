"""Image reading and preparation: every accepted input becomes (S, S, 3) float RGB in [0, 1]."""

import numpy as np
import pytest
from PIL import Image

from msde_jax.io.images import ImageReadError, prepare, resize, to_float

RNG = np.random.default_rng(0)
GRAY8 = (RNG.random((30, 40)) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "image",
    [
        GRAY8,
        GRAY8[..., None],
        np.repeat(GRAY8[..., None], 3, axis=-1),
        np.concatenate(
            [np.repeat(GRAY8[..., None], 3, axis=-1), np.zeros((30, 40, 1), np.uint8)], axis=-1
        ),
        GRAY8.astype(np.uint16) * 257,
        GRAY8.astype(np.float32) / 255,
        Image.fromarray(GRAY8),
        Image.fromarray(GRAY8).convert("RGB"),
        Image.fromarray(GRAY8).convert("RGBA"),
        Image.fromarray(GRAY8).convert("P"),
    ],
    ids=["hw", "hw1", "hw3", "hw4", "uint16", "float", "pil-L", "pil-RGB", "pil-RGBA", "pil-P"],
)
def test_every_form_gives_the_same_gray_image(image):
    out = prepare(image, 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # grayscale replicated
    # Pillow's bilinear resize (8-bit, so within 1/255), whatever form the image came in
    want = np.asarray(Image.fromarray(GRAY8).resize((32, 32), Image.BILINEAR)) / 255
    np.testing.assert_allclose(out[..., 0], want, atol=1 / 255 + 1e-6)


def test_files_png_jpeg_16bit(tmp_path):
    Image.fromarray(GRAY8).save(tmp_path / "a.png")
    Image.fromarray(GRAY8).save(tmp_path / "a.jpg", quality=100)
    deep = (RNG.random((30, 40)) * 65535).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(prepare(tmp_path / "a.png", 32), prepare(GRAY8, 32), atol=1e-6)
    np.testing.assert_allclose(prepare(str(tmp_path / "a.jpg"), 32), prepare(GRAY8, 32), atol=0.03)
    # 16-bit precision is kept, not truncated to 8 bits.
    np.testing.assert_allclose(to_float(tmp_path / "deep.png")[..., 0], deep / 65535, atol=1e-6)
    # A photograph whose EXIF orientation says "rotate 90° clockwise" is read as shown.
    turned = Image.fromarray(GRAY8)
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "turned.png", exif=exif.tobytes())
    shown = to_float(tmp_path / "turned.png")[..., 0]
    np.testing.assert_allclose(shown, np.rot90(GRAY8, -1) / 255, atol=1e-7)
    with Image.open(tmp_path / "turned.png") as opened:  # the PIL image of it reads alike
        np.testing.assert_array_equal(to_float(opened)[..., 0], shown)
    from msde_jax.io.cache import image_hash  # and is not the unrotated pixels' cache entry

    assert image_hash(turned) != image_hash(Image.fromarray(GRAY8))


def test_direct_resize_matches_pillow_bilinear():
    want = np.asarray(Image.fromarray(GRAY8).resize((224, 224), Image.BILINEAR)) / 255
    np.testing.assert_allclose(prepare(GRAY8, 224)[..., 0], want, atol=1 / 255 + 1e-6)


def test_center_crop_keeps_aspect():
    wide = np.zeros((100, 200), np.float32)
    wide[:, 90:110] = 1.0  # a vertical bar in the middle survives the crop, centred
    out = resize(wide[..., None], 64, mode="center_crop")
    assert out.shape == (64, 64, 1)
    assert out[:, 32, 0].min() > 0.9
    assert out[:, 0, 0].max() < 0.1


def _crop_of_the_whole(image, size):
    """center_crop as specified: the whole image resized (short side size / 0.875), then the
    centre size × size cut out."""
    h, w = image.shape[:2]
    short = round(size / 0.875)
    target = (max(size, round(w * short / min(h, w))), max(size, round(h * short / min(h, w))))
    out = np.asarray(Image.fromarray(image, mode="F").resize(target, Image.BILINEAR))
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    return out[top : top + size, left : left + size]


@pytest.mark.parametrize("shape", [(300, 400), (37, 91), (1000, 333), (5, 7), (1, 2000)])
def test_center_crop_resamples_only_its_box(shape, monkeypatch):
    """Only the centre box is resampled, with the values of cropping the whole resize: a
    1 × n strip was resized whole to 256 × 256·n first (1.2 GB for n = 1,600, helper review)."""
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    want = _crop_of_the_whole(image, 64)
    sizes = []
    original = Image.Image.resize

    def recorded(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recorded)
    got = resize(image[..., None], 64, mode="center_crop")[..., 0]
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert sizes == [(64, 64)]


def test_a_phone_jpeg_with_a_second_image_is_its_first(tmp_path):
    """An MPO (a JPEG carrying a second image: a depth or gain map) was refused as a stack
    of pages; it is read as its first image, the photograph."""
    rgb = (np.random.default_rng(2).random((30, 40, 3)) * 255).astype(np.uint8)
    first, second = Image.fromarray(rgb), Image.fromarray(255 - rgb)
    first.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[second])
    with Image.open(tmp_path / "photo.jpg") as img:
        assert img.format == "MPO"
        want = np.asarray(img.convert("RGB")) / 255
    np.testing.assert_allclose(to_float(tmp_path / "photo.jpg"), want, atol=1e-7)


def _png16(path, pixels, colour_type):
    """A 16-bit PNG written by hand (Pillow writes 16 bits for one channel only)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    h, w = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_16_bit_colour_pngs_say_they_are_read_at_8_bits(tmp_path):
    """Pillow decodes 16-bit RGB and grey + alpha PNGs at 8 bits: 12-bit data fell to 16 grey
    levels without a word (helper review). A warning says so; 16-bit grey keeps its depth."""
    from msde_jax.io.images import EightBitsWarning

    pixels = np.random.default_rng(3).integers(0, 4096, (6, 7, 3))
    _png16(tmp_path / "rgb.png", pixels, 2)
    _png16(tmp_path / "la.png", pixels[..., :2], 4)
    _png16(tmp_path / "grey.png", pixels[..., 0], 0)
    _tiff_rgb16(tmp_path / "rgb.tif", pixels)
    for name in ("rgb.png", "la.png", "rgb.tif"):
        with pytest.warns(EightBitsWarning, match=f"{name}: a 16-bit colour"):
            to_float(tmp_path / name)
    grey = to_float(tmp_path / "grey.png")  # no warning (the suite's warnings are errors)
    np.testing.assert_allclose(grey[..., 0], pixels[..., 0] / 65535, atol=1e-7)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4, 2), np.uint8), "expected an array of shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "expected an array of shape"),
        (np.full((4, 4), 2.0), r"must lie in \[0, 1\]"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.zeros((4, 4), np.int64), "unsupported pixel dtype"),
        (np.zeros((0, 4), np.uint8), "empty image"),
    ],
)
def test_bad_arrays(image, match):
    with pytest.raises(ImageReadError, match=match):
        prepare(image, 8)


def test_bad_files(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        prepare(tmp_path / "missing.png", 8)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="not a readable image"):
        prepare(tmp_path / "bad.png", 8)
    Image.fromarray(GRAY8).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="not a readable image"):
        prepare(tmp_path / "cut.png", 8)
    pages = [Image.fromarray(GRAY8), Image.fromarray(255 - GRAY8)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match="holds 2 pages"):  # not silently its first page
        to_float(tmp_path / "stack.tif")
    pages[0].save(tmp_path / "one.tif")
    np.testing.assert_allclose(to_float(tmp_path / "one.tif")[..., 0], GRAY8 / 255, atol=1e-7)
    signed = (GRAY8.astype(np.int16) * 8 - 1000).astype(np.int16)  # CT values in a TIFF
    Image.fromarray(signed).save(tmp_path / "ct.tif")
    with pytest.raises(ImageReadError, match=r"ct\.tif: negative \(signed\) pixel values, down to"):
        to_float(tmp_path / "ct.tif")
    # signed even where no value is below 0 (it was divided by 65535 as if unsigned)
    Image.fromarray(np.abs(signed).astype(np.int16)).save(tmp_path / "positive_ct.tif")
    with pytest.raises(ImageReadError, match=r"positive_ct\.tif: a TIFF of signed integers"):
        to_float(tmp_path / "positive_ct.tif")


def _tiff_rgb16(path, pixels):
    """An uncompressed 16-bit RGB TIFF written by hand (Pillow writes none)."""
    import struct

    h, w, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    entries = [  # tag, type (3 short, 4 long), count, value or offset
        (256, 3, 1, w),
        (257, 3, 1, h),
        (258, 3, 3, 8 + 2 + 10 * 12 + 4),  # BitsPerSample 16, 16, 16 after the IFD
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 8 + 2 + 10 * 12 + 4 + 6),  # the pixels after BitsPerSample
        (277, 3, 1, 3),
        (278, 3, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = (
            struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        )
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    path.write_bytes(
        b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x10\0" * 3 + data
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.bool_])
@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_an_image_already_the_size_is_not_resampled(dtype, channels):
    """A direct-mode image already size × size skips Pillow and the clip (both would leave it
    as it is): the same values as resizing it, one channel for gray."""
    from msde_jax.io.images import prepare_channels

    rng = np.random.default_rng(0)
    shape = (24, 24) if channels is None else (24, 24, channels)
    if dtype is np.bool_:
        image = rng.random(shape) < 0.5
    elif dtype is np.float32:
        image = rng.random(shape).astype(np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    fast = prepare_channels(image, 24)
    assert fast.shape == (24, 24, 1 if channels in (None, 1) else 3)
    resampled = np.clip(resize(to_float(image), 24), 0, 1)
    np.testing.assert_array_equal(fast, resampled)
    np.testing.assert_array_equal(prepare(image, 24), np.broadcast_to(fast, (24, 24, 3)))
    assert prepare_channels(image, 12).shape[:2] == (12, 12)  # other sizes are resampled
