"""DICOM reading through pydicom (the optional ``dicom`` extra)."""

import sys
from pathlib import Path

import numpy as np
import pydicom  # noqa: E402  (the test extra installs msde-jax[dicom])
import pytest
from testing import write_dicom

from msde_jax.io.datasets import list_images  # noqa: E402
from msde_jax.io.dicom import read_dicom  # noqa: E402
from msde_jax.io.images import ImageReadError, prepare, to_float  # noqa: E402


def _bundled(name: str) -> str:
    """A test file that ships inside the pydicom wheel (never downloaded)."""
    path = pydicom.data.get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with pydicom {pydicom.__version__}"
    assert Path(path).is_relative_to(Path(pydicom.__file__).parent)
    return path


def test_bundled_ct():
    path = _bundled("CT_small.dcm")
    img = read_dicom(path)
    assert img.shape == (128, 128)
    assert img.dtype == np.float32
    assert img.min() == 0.0
    assert img.max() == 1.0
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())  # no window in this file: min-max
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_bundled_mr_window_and_prepare():
    path = _bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_dicom(path), expected, atol=1e-6)
    out = prepare(path, 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert list_images(Path(path).parent / "MR_small.dcm") == [
        str(Path(path).parent / "MR_small.dcm")
    ]


def test_written_monochrome1_with_rescale(tmp_path):
    stored = np.array([[0, 10], [20, 40]], np.uint16)
    path = write_dicom(
        tmp_path / "inv.dcm",
        stored,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-100,
    )
    # Rescaled: [[-100, -80], [-60, -20]] → min-max → [[0, .25], [.5, 1]] → inverted.
    np.testing.assert_allclose(read_dicom(path), [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)
    # The same through the generic reader, with a file name that says nothing (DICM magic).
    renamed = path.rename(tmp_path / "image_without_suffix")
    np.testing.assert_allclose(to_float(renamed)[..., 0], [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)
    assert prepare(str(renamed), 32).shape == (32, 32, 3)


def test_written_window(tmp_path):
    stored = np.array([[0, 100], [200, 300]], np.uint16)
    path = write_dicom(
        tmp_path / "win.dcm",
        stored,
        RescaleSlope=1,
        RescaleIntercept=-100,
        WindowCenter=50,
        WindowWidth=101,
    )
    # Values [-100, 0, 100, 200] with the linear window [0, 100]: clipped outside.
    np.testing.assert_allclose(read_dicom(path), [[0.0, 0.005], [1.0, 1.0]], atol=1e-6)


def test_rgb_bundled():
    path = _bundled("SC_rgb_small_odd.dcm")
    img = read_dicom(path)
    assert img.shape == (3, 3, 3)
    # 8-bit RGB: the stored values over 255
    np.testing.assert_allclose(img, pydicom.dcmread(path).pixel_array / 255, atol=1e-6)


@pytest.mark.parametrize("entry_bits", [8, 16])
def test_palette_color_is_scaled_by_its_lookup_tables_entry_size(tmp_path, entry_bits):
    """A palette maps each stored value to RGB entries of 8 or 16 bits: white is 1.0 either
    way (8-bit entries were once divided by 65535, giving near-black images)."""
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    lut = np.arange(256) * (257 if entry_bits == 16 else 1)
    lut = lut.astype(np.uint16 if entry_bits == 16 else np.uint8).tobytes()
    tables = {}
    for colour in ("Red", "Green", "Blue"):
        tables[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, entry_bits]
        tables[f"{colour}PaletteColorLookupTableData"] = lut
    path = write_dicom(tmp_path / "palette.dcm", pixels, **tables)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(path)
    img = read_dicom(path)
    assert img.shape == (16, 16, 3)
    np.testing.assert_allclose(img, np.repeat(pixels[..., None] / 255, 3, axis=-1), atol=1e-6)


def test_multiframe_rejected():
    with pytest.raises(ImageReadError, match="multi-frame DICOM"):
        read_dicom(_bundled("examples_ybr_color.dcm"))


def test_not_dicom(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"definitely not dicom")
    with pytest.raises(ImageReadError, match="bad.dcm"):
        to_float(bad)


def test_missing_pydicom(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'msde-jax\[dicom\]'"):
        read_dicom(tmp_path / "x.dcm")


def test_no_pixel_data_and_undecodable_transfer_syntax_name_the_file(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm: DICOM file without pixel data"):
        to_float(path)
    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 10])  # not a JPEG 2000 stream
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"j2k\.dcm: not a readable DICOM image"):
        to_float(path)


def test_extreme_aspect_ratio_images_are_read_and_prepared(tmp_path):
    from PIL import Image

    path = tmp_path / "strip.png"
    Image.fromarray(np.arange(2000 * 3, dtype=np.uint32).reshape(3, 2000).astype(np.uint8)).save(
        path
    )
    assert to_float(path).shape == (3, 2000, 1)
    out = prepare(path, 32)
    assert out.shape == (32, 32, 3)
    assert np.isfinite(out).all()
